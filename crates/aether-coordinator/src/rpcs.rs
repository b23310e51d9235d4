//! The one table of the coordinator's RPCs. For each: what its caller needs on the session it
//! names, and whether it changes something (then it takes a request id, promise 9) and runs on
//! the session's holder (then other nodes forward it there). Permission checks
//! ([`crate::grpc::caller`]), request ids ([`crate::requests`]) and forwarding
//! ([`crate::routing`]) all read this table.
//!
//! There is no default: an RPC missing from it needs the session's owner, is not forwarded and
//! takes no request id, and a test walks the API's descriptor set and fails on any such RPC, or
//! on one whose name reads as a query while the table says it changes something, or the reverse.

use aether_auth::Need;
use aether_coord::forward::Shape;

/// What an RPC does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Reads; every node serves it.
    Read,
    /// Makes a new session (from nothing or from a source it reads): takes a request id and
    /// runs on the node it reaches.
    Creation,
    /// Changes a session: takes a request id and runs on the session's holder, its session id
    /// found in this shape of request.
    Change(Shape),
}

/// One RPC of the table.
#[derive(Clone, Copy, Debug)]
pub struct Rpc {
    /// `SessionService`.
    pub service: &'static str,
    /// `CreateSession`.
    pub method: &'static str,
    /// What the caller needs on the session the request names (or reads from).
    pub need: Need,
    pub effect: Effect,
}

impl Rpc {
    /// `Service/Method`, the name request ids and audit events use.
    pub fn name(&self) -> String {
        format!("{}/{}", self.service, self.method)
    }

    /// Whether it changes something, and so takes a request id.
    pub fn is_change(&self) -> bool {
        self.effect != Effect::Read
    }
}

/// The services whose RPCs this table holds.
pub const SERVICES: &[&str] = &[
    "SessionService",
    "WorkspaceService",
    "HistoryService",
    "ReviewService",
    "KnowledgeService",
];

const fn rpc(service: &'static str, method: &'static str, need: Need, effect: Effect) -> Rpc {
    Rpc {
        service,
        method,
        need,
        effect,
    }
}

const READ: Effect = Effect::Read;
const CREATION: Effect = Effect::Creation;
const UNARY: Effect = Effect::Change(Shape::Unary);
const STREAM: Effect = Effect::Change(Shape::StreamHeader);

/// Every coordinator RPC.
pub const RPCS: &[Rpc] = &[
    rpc("SessionService", "CreateSession", Need::Read, CREATION),
    rpc("SessionService", "GetSession", Need::Read, READ),
    rpc("SessionService", "ListSessions", Need::Read, READ),
    rpc("SessionService", "UpdateSession", Need::Own, UNARY),
    rpc("SessionService", "ForkSession", Need::Read, CREATION),
    rpc("SessionService", "TransferSession", Need::Own, UNARY),
    rpc("SessionService", "FinalizeSession", Need::Own, UNARY),
    rpc("SessionService", "CloseSession", Need::Own, UNARY),
    rpc("SessionService", "ListAuditEvents", Need::Read, READ),
    rpc("WorkspaceService", "Stat", Need::Read, READ),
    rpc("WorkspaceService", "ListTree", Need::Read, READ),
    rpc("WorkspaceService", "ReadFile", Need::Read, READ),
    rpc("WorkspaceService", "WriteFile", Need::Write, STREAM),
    rpc("WorkspaceService", "ApplyChanges", Need::Write, UNARY),
    rpc("WorkspaceService", "DeletePath", Need::Write, UNARY),
    rpc("WorkspaceService", "MakeDirectory", Need::Write, UNARY),
    rpc("WorkspaceService", "MovePath", Need::Write, UNARY),
    rpc("WorkspaceService", "CopyPath", Need::Write, UNARY),
    rpc("WorkspaceService", "Diff", Need::Read, READ),
    rpc("WorkspaceService", "ExportArchive", Need::Read, READ),
    rpc("WorkspaceService", "ImportArchive", Need::Write, STREAM),
    rpc("HistoryService", "CreateCheckpoint", Need::Write, UNARY),
    rpc("HistoryService", "ListCheckpoints", Need::Read, READ),
    rpc("HistoryService", "RestoreCheckpoint", Need::Write, UNARY),
    rpc("HistoryService", "Commit", Need::Write, UNARY),
    rpc("HistoryService", "ListCommits", Need::Read, READ),
    rpc("HistoryService", "GetCommit", Need::Read, READ),
    rpc("ReviewService", "AddAnnotation", Need::Annotate, UNARY),
    rpc("ReviewService", "ListAnnotations", Need::Read, READ),
    rpc("ReviewService", "ResolveAnnotation", Need::Annotate, UNARY),
    rpc("ReviewService", "RequestApproval", Need::Write, UNARY),
    rpc("ReviewService", "DecideApproval", Need::Review, UNARY),
    rpc("ReviewService", "ListApprovals", Need::Read, READ),
    rpc("KnowledgeService", "PutEntry", Need::Write, UNARY),
    rpc("KnowledgeService", "GetEntry", Need::Read, READ),
    rpc("KnowledgeService", "ListEntries", Need::Read, READ),
    rpc("KnowledgeService", "DeleteEntry", Need::Write, UNARY),
];

/// The table's entry for a gRPC path (`/aetherfs.v1.SessionService/CreateSession`).
pub fn lookup(path: &str) -> Option<&'static Rpc> {
    let (service, method) = path.strip_prefix("/aetherfs.v1.")?.split_once('/')?;
    RPCS.iter()
        .find(|rpc| rpc.service == service && rpc.method == method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(rpc: &Rpc) -> String {
        format!("/aetherfs.v1.{}/{}", rpc.service, rpc.method)
    }

    /// Every RPC of every coordinator service, from the compiled API, is in the table (and
    /// nothing else is); whether it changes something agrees with its name.
    #[test]
    fn the_table_is_exactly_the_apis_rpcs_and_queries_are_the_only_reads() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(aether_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut seen = 0;
        for service in set.file.iter().flat_map(|f| &f.service) {
            if !SERVICES.contains(&service.name()) {
                continue;
            }
            for method in &service.method {
                seen += 1;
                let path = format!("/aetherfs.v1.{}/{}", service.name(), method.name());
                let rpc = lookup(&path).unwrap_or_else(|| panic!("{path} is not in the table"));
                let query = ["Get", "List", "Stat", "Read", "Diff", "Export"]
                    .iter()
                    .any(|verb| method.name().starts_with(verb));
                assert_eq!(rpc.is_change(), !query, "{path}: change or read");
            }
        }
        assert_eq!(
            seen,
            RPCS.len(),
            "the table lists RPCs the API does not have"
        );
    }

    /// Reads and creations need only read access (a creation reads its source, if any);
    /// every other change needs more, and only changes of an existing session are forwarded.
    #[test]
    fn reads_need_read_access_and_changes_more() {
        for rpc in RPCS {
            match rpc.effect {
                Effect::Read | Effect::Creation => assert_eq!(rpc.need, Need::Read, "{rpc:?}"),
                Effect::Change(_) => assert_ne!(rpc.need, Need::Read, "{rpc:?}"),
            }
            assert_eq!(lookup(&path(rpc)).map(|r| r.method), Some(rpc.method));
        }
        assert!(lookup("/aetherfs.v1.WorkspaceService/NewRpc").is_none());
        assert!(lookup("/aetherfs.v1.BusService/Publish").is_none());
        assert!(lookup("/other.v1.SessionService/GetSession").is_none());
    }
}
