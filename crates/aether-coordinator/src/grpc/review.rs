//! `ReviewService`: annotations on paths, and approval requests and decisions (see
//! [`crate::review`] for where they live and how approvals gate commits and exports).

use std::sync::Arc;

use aether_core::WorkspacePath;
use aether_proto as pb;
use aether_proto::review_service_server::ReviewService;
use tonic::{Request, Response, Status};

use super::convert;
use super::{caller_of, page_size, page_token};
use crate::error::{Error, Result};
use crate::model::{ApprovalActionRecord, ApprovalRecord, ApprovalStateRecord, SessionRecord};
use crate::review::{
    annotation_key, parse_annotation_id, parse_approval_id, AnnotationRecord, NewAnnotation,
    MAX_BODY_BYTES, MAX_COMMENT_BYTES, MAX_REVIEWERS,
};
use crate::sessions::Sessions;

/// The `ReviewService` implementation.
pub struct ReviewGrpc {
    sessions: Arc<Sessions>,
}

impl ReviewGrpc {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }
}

fn check_comment(comment: &str) -> Result<()> {
    if comment.len() > MAX_COMMENT_BYTES {
        return Err(Error::InvalidArgument(format!(
            "comment is {} bytes; comments are at most {MAX_COMMENT_BYTES} bytes",
            comment.len()
        )));
    }
    Ok(())
}

fn check_principal_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::InvalidArgument(format!(
            "reviewer {:?} is malformed: name a principal (1 to 256 bytes, no spaces or control characters)",
            name.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

fn action_from(action: i32) -> Result<ApprovalActionRecord> {
    match pb::ApprovalAction::try_from(action) {
        Ok(pb::ApprovalAction::Commit) => Ok(ApprovalActionRecord::Commit),
        Ok(pb::ApprovalAction::Export) => Ok(ApprovalActionRecord::Export),
        _ => Err(Error::InvalidArgument(format!(
            "action {action} is not an approval action: use APPROVAL_ACTION_COMMIT or APPROVAL_ACTION_EXPORT"
        ))),
    }
}

fn state_from(state: i32) -> Result<ApprovalStateRecord> {
    Ok(match pb::ApprovalState::try_from(state) {
        Ok(pb::ApprovalState::Pending) => ApprovalStateRecord::Pending,
        Ok(pb::ApprovalState::Approved) => ApprovalStateRecord::Approved,
        Ok(pb::ApprovalState::Rejected) => ApprovalStateRecord::Rejected,
        Ok(pb::ApprovalState::Stale) => ApprovalStateRecord::Stale,
        Ok(pb::ApprovalState::Used) => ApprovalStateRecord::Used,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "states: {state} is not an approval state"
            )))
        }
    })
}

/// The lines an annotation names, if any: from 1, last at least first.
fn line_range(lines: Option<pb::LineRange>) -> Result<Option<(u32, u32)>> {
    let Some(pb::LineRange {
        first_line,
        last_line,
    }) = lines
    else {
        return Ok(None);
    };
    if first_line == 0 || last_line < first_line {
        return Err(Error::InvalidArgument(format!(
            "lines {first_line}..{last_line} are not a range: lines count from 1 and last_line is at least first_line"
        )));
    }
    Ok(Some((first_line, last_line)))
}

fn check_body(body: &str) -> Result<()> {
    if body.is_empty() || body.len() > MAX_BODY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "an annotation body is 1 to {MAX_BODY_BYTES} bytes, got {}",
            body.len()
        )));
    }
    Ok(())
}

/// The reviewers an approval request names, checked and without repeats; never the requester.
fn named_reviewers(named: &[String], requester: &str) -> Result<Vec<String>> {
    if named.len() > MAX_REVIEWERS {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_REVIEWERS} reviewers can be named, got {}",
            named.len()
        )));
    }
    let mut reviewers: Vec<String> = Vec::with_capacity(named.len());
    for reviewer in named {
        check_principal_name(reviewer)?;
        if reviewer == requester {
            return Err(Error::InvalidArgument(format!(
                "{requester} cannot review their own request; name other reviewers"
            )));
        }
        if !reviewers.contains(reviewer) {
            reviewers.push(reviewer.clone());
        }
    }
    Ok(reviewers)
}

