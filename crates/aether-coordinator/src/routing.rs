//! Which coordinator RPCs are forwarded to the session's holder: the ones that change a
//! session. Reads are served by every node directly (they read the coordination store and the
//! content store), so they are never forwarded.

use aether_coord::forward::{HolderLookup, Shape};
use async_trait::async_trait;

use crate::rpcs::Effect;
use crate::sessions::Sessions;

/// The routing table for [`aether_coord::forward::ForwardLayer`]: the changes of an existing
/// session, from [`crate::rpcs`].
pub fn routes(path: &str) -> Option<Shape> {
    match crate::rpcs::lookup(path)?.effect {
        Effect::Change(shape) => Some(shape),
        Effect::Read | Effect::Creation => None,
    }
}

#[async_trait]
impl HolderLookup for Sessions {
    async fn holder_elsewhere(&self, session_id: &str) -> Option<String> {
        self.holder_elsewhere_of(session_id).await.ok().flatten()
    }

    fn node_id(&self) -> String {
        self.node().id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_changes_not_reads() {
        assert_eq!(
            routes("/aetherfs.v1.WorkspaceService/ApplyChanges"),
            Some(Shape::Unary)
        );
        assert_eq!(
            routes("/aetherfs.v1.WorkspaceService/WriteFile"),
            Some(Shape::StreamHeader)
        );
        assert_eq!(routes("/aetherfs.v1.WorkspaceService/ReadFile"), None);
        assert_eq!(routes("/aetherfs.v1.SessionService/CreateSession"), None);
        assert_eq!(routes("/aetherfs.v1.ContentService/PutBlob"), None);
    }
}
