//! Free loopback ports.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// A TCP port on 127.0.0.1 that was free a moment ago: bind port 0, read the port, drop.
///
/// Never returns the same port twice within one process, so dependencies started by tests
/// running in parallel threads do not collide. Another process may still take the port before
/// it is used; starters retry on fresh ports when that happens.
///
/// # Panics
/// If no port on 127.0.0.1 can be bound at all.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("aether-testkit: cannot bind any TCP port on 127.0.0.1")
            .port();
        let mut handed_out = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed_out.insert(port) {
            return port;
        }
    }
}
