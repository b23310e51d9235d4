//! `ReviewService`: annotations and approvals. Not built yet (issue 4): every call answers
//! UNIMPLEMENTED so clients learn it plainly rather than get a half-working review flow.

use aether_proto as pb;
use aether_proto::review_service_server::ReviewService;
use tonic::{Request, Response, Status};

/// The `ReviewService` placeholder.
#[derive(Clone, Default)]
pub struct ReviewGrpc;

fn unimplemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "ReviewService.{rpc} is not available in this release (annotations and approvals are being built)"
    )))
}

#[tonic::async_trait]
impl ReviewService for ReviewGrpc {
    async fn add_annotation(
        &self,
        _: Request<pb::AddAnnotationRequest>,
    ) -> Result<Response<pb::AddAnnotationResponse>, Status> {
        unimplemented("AddAnnotation")
    }
    async fn list_annotations(
        &self,
        _: Request<pb::ListAnnotationsRequest>,
    ) -> Result<Response<pb::ListAnnotationsResponse>, Status> {
        unimplemented("ListAnnotations")
    }
    async fn resolve_annotation(
        &self,
        _: Request<pb::ResolveAnnotationRequest>,
    ) -> Result<Response<pb::ResolveAnnotationResponse>, Status> {
        unimplemented("ResolveAnnotation")
    }
    async fn request_approval(
        &self,
        _: Request<pb::RequestApprovalRequest>,
    ) -> Result<Response<pb::RequestApprovalResponse>, Status> {
        unimplemented("RequestApproval")
    }
    async fn decide_approval(
        &self,
        _: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::DecideApprovalResponse>, Status> {
        unimplemented("DecideApproval")
    }
    async fn list_approvals(
        &self,
        _: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        unimplemented("ListApprovals")
    }
}
