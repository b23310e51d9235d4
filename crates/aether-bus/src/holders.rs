//! Stream holders across bus nodes: each session's stream is written by one bus node at a
//! time, chosen through the same etcd lease mechanism as session holders
//! (`aether_coord::holder`). Any bus node accepts any request; the forwarding layer sends it
//! to the holder, or this node takes the stream when nobody holds it. A node taking a stream
//! over reloads it from the object store first, so it continues at the right offset.
//!
//! Segment objects are written create-if-absent, so even a former holder that has not yet
//! noticed losing its lease cannot overwrite what the new holder wrote.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_coord::forward::{HolderLookup, Shape};
use aether_coord::holder::{self, Acquire, Fence, HolderRecord};
use aether_coord::{Coordination, LeaseKeeper};
use async_trait::async_trait;

use crate::Bus;

/// Key of the holder of a session's stream.
pub fn holder_key(session_id: &str) -> String {
    format!("/aether/v1/bus-holders/{session_id}")
}

/// The bus RPCs routed to a stream's holder: all of them (field 1 is the session id, also in
/// the first message of PublishStream).
pub fn routes(path: &str) -> Option<Shape> {
    match path.strip_prefix("/aetherfs.v1.BusService/")? {
        "Publish" | "PublishStream" | "Subscribe" | "GetStreamInfo" | "SetRetention"
        | "ArchiveStream" => Some(Shape::Unary),
        _ => None,
    }
}

/// This node's stream holds.
pub struct StreamHolds {
    coord: Arc<dyn Coordination>,
    bus: Bus,
    node: HolderRecord,
    lease: Mutex<Arc<LeaseKeeper>>,
    renewing: tokio::sync::Mutex<()>,
    held: Mutex<HashMap<String, Fence>>,
}

impl StreamHolds {
    pub async fn start(
        coord: Arc<dyn Coordination>,
        bus: Bus,
        node_id: String,
        address: String,
        ttl: Duration,
    ) -> Result<Arc<Self>, aether_coord::CoordError> {
        let lease = LeaseKeeper::start(coord.clone(), ttl).await?;
        Ok(Arc::new(Self {
            coord,
            bus,
            node: HolderRecord { node_id, address },
            lease: Mutex::new(Arc::new(lease)),
            renewing: tokio::sync::Mutex::new(()),
            held: Mutex::new(HashMap::new()),
        }))
    }

    /// The live lease; a lost one voids every hold and is replaced.
    async fn live_lease(&self) -> Result<Arc<LeaseKeeper>, aether_coord::CoordError> {
        let lease = self.lease.lock().expect("lease").clone();
        if !lease.lost().is_cancelled() {
            return Ok(lease);
        }
        let _renewing = self.renewing.lock().await;
        let lease = self.lease.lock().expect("lease").clone();
        if !lease.lost().is_cancelled() {
            return Ok(lease);
        }
        let lost: Vec<String> = self
            .held
            .lock()
            .expect("held")
            .drain()
            .map(|(id, _)| id)
            .collect();
        for id in lost {
            self.bus.reload(&id);
        }
        let fresh = Arc::new(LeaseKeeper::start(self.coord.clone(), lease.ttl()).await?);
        *self.lease.lock().expect("lease") = fresh.clone();
        Ok(fresh)
    }

    /// Releases every hold at shutdown so other nodes take over at once.
    pub async fn release_all(&self) {
        let held: Vec<Fence> = self
            .held
            .lock()
            .expect("held")
            .drain()
            .map(|(_, f)| f)
            .collect();
        for fence in held {
            let _ = holder::release(&*self.coord, &fence).await;
        }
        let lease = self.lease.lock().expect("lease").clone();
        let _ = lease.revoke().await;
    }
}

#[async_trait]
impl HolderLookup for StreamHolds {
    async fn holder_elsewhere(&self, session_id: &str) -> Option<String> {
        let lease = match self.live_lease().await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "bus lease unavailable");
                return None;
            }
        };
        if self.held.lock().expect("held").contains_key(session_id) {
            return None;
        }
        match holder::acquire(
            &*self.coord,
            &holder_key(session_id),
            &self.node,
            lease.id(),
        )
        .await
        {
            Ok(Acquire::Held(fence)) => {
                // Whatever this node remembers of the stream predates the takeover.
                self.bus.reload(session_id);
                self.held
                    .lock()
                    .expect("held")
                    .insert(session_id.to_string(), fence);
                None
            }
            Ok(Acquire::HeldBy(other)) if other.node_id != self.node.node_id => Some(other.address),
            Ok(Acquire::HeldBy(_)) => None,
            Err(e) => {
                tracing::warn!(session = %session_id, error = %e, "cannot resolve stream holder");
                None
            }
        }
    }

    fn node_id(&self) -> String {
        self.node.node_id.clone()
    }
}
