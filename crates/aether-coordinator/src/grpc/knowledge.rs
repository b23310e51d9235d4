//! `KnowledgeService`: not built yet (issue 4); every call answers UNIMPLEMENTED plainly.

use aether_proto as pb;
use aether_proto::knowledge_service_server::KnowledgeService;
use tonic::{Request, Response, Status};

/// The `KnowledgeService` placeholder.
#[derive(Clone, Default)]
pub struct KnowledgeGrpc;

fn unimplemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "KnowledgeService.{rpc} is not available in this release (knowledge entries are being built)"
    )))
}

#[tonic::async_trait]
impl KnowledgeService for KnowledgeGrpc {
    async fn put_entry(
        &self,
        _: Request<pb::PutEntryRequest>,
    ) -> Result<Response<pb::PutEntryResponse>, Status> {
        unimplemented("PutEntry")
    }
    async fn get_entry(
        &self,
        _: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::GetEntryResponse>, Status> {
        unimplemented("GetEntry")
    }
    async fn list_entries(
        &self,
        _: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        unimplemented("ListEntries")
    }
    async fn delete_entry(
        &self,
        _: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        unimplemented("DeleteEntry")
    }
}
