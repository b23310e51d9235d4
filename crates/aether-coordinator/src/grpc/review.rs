//! `ReviewService`: annotations on paths, and approval requests and decisions (see
//! [`crate::review`] for where they live and how approvals gate commits and exports).

use std::ops::Bound;
use std::sync::Arc;

use aether_core::WorkspacePath;
use aether_proto as pb;
use aether_proto::review_service_server::ReviewService;
use tonic::{Request, Response, Status};

use super::convert;
use super::{caller_of, page_size, page_token};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::model::{
    self, ApprovalActionRecord, ApprovalRecord, ApprovalStateRecord, SessionRecord,
};
use crate::review::{
    action_name, annotation_key, is_reviewer, parse_annotation_id, parse_approval_id,
    AnnotationRecord, Annotations, MAX_ANNOTATIONS, MAX_APPROVALS, MAX_BODY_BYTES,
    MAX_COMMENT_BYTES, MAX_REVIEWERS,
};
use crate::sessions::{require_active, require_open, Effect, Sessions};

/// The `ReviewService` implementation.
pub struct ReviewGrpc {
    sessions: Arc<Sessions>,
    annotations: Annotations,
}

impl ReviewGrpc {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self {
            annotations: Annotations::new(sessions.trees.blobs().clone()),
            sessions,
        }
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

/// Whether `record` can take another approval request naming `reviewers`.
fn check_new_approval(record: &SessionRecord, reviewers: &[String]) -> Result<()> {
    if let Some(reviewer) = reviewers.iter().find(|r| !is_reviewer(record, r)) {
        return Err(Error::InvalidArgument(format!(
            "{reviewer} does not hold the reviewer role in the policy of session {}: name its owner or principals bound as \"user:NAME\" to ROLE_REVIEWER or ROLE_OWNER, or name none",
            record.id
        )));
    }
    if record.approval_sequence >= MAX_APPROVALS {
        return Err(Error::ResourceExhausted(format!(
            "session {} has had the most approval requests allowed ({MAX_APPROVALS})",
            record.id
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl ReviewService for ReviewGrpc {
    async fn add_annotation(
        &self,
        request: Request<pb::AddAnnotationRequest>,
    ) -> Result<Response<pb::AddAnnotationResponse>, Status> {
        let caller = caller_of(&request)?;
        let principal = caller.name().to_string();
        let request = request.into_inner();
        let path = WorkspacePath::parse(&request.path).map_err(Error::from)?;
        let lines = line_range(request.lines)?;
        check_body(&request.body)?;
        let mut mutation = self.sessions.begin(&caller, &request.session_id).await?;
        require_open(&mutation.record)?;
        // Annotations are never deleted, so the sequence is the count.
        if mutation.record.annotation_sequence >= MAX_ANNOTATIONS {
            return Err(Error::ResourceExhausted(format!(
                "session {} holds the most annotations allowed ({MAX_ANNOTATIONS}); fork a fresh session to keep reviewing",
                mutation.record.id
            ))
            .into());
        }
        let sequence = mutation.record.annotation_sequence + 1;
        let annotation = AnnotationRecord {
            sequence,
            path: path.to_string(),
            lines,
            body: request.body,
            author: principal.clone(),
            created_at_ms: model::now_ms(),
            head_version: mutation.record.head_version,
            resolved: false,
            resolved_by: String::new(),
            resolved_at_ms: 0,
        };
        let (root, _) = self
            .annotations
            .map
            .insert(
                &mutation.record.annotations_root,
                annotation_key(sequence),
                annotation.clone(),
            )
            .await?;
        mutation.record.annotations_root = root;
        mutation.record.annotation_sequence = sequence;
        let id = annotation.id();
        let effect = Effect::new(&principal, "review.annotation.add", id.clone())
            .detail("path", annotation.path.clone())
            .event(Event::Annotation { id, what: "added" });
        let response = pb::AddAnnotationResponse {
            annotation: Some(annotation_view(&annotation)),
        };
        mutation.reply(&response);
        self.sessions.commit(mutation, effect).await?;
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
        let start = match &after {
            Some(key) => Bound::Excluded(key.as_str()),
            None => Bound::Unbounded,
        };
        let mut annotations = Vec::new();
        let mut more = false;
        self.annotations
            .map
            .scan(&record.annotations_root, start, |_, annotation| {
                if annotation.resolved && !request.include_resolved {
                    return true;
                }
                let under = WorkspacePath::parse(&annotation.path)
                    .map(|p| p.starts_with(&prefix))
                    .unwrap_or(false);
                if !under {
                    return true;
                }
                if annotations.len() == size {
                    more = true;
                    return false;
                }
                annotations.push(annotation_view(annotation));
                true
            })
            .await?;
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
        let principal = caller.name().to_string();
        let request = request.into_inner();
        let sequence = parse_annotation_id(&request.annotation_id)?;
        let mut mutation = self.sessions.begin(&caller, &request.session_id).await?;
        require_open(&mutation.record)?;
        let key = annotation_key(sequence);
        let Some(mut annotation) = self
            .annotations
            .map
            .get(&mutation.record.annotations_root, &key)
            .await?
        else {
            return Err(Error::NotFound(format!(
                "annotation {} not found in session {}",
                request.annotation_id, mutation.record.id
            ))
            .into());
        };
        // Resolving twice changes nothing.
        if annotation.resolved {
            return Ok(Response::new(pb::ResolveAnnotationResponse {
                annotation: Some(annotation_view(&annotation)),
            }));
        }
        annotation.resolved = true;
        annotation.resolved_by = principal.clone();
        annotation.resolved_at_ms = model::now_ms();
        let (root, _) = self
            .annotations
            .map
            .insert(&mutation.record.annotations_root, key, annotation.clone())
            .await?;
        mutation.record.annotations_root = root;
        let id = annotation.id();
        let effect = Effect::new(&principal, "review.annotation.resolve", id.clone()).event(
            Event::Annotation {
                id,
                what: "resolved",
            },
        );
        let response = pb::ResolveAnnotationResponse {
            annotation: Some(annotation_view(&annotation)),
        };
        mutation.reply(&response);
        self.sessions.commit(mutation, effect).await?;
        Ok(Response::new(response))
    }

    async fn request_approval(
        &self,
        request: Request<pb::RequestApprovalRequest>,
    ) -> Result<Response<pb::RequestApprovalResponse>, Status> {
        let caller = caller_of(&request)?;
        let principal = caller.name().to_string();
        let request = request.into_inner();
        let action = action_from(request.action)?;
        check_comment(&request.comment)?;
        let reviewers = named_reviewers(&request.reviewers, &principal)?;
        let mut mutation = self.sessions.begin(&caller, &request.session_id).await?;
        match action {
            ApprovalActionRecord::Commit => require_active(&mutation.record)?,
            ApprovalActionRecord::Export => require_open(&mutation.record)?,
        }
        check_new_approval(&mutation.record, &reviewers)?;
        let sequence = mutation.record.approval_sequence + 1;
        let approval = ApprovalRecord {
            sequence,
            action,
            requester: principal.clone(),
            reviewers,
            state: ApprovalStateRecord::Pending,
            head_version: mutation.record.head_version,
            head_root: mutation.record.head_root.clone(),
            decisions: Vec::new(),
            comment: request.comment,
            created_at_ms: model::now_ms(),
            used_by: String::new(),
        };
        mutation.record.approval_sequence = sequence;
        let id = approval.id();
        self.sessions
            .approvals
            .put(&mut mutation.record, approval.clone())
            .await?;
        let effect = Effect::new(&principal, "review.approval.request", id.clone())
            .detail("action", action_name(action))
            .detail("reviewers", approval.reviewers.join(","))
            .detail("head_version", approval.head_version.to_string())
            .event(Event::ApprovalRequested {
                id,
                action: action_name(action),
            });
        let response = pb::RequestApprovalResponse {
            approval: Some(approval_view(&approval, &mutation.record)),
        };
        mutation.reply(&response);
        self.sessions.commit(mutation, effect).await?;
        Ok(Response::new(response))
    }

    async fn decide_approval(
        &self,
        request: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::DecideApprovalResponse>, Status> {
        let caller = caller_of(&request)?;
        let principal = caller.name().to_string();
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
        let mut mutation = self.sessions.begin(&caller, &request.session_id).await?;
        require_open(&mutation.record)?;
        let mut approval = self
            .sessions
            .load_approval(&mutation.record, sequence)
            .await?;
        let id = approval.id();
        crate::review::decide(
            &mutation.record,
            &mut approval,
            &principal,
            approve,
            &request.comment,
            model::now_ms(),
        )?;
        self.sessions
            .approvals
            .put(&mut mutation.record, approval.clone())
            .await?;
        let outcome = if approve { "approved" } else { "rejected" };
        let effect = Effect::new(&principal, "review.approval.decide", id.clone())
            .detail("decision", outcome)
            .detail("action", action_name(approval.action))
            .detail("requester", approval.requester.clone())
            .detail("head_version", approval.head_version.to_string())
            .detail("comment", request.comment)
            .event(Event::ApprovalDecided { id, outcome });
        let response = pb::DecideApprovalResponse {
            approval: Some(approval_view(&approval, &mutation.record)),
        };
        mutation.reply(&response);
        self.sessions.commit(mutation, effect).await?;
        Ok(Response::new(response))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let states = request
            .states
            .iter()
            .map(|s| state_from(*s))
            .collect::<Result<Vec<_>>>()?;
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
