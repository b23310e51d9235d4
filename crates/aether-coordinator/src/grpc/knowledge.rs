//! `KnowledgeService`: a session's knowledge entries (see [`crate::knowledge`] for how they
//! are kept and versioned with the files).

use std::sync::Arc;

use aether_proto as pb;
use aether_proto::knowledge_service_server::KnowledgeService;
use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::convert;
use super::{caller_of, page_size, page_token};
use crate::error::{Error, Result};
use crate::knowledge::{validate_key, validate_tag, EntryRecord};
use crate::sessions::Sessions;

/// The `KnowledgeService` implementation.
pub struct KnowledgeGrpc {
    sessions: Arc<Sessions>,
}

impl KnowledgeGrpc {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }
}

fn entry(key: String, record: &EntryRecord, value: Bytes) -> pb::KnowledgeEntry {
    pb::KnowledgeEntry {
        key,
        value,
        tags: record.tags.clone(),
        author: record.author.clone(),
        updated_at: convert::timestamp(record.updated_at_ms),
    }
}

#[tonic::async_trait]
impl KnowledgeService for KnowledgeGrpc {
    async fn put_entry(
        &self,
        request: Request<pb::PutEntryRequest>,
    ) -> Result<Response<pb::PutEntryResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let Some(put) = request.entry else {
            return Err(Error::InvalidArgument("entry is required".into()).into());
        };
        let (prepared, record) = self
            .sessions
            .put_entry(
                &caller,
                &request.session_id,
                &put.key,
                put.value.clone(),
                &put.tags,
            )
            .await?;
        let response = pb::PutEntryResponse {
            entry: Some(entry(put.key, &record, put.value)),
        };
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::GetEntryResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        validate_key(&request.key)?;
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let (found, value) = self.sessions.get_entry(&record, &request.key).await?;
        Ok(Response::new(pb::GetEntryResponse {
            entry: Some(entry(request.key, &found, value)),
        }))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        if !request.prefix.is_empty() {
            validate_key(&request.prefix)?;
        }
        if !request.tag.is_empty() {
            validate_tag(&request.tag)?;
        }
        let after = page_token(&request.page);
        if let Some(token) = &after {
            validate_key(token).map_err(|_| {
                Error::InvalidArgument(
                    "page_token is malformed; pass next_page_token back unchanged".into(),
                )
            })?;
        }
        let (record, _) = self.sessions.load(&caller, &request.session_id).await?;
        let (found, more) = self
            .sessions
            .list_entries(
                &record,
                &request.prefix,
                &request.tag,
                after.as_deref(),
                page_size(&request.page),
            )
            .await?;
        let next_page_token = match found.last() {
            Some((key, _, _)) if more => key.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEntriesResponse {
            entries: found
                .into_iter()
                .map(|(key, record, value)| entry(key, &record, value))
                .collect(),
            next_page_token,
        }))
    }

    async fn delete_entry(
        &self,
        request: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let prepared = self
            .sessions
            .delete_entry(&caller, &request.session_id, &request.key)
            .await?;
        let response = pb::DeleteEntryResponse {};
        self.sessions.finish(prepared, &response).await?;
        Ok(Response::new(response))
    }
}
