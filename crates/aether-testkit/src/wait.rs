//! Waiting for readiness: short exponential backoff against a deadline, and retrying a start
//! whose freshly picked port was taken by someone else in the meantime.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long a dependency may take to become ready before its start fails.
pub(crate) const READY_DEADLINE: Duration = Duration::from_secs(20);

/// How many lines of a log an error message quotes.
pub(crate) const TAIL_LINES: usize = 30;

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// Pause between two polls of a condition: 5 ms, doubling up to 100 ms.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { next: FIRST_PAUSE }
    }

    /// Sleeps for the next pause, but never past `deadline`.
    pub(crate) async fn sleep(&mut self, deadline: Instant) {
        let pause = self
            .next
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        self.next = (self.next * 2).min(MAX_PAUSE);
    }
}

/// A failed start; `port_conflict` says a fresh attempt on new ports may succeed.
pub(crate) struct StartFailure {
    pub(crate) error: anyhow::Error,
    pub(crate) port_conflict: bool,
}

/// Runs `attempt` until it succeeds, fails for another reason than a port conflict, or has
/// failed three times. A port from [`crate::free_port`] is free when picked, but another
/// process can bind it before our child does.
pub(crate) async fn retry_on_port_conflict<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StartFailure>>,
{
    const ATTEMPTS: usize = 3;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(started) => return Ok(started),
            Err(failure) if failure.port_conflict && tries < ATTEMPTS => continue,
            Err(failure) => return Err(failure.error),
        }
    }
}
