//! `SessionService`: create, inspect, list, update, fork, hand over, finalize and close.

use std::collections::BTreeMap;
use std::sync::Arc;

use aether_core::{validate_labels, validate_metadata, LabelSelector};
use aether_proto as pb;
use aether_proto::session_service_server::SessionService;
use tonic::{Request, Response, Status};

use super::convert;
use super::{caller_of, page_size, page_token};
use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::listing::{self, SessionFilter};
use crate::model::{self, ApprovalActionRecord, SessionRecord, SourceRecord, State};
use crate::sessions::{require_open, validate_session_id, Effect, Sessions};

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

fn labels(map: &std::collections::HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    let labels: BTreeMap<String, String> = map.clone().into_iter().collect();
    validate_labels(&labels).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(labels)
}

fn metadata(map: &std::collections::HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    let meta: BTreeMap<String, String> = map.clone().into_iter().collect();
    validate_metadata(&meta).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(meta)
}

impl Sessions {
    /// The API view of a session, with counts of its head.
    pub async fn describe(&self, record: &SessionRecord) -> Result<pb::Session> {
        let mut counts = pb::SessionCounts {
            checkpoints: record.checkpoint_count,
            commits: record.commit_count,
            ..Default::default()
        };
        if matches!(record.state, State::Active | State::Finalized) {
            let root = Sessions::root(&record.head_root)?;
            let (files, directories) = self.trees.count(root).await?;
            counts.files = files;
            counts.directories = directories;
            counts.bytes = self.trees.load(&root).await?.total_size();
        }
        Ok(convert::session(record, counts))
    }

    /// The roots a new session starts from, checked against its source: (source, files root,
    /// knowledge root). Knowledge comes along from a session's head and from a checkpoint (it
    /// is versioned with their files); commits and archives hold files only.
    async fn source_root(
        &self,
        caller: &Caller,
        source: &Option<pb::Source>,
    ) -> Result<(SourceRecord, String, String)> {
        use pb::source::Kind;
        let empty = self.trees.ensure_empty().await?.to_hex();
        Ok(match source.as_ref().and_then(|s| s.kind.as_ref()) {
            None | Some(Kind::Empty(_)) => (SourceRecord::Empty, empty, String::new()),
            Some(Kind::Session(s)) => {
                let (record, _) = self.load(caller, &s.session_id).await?;
                require_open(&record)?;
                (
                    SourceRecord::Session {
                        session_id: s.session_id.clone(),
                    },
                    record.head_root,
                    record.knowledge_root,
                )
            }
            Some(Kind::Checkpoint(c)) => {
                validate_session_id(&c.session_id)?;
                // Reading the source session's record also checks the principal may read it.
                let (record, _) = self.load(caller, &c.session_id).await?;
                // A closed session's checkpoints are listed still, but their files went with
                // its workspace.
                require_open(&record)?;
                let checkpoint = self.load_checkpoint(&record, &c.name).await?;
                (
                    SourceRecord::Checkpoint {
                        session_id: c.session_id.clone(),
                        name: c.name.clone(),
                    },
                    checkpoint.root,
                    checkpoint.knowledge_root,
                )
            }
            Some(Kind::Commit(c)) => {
                let (record, _) = self.load(caller, &c.session_id).await?;
                if !self.commit_in_history(&record, &c.commit_id).await? {
                    return Err(Error::CommitNotInHistory {
                        session: c.session_id.clone(),
                        commit: c.commit_id.clone(),
                    });
                }
                let commit = self.load_commit(&c.commit_id).await?;
                (
                    SourceRecord::Commit {
                        session_id: c.session_id.clone(),
                        commit_id: c.commit_id.clone(),
                    },
                    commit.root,
                    String::new(),
                )
            }
            Some(Kind::Archive(a)) => {
                let root = crate::archive::import_blob(self, &a.blob_hash).await?;
                (
                    SourceRecord::Archive {
                        blob_hash: a.blob_hash.clone(),
                    },
                    root.to_hex(),
                    String::new(),
                )
            }
        })
    }
}

