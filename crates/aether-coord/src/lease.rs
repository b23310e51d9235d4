//! Keeps one lease alive in the background and says when it is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::{CoordError, Coordination, LeaseId, Result};

/// A lease renewed every third of its TTL until dropped, revoked or lost.
///
/// `lost()` is cancelled when the backend says the lease expired, or when no renewal succeeded
/// for a whole TTL: past that point the lease may have expired without us hearing of it, so
/// anything bound to it must be treated as gone. This is an early warning only; safety comes
/// from fenced transactions.
pub struct LeaseKeeper {
    id: LeaseId,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
    coord: Arc<dyn Coordination>,
}

impl LeaseKeeper {
    /// Grants a lease of `ttl` and starts renewing it.
    pub async fn start(coord: Arc<dyn Coordination>, ttl: Duration) -> Result<Self> {
        let id = coord.grant_lease(ttl).await?;
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        tokio::spawn(renew(coord.clone(), id, ttl, lost.clone(), stop.clone()));
        Ok(Self {
            id,
            ttl,
            lost,
            stop,
            coord,
        })
    }

    pub fn id(&self) -> LeaseId {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Cancelled once the lease is (or may be) gone.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Revokes the lease now, so keys bound to it go away without waiting for the TTL.
    pub async fn revoke(&self) -> Result<()> {
        self.stop.cancel();
        self.lost.cancel();
        match self.coord.revoke_lease(self.id).await {
            Ok(()) | Err(CoordError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn renew(
    coord: Arc<dyn Coordination>,
    id: LeaseId,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let interval = ttl / 3;
    let mut last_renewal = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match coord.keep_alive(id).await {
            Ok(()) => last_renewal = Instant::now(),
            Err(CoordError::LeaseNotFound(_)) => {
                tracing::warn!(lease = id, "lease expired");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(lease = id, error = %e, "lease renewal failed");
                if last_renewal.elapsed() >= ttl {
                    lost.cancel();
                    return;
                }
            }
        }
    }
}
