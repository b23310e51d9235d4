//! Real dependencies for AetherFS integration tests, started in one call on free loopback ports
//! and cleaned up however the test ends.
//!
//! - [`Etcd`] / [`EtcdCluster`]: etcd from PATH, one node or N members;
//! - [`S3Server`]: moto (or, for benchmarks, s3s-fs: [`S3Kind`]) with the bucket `aether-test`;
//! - [`ServiceProcess`]: one `aetherd`; [`Cluster`]: all of the above wired together;
//! - [`TestCa`]: throwaway certificates for TLS tests ([`ClusterSpec::tls`]).
//!
//! Promises:
//! - nothing leaks: every process is SIGKILLed and reaped on drop (so on panic too) and dies
//!   with the test process even if that is SIGKILLed (parent-death signal); temp dirs go on drop;
//! - a missing dependency is an error that says how to install it, never a skipped test;
//! - readiness is awaited (health probes, the service's ready line), never slept for; a
//!   dependency that is not ready within 20 s is an error quoting the end of its log.

mod child;
mod cluster;
mod etcd;
pub mod http;
mod locate;
mod logs;
mod ports;
mod proxy;
mod s3;
mod service;
mod tls;
mod wait;

pub use cluster::{Cluster, ClusterSpec};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce: incompressible, cut
/// into several chunks by FastCDC when long enough, and different for every seed.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = (seed << 1) | 1; // distinct seeds, distinct non-zero states
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
pub use etcd::{Etcd, EtcdCluster};
pub use locate::{aether_cli_path, aetherd_path};
pub use ports::free_port;
pub use proxy::PartitionProxy;
pub use s3::{S3Kind, S3Server};
pub use service::ServiceProcess;
pub use tls::{TestCa, TlsMode};
