//! `HistoryService`: checkpoints (named roots, O(1)) and commits (content-addressed objects).

use std::sync::Arc;

use aether_proto as pb;
use aether_proto::history_service_server::HistoryService;
use tonic::{Request, Response, Status};

use super::convert;
use super::{caller_of, page_size, page_token};
use crate::error::{Error, Result};
use crate::revisions::CommitObject;
use crate::sessions::Sessions;

/// The `HistoryService` implementation.
#[derive(Clone)]
pub struct HistoryGrpc {
    sessions: Arc<Sessions>,
}

impl HistoryGrpc {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }
}

fn commit_info(id: &str, commit: &CommitObject) -> pb::CommitInfo {
    pb::CommitInfo {
        id: id.to_string(),
        root: commit.root.clone(),
        parents: commit.parents.clone(),
        author: commit.author.clone(),
        message: commit.message.clone(),
        time: convert::timestamp(commit.time_ms),
        approvals: commit.approvals.clone(),
    }
}

#[tonic::async_trait]
impl HistoryService for HistoryGrpc {
    async fn create_checkpoint(
        &self,
        request: Request<pb::CreateCheckpointRequest>,
    ) -> Result<Response<pb::CreateCheckpointResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (prepared, checkpoint) = self
            .sessions
            .create_checkpoint(
                &caller,
                &request.session_id,
                &request.name,
                &request.description,
            )
            .await?;
        let response = pb::CreateCheckpointResponse {
            checkpoint: Some(convert::checkpoint(&checkpoint)),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let size = page_size(&request.page);
        // A token is the last checkpoint name of the page before.
        let after = page_token(&request.page);
        let mut checkpoints: Vec<pb::Checkpoint> = self
            .sessions
            .list_checkpoints(&record, after.as_deref(), size)
            .await?
            .iter()
            .map(convert::checkpoint)
            .collect();
        let next_page_token = if checkpoints.len() == size {
            checkpoints
                .last()
                .map(|c| c.name.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        // Keys are in name order; the API promises oldest first within a page.
        checkpoints.sort_by_key(|c| (c.head_version, c.created_at.map(|t| (t.seconds, t.nanos))));
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints,
            next_page_token,
        }))
    }

    async fn restore_checkpoint(
        &self,
        request: Request<pb::RestoreCheckpointRequest>,
    ) -> Result<Response<pb::RestoreCheckpointResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let prepared = self
            .sessions
            .restore_checkpoint(
                &caller,
                &request.session_id,
                request.expected_head_version,
                &request.name,
            )
            .await?;
        let response = pb::RestoreCheckpointResponse {
            head_version: prepared.record().head_version,
            head_root: prepared.record().head_root.clone(),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (prepared, id, commit) = self
            .sessions
            .create_commit(
                &caller,
                &request.session_id,
                request.expected_head_version,
                &request.message,
            )
            .await?;
        let response = pb::CommitResponse {
            commit: Some(commit_info(&id, &commit)),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn list_commits(
        &self,
        request: Request<pb::ListCommitsRequest>,
    ) -> Result<Response<pb::ListCommitsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let size = page_size(&request.page);
        // The token is the id of the next commit to return (newest first).
        let mut next = match page_token(&request.page) {
            Some(token) => {
                if !self.sessions.commit_in_history(&record, &token).await? {
                    return Err(Status::invalid_argument(
                        "page_token is not a commit of this session; pass next_page_token back unchanged",
                    ));
                }
                Some(token)
            }
            None => record.head_commit.clone(),
        };
        let mut commits = Vec::new();
        while let Some(id) = next.take() {
            if commits.len() == size {
                next = Some(id);
                break;
            }
            let commit = self.sessions.load_commit(&id).await?;
            next = commit.parents.first().cloned();
            commits.push(commit_info(&id, &commit));
        }
        Ok(Response::new(pb::ListCommitsResponse {
            commits,
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn get_commit(
        &self,
        request: Request<pb::GetCommitRequest>,
    ) -> Result<Response<pb::GetCommitResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        if !self
            .sessions
            .commit_in_history(&record, &request.commit_id)
            .await?
        {
            return Err(Error::CommitNotInHistory {
                session: record.id.clone(),
                commit: request.commit_id.clone(),
            }
            .into());
        }
        let commit = self.sessions.load_commit(&request.commit_id).await?;
        Ok(Response::new(pb::GetCommitResponse {
            commit: Some(commit_info(&request.commit_id, &commit)),
        }))
    }
}