#[tonic::async_trait]
impl SessionService for SessionGrpc {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let principal = caller.name().to_string();
        let request = request.into_inner();
        let labels = labels(&request.labels)?;
        let metadata = metadata(&request.metadata)?;
        let ttl_ms = convert::duration_ms(&request.ttl).map_err(Error::InvalidArgument)?;
        let owner = if request.owner.is_empty() {
            principal.clone()
        } else {
            request.owner.clone()
        };
        let id = self.sessions.new_session_id(&caller).await?;
        let (source, root, knowledge_root) =
            self.sessions.source_root(&caller, &request.source).await?;
        let now = model::now_ms();
        let record = SessionRecord {
            id,
            labels,
            metadata,
            owner,
            policy: convert::policy_from(&request.policy),
            state: State::Active,
            source,
            base_root: root.clone(),
            head_root: root,
            head_version: 1,
            head_commit: None,
            created_at_ms: now,
            updated_at_ms: now,
            ttl_ms,
            checkpoint_count: 0,
            commit_count: 0,
            audit_sequence: 0,
            audit_root: String::new(),
            audit_store_from: 0,
            audit_log: String::new(),
            audit_log_from: 0,
            audit_log_through: 0,
            checkpoints_root: String::new(),
            approvals_root: String::new(),
            knowledge_root,
            annotations_root: String::new(),
            annotation_sequence: 0,
            approval_sequence: 0,
            request_count: 0,
        };
        let effect = Effect::new(&principal, "session.create", record.id.clone());
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
            states: request
                .states
                .iter()
                .map(|s| convert::state_from(*s))
                .collect::<Result<_, _>>()?,
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
        let principal = caller.name().to_string();
        let request = request.into_inner();
        let paths = request
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::InvalidArgument(
                "update_mask is empty: name the fields to change (labels, metadata, ttl, policy)"
                    .into(),
            )
            .into());
        }
        let mut mutation = self.sessions.begin(&caller, &request.session_id).await?;
        require_open(&mutation.record)?;
        for path in &paths {
            match path.as_str() {
                "labels" => mutation.record.labels = labels(&request.labels)?,
                "metadata" => mutation.record.metadata = metadata(&request.metadata)?,
                "ttl" => {
                    mutation.record.ttl_ms =
                        convert::duration_ms(&request.ttl).map_err(Error::InvalidArgument)?
                }
                "policy" => mutation.record.policy = convert::policy_from(&request.policy),
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "update_mask names unknown field \"{other}\"; use labels, metadata, ttl or policy"
                    ))
                    .into())
                }
            }
        }
        let effect = Effect::new(&principal, "session.update", request.session_id.clone())
            .detail("fields", paths.join(","));
        let response = pb::UpdateSessionResponse {
            session: Some(self.sessions.describe(mutation.stamp()).await?),
        };
        mutation.reply(&response);
        self.sessions.commit(mutation, effect).await?;
        Ok(Response::new(response))
    }

    async fn fork_session(
        &self,
        request: Request<pb::ForkSessionRequest>,
    ) -> Result<Response<pb::ForkSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let principal = caller.name().to_string();
        let request = request.into_inner();
        let id = self.sessions.new_session_id(&caller).await?;
        let (parent, _) = self.sessions.load(&caller, &request.session_id).await?;
        require_open(&parent)?;
        let labels = labels(&request.labels)?;
        let metadata = metadata(&request.metadata)?;
        let ttl_ms = match convert::duration_ms(&request.ttl).map_err(Error::InvalidArgument)? {
            0 => parent.ttl_ms,
            ttl => ttl,
        };
        let now = model::now_ms();
        // O(1): the fork points at the parent's head root, knowledge and annotations (each one
        // hash); content is shared. Approvals stay with the parent: they approved its head.
        let record = SessionRecord {
            id,
            labels,
            metadata,
            owner: principal.clone(),
            policy: parent.policy.clone(),
            state: State::Active,
            source: SourceRecord::Session {
                session_id: parent.id.clone(),
            },
            base_root: parent.head_root.clone(),
            head_root: parent.head_root.clone(),
            head_version: 1,
            head_commit: parent.head_commit.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            ttl_ms,
            checkpoint_count: 0,
            commit_count: 0,
            audit_sequence: 0,
            audit_root: String::new(),
            audit_store_from: 0,
            audit_log: String::new(),
            audit_log_from: 0,
            audit_log_through: 0,
            checkpoints_root: String::new(),
            approvals_root: String::new(),
            knowledge_root: parent.knowledge_root.clone(),
            annotations_root: parent.annotations_root.clone(),
            annotation_sequence: parent.annotation_sequence,
            approval_sequence: 0,
            request_count: 0,
        };
        let effect = Effect::new(&principal, "session.fork", record.id.clone())
            .detail("parent", parent.id.clone());
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
        let principal = caller.name().to_string();
        let request = request.into_inner();
        if request.new_owner.is_empty() || request.new_owner.len() > 256 {
            return Err(Error::InvalidArgument(
                "new_owner is required (a principal name of at most 256 bytes)".into(),
            )
            .into());
        }
        let mut mutation = self.sessions.begin(&caller, &request.session_id).await?;
        require_open(&mutation.record)?;
        let previous = std::mem::replace(&mut mutation.record.owner, request.new_owner.clone());
        let bindings = &mut mutation.record.policy.bindings;
        bindings.retain(|b| b.subject != format!("user:{previous}"));
        if request.previous_owner_role != pb::Role::Unspecified as i32 {
            bindings.push(crate::model::Binding {
                subject: format!("user:{previous}"),
                role: request.previous_owner_role,
            });
        }
        let effect = Effect::new(&principal, "session.transfer", request.new_owner.clone())
            .detail("previous_owner", previous)
            .detail("comment", request.comment.clone())
            .event(Event::Transferred {
                new_owner: request.new_owner.clone(),
                comment: request.comment.clone(),
            });
        let response = pb::TransferSessionResponse {
            session: Some(self.sessions.describe(mutation.stamp()).await?),
        };
        mutation.reply(&response);
        self.sessions.commit(mutation, effect).await?;
        Ok(Response::new(response))
    }

    async fn finalize_session(
        &self,
        request: Request<pb::FinalizeSessionRequest>,
    ) -> Result<Response<pb::FinalizeSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let principal = caller.name().to_string();
        let id = request.into_inner().session_id;
        let mut mutation = self.sessions.begin_active(&caller, &id).await?;
        mutation.record.state = State::Finalized;
        let effect =
            Effect::new(&principal, "session.finalize", id.clone()).event(Event::Finalized);
        let response = pb::FinalizeSessionResponse {
            session: Some(self.sessions.describe(mutation.stamp()).await?),
        };
        mutation.reply(&response);
        self.sessions.commit(mutation, effect).await?;
        Ok(Response::new(response))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let principal = caller.name().to_string();
        let request = request.into_inner();
        let mut mutation = self.sessions.begin(&caller, &request.session_id).await?;
        require_open(&mutation.record)?;
        let mut archive_blob_hash = String::new();
        let mut approvals_used = Vec::new();
        if request.archive {
            // The archive is an export of the head: a policy that requires approvals to
            // export requires them here too, used by this close.
            let required = mutation.record.policy.required_export_approvals;
            if required > 0 {
                let admission = self
                    .sessions
                    .admit(&mutation.record, ApprovalActionRecord::Export, required)
                    .await?;
                approvals_used = admission.ids();
                admission
                    .consume(&self.sessions, &mut mutation, "close")
                    .await?;
            }
            let root = Sessions::root(&mutation.record.head_root)?;
            // Streamed from the tree into the store: the archive is never held whole.
            let tar = crate::archive::tar_stream(&self.sessions.trees, &root).await?;
            let (hash, _) = self.sessions.trees.put_stream(tar).await?;
            archive_blob_hash = hash.to_hex();
        }
        mutation.record.state = State::Closed;
        let effect = Effect::new(&principal, "session.close", request.session_id.clone())
            .detail("archive", archive_blob_hash.clone())
            .detail("approvals_used", approvals_used.join(","))
            .event(Event::Closed {
                archive: archive_blob_hash.clone(),
            });
        let response = pb::CloseSessionResponse {
            session: Some(self.sessions.describe(mutation.stamp()).await?),
            archive_blob_hash,
        };
        mutation.reply(&response);
        self.sessions.commit(mutation, effect).await?;
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