#[tonic::async_trait]
impl ReviewService for ReviewGrpc {
    async fn add_annotation(
        &self,
        request: Request<pb::AddAnnotationRequest>,
    ) -> Result<Response<pb::AddAnnotationResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let new = NewAnnotation {
            path: WorkspacePath::parse(&request.path).map_err(Error::from)?,
            lines: line_range(request.lines)?,
            body: request.body,
        };
        check_body(&new.body)?;
        let (prepared, annotation) = self
            .sessions
            .add_annotation(&caller, &request.session_id, new)
            .await?;
        let response = pb::AddAnnotationResponse {
            annotation: Some(annotation_view(&annotation)),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn list_annotations(
        &self,
        request: Request<pb::ListAnnotationsRequest>,
    ) -> Result<Response<pb::ListAnnotationsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let prefix = WorkspacePath::parse(&request.path_prefix).map_err(Error::from)?;
        let size = page_size(&request.page);
        let after = match page_token(&request.page) {
            Some(token) => Some(annotation_key(parse_annotation_id(&token).map_err(
                |_| {
                    Error::InvalidArgument(
                        "page_token is malformed; pass next_page_token back unchanged".into(),
                    )
                },
            )?)),
            None => None,
        };
        let (found, more) = self
            .sessions
            .list_annotations(&record, &prefix, request.include_resolved, after, size)
            .await?;
        let annotations: Vec<pb::Annotation> = found.iter().map(annotation_view).collect();
        let next_page_token = match annotations.last() {
            Some(last) if more => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAnnotationsResponse {
            annotations,
            next_page_token,
        }))
    }

    async fn resolve_annotation(
        &self,
        request: Request<pb::ResolveAnnotationRequest>,
    ) -> Result<Response<pb::ResolveAnnotationResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let sequence = parse_annotation_id(&request.annotation_id)?;
        let (prepared, annotation) = self
            .sessions
            .resolve_annotation(&caller, &request.session_id, sequence)
            .await?;
        let response = pb::ResolveAnnotationResponse {
            annotation: Some(annotation_view(&annotation)),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn request_approval(
        &self,
        request: Request<pb::RequestApprovalRequest>,
    ) -> Result<Response<pb::RequestApprovalResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let action = action_from(request.action)?;
        check_comment(&request.comment)?;
        let reviewers = named_reviewers(&request.reviewers, caller.name())?;
        let (prepared, approval) = self
            .sessions
            .request_approval(
                &caller,
                &request.session_id,
                action,
                reviewers,
                request.comment,
            )
            .await?;
        let response = pb::RequestApprovalResponse {
            approval: Some(approval_view(&approval, prepared.record())),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn decide_approval(
        &self,
        request: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::DecideApprovalResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let approve = match pb::Decision::try_from(request.decision) {
            Ok(pb::Decision::Approve) => true,
            Ok(pb::Decision::Reject) => false,
            _ => {
                return Err(Error::InvalidArgument(
                    "decision must be DECISION_APPROVE or DECISION_REJECT".into(),
                )
                .into())
            }
        };
        check_comment(&request.comment)?;
        let sequence = parse_approval_id(&request.approval_id)?;
        let (prepared, approval) = self
            .sessions
            .decide_approval(
                &caller,
                &request.session_id,
                sequence,
                approve,
                &request.comment,
            )
            .await?;
        let response = pb::DecideApprovalResponse {
            approval: Some(approval_view(&approval, prepared.record())),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let states = convert::distinct_states(&request.states, state_from)?;
        let size = page_size(&request.page);
        let after = match page_token(&request.page) {
            Some(token) => parse_approval_id(&token).map_err(|_| {
                Error::InvalidArgument(
                    "page_token is malformed; pass next_page_token back unchanged".into(),
                )
            })?,
            None => 0,
        };
        // In creation order, filtered by the state as of the head; one more match than a page
        // proves there is a next page. Reads all of the session's requests (at most
        // MAX_APPROVALS), as admitting a commit does.
        let mut matching = self
            .sessions
            .load_approvals(&record)
            .await?
            .into_iter()
            .filter(|a| a.sequence > after)
            .filter(|a| states.is_empty() || states.contains(&a.effective(&record)));
        let approvals: Vec<pb::Approval> = matching
            .by_ref()
            .take(size)
            .map(|a| approval_view(&a, &record))
            .collect();
        let next_page_token = match (matching.next(), approvals.last()) {
            (Some(_), Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals,
            next_page_token,
        }))
    }
}

/// The API view of an approval as of `record`'s head.
pub fn approval_view(approval: &ApprovalRecord, record: &SessionRecord) -> pb::Approval {
    pb::Approval {
        id: approval.id(),
        action: match approval.action {
            ApprovalActionRecord::Commit => pb::ApprovalAction::Commit,
            ApprovalActionRecord::Export => pb::ApprovalAction::Export,
        } as i32,
        requester: approval.requester.clone(),
        reviewers: approval.reviewers.clone(),
        state: approval_state(approval.effective(record)) as i32,
        head_version: approval.head_version,
        head_root: approval.head_root.clone(),
        decisions: approval
            .decisions
            .iter()
            .map(|d| pb::ApprovalDecision {
                reviewer: d.reviewer.clone(),
                decision: if d.approve {
                    pb::Decision::Approve
                } else {
                    pb::Decision::Reject
                } as i32,
                comment: d.comment.clone(),
                time: convert::timestamp(d.time_ms),
            })
            .collect(),
        comment: approval.comment.clone(),
        created_at: convert::timestamp(approval.created_at_ms),
    }
}

pub fn approval_state(state: ApprovalStateRecord) -> pb::ApprovalState {
    match state {
        ApprovalStateRecord::Pending => pb::ApprovalState::Pending,
        ApprovalStateRecord::Approved => pb::ApprovalState::Approved,
        ApprovalStateRecord::Rejected => pb::ApprovalState::Rejected,
        ApprovalStateRecord::Stale => pb::ApprovalState::Stale,
        ApprovalStateRecord::Used => pb::ApprovalState::Used,
    }
}

pub fn annotation_view(annotation: &AnnotationRecord) -> pb::Annotation {
    pb::Annotation {
        id: annotation.id(),
        path: annotation.path.clone(),
        lines: annotation
            .lines
            .map(|(first_line, last_line)| pb::LineRange {
                first_line,
                last_line,
            }),
        body: annotation.body.clone(),
        author: annotation.author.clone(),
        created_at: convert::timestamp(annotation.created_at_ms),
        resolved: annotation.resolved,
        resolved_by: annotation.resolved_by.clone(),
        resolved_at: if annotation.resolved {
            convert::timestamp(annotation.resolved_at_ms)
        } else {
            None
        },
        head_version: annotation.head_version,
    }
}
