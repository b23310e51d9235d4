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
use crate::knowledge::{
    excerpt, validate_key, validate_tag, validate_tags, validate_value, EntryRecord, Knowledge,
};
use crate::model;
use crate::sessions::{require_active, require_open, Effect, Sessions};

/// The `KnowledgeService` implementation.
pub struct KnowledgeGrpc {
    sessions: Arc<Sessions>,
    knowledge: Knowledge,
}

impl KnowledgeGrpc {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Self {
            knowledge: Knowledge::new(sessions.trees.blobs().clone()),
            sessions,
        }
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

fn not_found(key: &str, session_id: &str) -> Error {
    Error::NotFound(format!(
        "knowledge entry \"{}\" not found in session {session_id}",
        excerpt(key)
    ))
}

#[tonic::async_trait]
impl KnowledgeService for KnowledgeGrpc {
    async fn put_entry(
        &self,
        request: Request<pb::PutEntryRequest>,
    ) -> Result<Response<pb::PutEntryResponse>, Status> {
        let caller = caller_of(&request)?;
        let principal = caller.name().to_string();
        let request = request.into_inner();
        let Some(put) = request.entry else {
            return Err(Error::InvalidArgument("entry is required".into()).into());
        };
        validate_key(&put.key)?;
        validate_value(&put.value)?;
        let tags = validate_tags(&put.tags)?;
        let mut mutation = self.sessions.begin(&caller, &request.session_id).await?;
        require_active(&mutation.record)?;
        let (root, record) = self
            .knowledge
            .put(
                &mutation.record.knowledge_root,
                &put.key,
                put.value.clone(),
                tags,
                &principal,
                model::now_ms(),
            )
            .await?;
        mutation.record.knowledge_root = root;
        let effect = Effect::new(&principal, "knowledge.put", put.key.clone())
            .detail("size", record.size.to_string())
            .detail("value", record.value.clone());
        let response = pb::PutEntryResponse {
            entry: Some(entry(put.key, &record, put.value)),
        };
        mutation.reply(&response);
        self.sessions.commit(mutation, effect).await?;
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
        require_open(&record)?;
        let found = self
            .knowledge
            .get(&record.knowledge_root, &request.key)
            .await?
            .ok_or_else(|| not_found(&request.key, &record.id))?;
        let value = self.knowledge.value(&found).await?;
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
        require_open(&record)?;
        let (found, more) = self
            .knowledge
            .list(
                &record.knowledge_root,
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
        let principal = caller.name().to_string();
        let request = request.into_inner();
        validate_key(&request.key)?;
        let mut mutation = self.sessions.begin(&caller, &request.session_id).await?;
        require_active(&mutation.record)?;
        let root = self
            .knowledge
            .delete(&mutation.record.knowledge_root, &request.key)
            .await?
            .ok_or_else(|| not_found(&request.key, &mutation.record.id))?;
        mutation.record.knowledge_root = root;
        let effect = Effect::new(&principal, "knowledge.delete", request.key.clone());
        mutation.reply(&pb::DeleteEntryResponse {});
        self.sessions.commit(mutation, effect).await?;
        Ok(Response::new(pb::DeleteEntryResponse {}))
    }
}
