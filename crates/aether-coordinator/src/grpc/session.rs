//! `SessionService`: create, inspect, list, update, fork, hand over, finalize and close.

use std::collections::BTreeMap;
use std::sync::Arc;

use aether_core::LabelSelector;
use aether_proto as pb;
use aether_proto::session_service_server::SessionService;
use tonic::{Request, Response, Status};

use super::convert;
use super::{caller_of, page_size, page_token};
use crate::error::{Error, Result};
use crate::lifecycle::{ForkOptions, NewSession, SessionUpdate};
use crate::listing::{self, SessionFilter};
use crate::model::SessionRecord;
use crate::sessions::Sessions;

/// The `SessionService` implementation.
#[derive(Clone)]
pub struct SessionGrpc {
    sessions: Arc<Sessions>,
}

impl SessionGrpc {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn map(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

fn ttl_ms(ttl: &Option<prost_types::Duration>) -> Result<u64> {
    convert::ttl_ms(ttl).map_err(Error::InvalidArgument)
}

/// The fields an UpdateSession mask names, with their new values. Each field once: the mask is
/// checked whole before any value is taken.
fn updates(mut request: pb::UpdateSessionRequest) -> Result<Vec<SessionUpdate>> {
    const FIELDS: [&str; 4] = ["labels", "metadata", "ttl", "policy"];
    let paths = request
        .update_mask
        .take()
        .map(|m| m.paths)
        .unwrap_or_default();
    let mut fields: Vec<&str> = Vec::new();
    for path in &paths {
        let Some(field) = FIELDS.iter().find(|f| **f == path.as_str()) else {
            return Err(Error::InvalidArgument(format!(
                "update_mask names unknown field \"{}\"; use labels, metadata, ttl or policy",
                aether_core::excerpt(path, 64)
            )));
        };
        if fields.contains(field) {
            return Err(Error::InvalidArgument(format!(
                "update_mask names \"{field}\" more than once; name each field once"
            )));
        }
        fields.push(field);
    }
    fields
        .into_iter()
        .map(|field| {
            Ok(match field {
                "labels" => SessionUpdate::Labels(map(std::mem::take(&mut request.labels))),
                "metadata" => SessionUpdate::Metadata(map(std::mem::take(&mut request.metadata))),
                "ttl" => SessionUpdate::Ttl(ttl_ms(&request.ttl)?),
                _ => SessionUpdate::Policy(convert::policy_from(&request.policy)),
            })
        })
        .collect()
}

impl Sessions {
    /// The API view of a session, with counts of its head.
    pub async fn describe(&self, record: &SessionRecord) -> Result<pb::Session> {
        let counts = self.counts(record).await?;
        let counts = pb::SessionCounts {
            checkpoints: record.checkpoint_count,
            commits: record.commit_count,
            files: counts.files,
            directories: counts.directories,
            bytes: counts.bytes,
            annotations: saturating_u32(counts.annotations),
            knowledge_entries: saturating_u32(counts.knowledge_entries),
            pending_approvals: saturating_u32(counts.pending_approvals),
        };
        Ok(convert::session(record, counts))
    }
}

#[tonic::async_trait]
impl SessionService for SessionGrpc {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let new = NewSession {
            source: convert::source_from(&request.source),
            owner: request.owner,
            labels: map(request.labels),
            metadata: map(request.metadata),
            policy: convert::policy_from(&request.policy),
            ttl_ms: ttl_ms(&request.ttl)?,
        };
        let (record, effect) = self.sessions.prepare_creation(&caller, new).await?;
        let response = pb::CreateSessionResponse {
            session: Some(self.sessions.describe(&record).await?),
        };
        self.sessions
            .create(&caller, record, effect, &response)
            .await?;
        Ok(Response::new(response))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let (record, _) = self
            .sessions
            .load(&caller, &request.get_ref().session_id)
            .await?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(self.sessions.describe(&record).await?),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let filter = SessionFilter {
            selector: LabelSelector::parse(&request.label_selector)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
            states: convert::distinct_states(&request.states, convert::state_from)?,
        };
        let after = listing::parse_page_token(page_token(&request.page))?;
        let page = self
            .sessions
            .list(&caller, &filter, page_size(&request.page), after)
            .await?;
        let mut sessions = Vec::with_capacity(page.records.len());
        for record in &page.records {
            sessions.push(self.sessions.describe(record).await?);
        }
        Ok(Response::new(pb::ListSessionsResponse {
            sessions,
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_session(
        &self,
        request: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::UpdateSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let id = request.session_id.clone();
        let mut prepared = self
            .sessions
            .update(&caller, &id, updates(request)?)
            .await?;
        let response = pb::UpdateSessionResponse {
            session: Some(self.sessions.describe(prepared.stamp()).await?),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn fork_session(
        &self,
        request: Request<pb::ForkSessionRequest>,
    ) -> Result<Response<pb::ForkSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let options = ForkOptions {
            labels: map(request.labels),
            metadata: map(request.metadata),
            ttl_ms: ttl_ms(&request.ttl)?,
        };
        let (record, effect) = self
            .sessions
            .prepare_fork(&caller, &request.session_id, options)
            .await?;
        let response = pb::ForkSessionResponse {
            session: Some(self.sessions.describe(&record).await?),
        };
        self.sessions
            .create(&caller, record, effect, &response)
            .await?;
        Ok(Response::new(response))
    }

    async fn transfer_session(
        &self,
        request: Request<pb::TransferSessionRequest>,
    ) -> Result<Response<pb::TransferSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let previous_owner_role =
            Some(request.previous_owner_role).filter(|role| *role != pb::Role::Unspecified as i32);
        let mut prepared = self
            .sessions
            .transfer(
                &caller,
                &request.session_id,
                &request.new_owner,
                previous_owner_role,
                &request.comment,
            )
            .await?;
        let response = pb::TransferSessionResponse {
            session: Some(self.sessions.describe(prepared.stamp()).await?),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn finalize_session(
        &self,
        request: Request<pb::FinalizeSessionRequest>,
    ) -> Result<Response<pb::FinalizeSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let id = request.into_inner().session_id;
        let mut prepared = self.sessions.finalize(&caller, &id).await?;
        let response = pb::FinalizeSessionResponse {
            session: Some(self.sessions.describe(prepared.stamp()).await?),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (mut prepared, archive_blob_hash) = self
            .sessions
            .close(&caller, &request.session_id, request.archive)
            .await?;
        let response = pb::CloseSessionResponse {
            session: Some(self.sessions.describe(prepared.stamp()).await?),
            archive_blob_hash,
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let size = page_size(&request.page);
        let after = match page_token(&request.page) {
            Some(token) => Some(token.parse::<u64>().map_err(|_| {
                Error::InvalidArgument(
                    "page_token is malformed; pass next_page_token back unchanged".into(),
                )
            })?),
            None => None,
        };
        let events: Vec<pb::AuditEvent> = self
            .sessions
            .audit_page(&record, after, size)
            .await?
            .iter()
            .map(convert::audit)
            .collect();
        let next_page_token = if events.len() == size {
            events
                .last()
                .map(|e| e.sequence.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events,
            next_page_token,
        }))
    }
}
