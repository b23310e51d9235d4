//! Which coordinator RPCs are forwarded to the session's holder: the ones that change a
//! session. Reads are served by every node directly (they read the coordination store and the
//! content store), so they are never forwarded.

use aether_coord::forward::{HolderLookup, Shape};
use async_trait::async_trait;

use crate::sessions::Sessions;

/// The routing table for [`aether_coord::forward::ForwardLayer`].
pub fn routes(path: &str) -> Option<Shape> {
    let (service, method) = path.strip_prefix("/aetherfs.v1.")?.split_once('/')?;
    let unary = matches!(
        (service, method),
        (
            "SessionService",
            "UpdateSession" | "TransferSession" | "FinalizeSession" | "CloseSession"
        ) | (
            "WorkspaceService",
            "ApplyChanges" | "DeletePath" | "MakeDirectory" | "MovePath" | "CopyPath"
        ) | (
            "HistoryService",
            "CreateCheckpoint" | "RestoreCheckpoint" | "Commit"
        ) | (
            "ReviewService",
            "AddAnnotation" | "ResolveAnnotation" | "RequestApproval" | "DecideApproval"
        ) | ("KnowledgeService", "PutEntry" | "DeleteEntry")
    );
    if unary {
        return Some(Shape::Unary);
    }
    match (service, method) {
        ("WorkspaceService", "WriteFile" | "ImportArchive") => Some(Shape::StreamHeader),
        _ => None,
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
