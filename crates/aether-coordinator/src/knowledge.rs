//! Knowledge entries: small keyed values with tags that live with a session's files.
//!
//! A session's entries are a [`PagedMap`] (key → [`EntryRecord`]) whose root is
//! `SessionRecord::knowledge_root`; each value is a blob of its own. The root is versioned with
//! the head: a checkpoint keeps it, a restore puts it back, a fork or a session created from a
//! session or checkpoint starts from it, all O(1). A put or delete rewrites one page and the
//! index, and publishes the new root in the session's fenced mutation (promises 1, 2).
//!
//! Limits (promise 6): keys per `aether_core::names::validate_knowledge_key` (1..=512 bytes of
//! UTF-8, no NUL or control characters), values up to [`MAX_VALUE_BYTES`], up to [`MAX_TAGS`]
//! tags of up to [`MAX_TAG_BYTES`], and at most [`MAX_ENTRIES`] entries per session.

use std::ops::Bound;
use std::sync::Arc;

use aether_core::Hash;
use aether_store::Blobs;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::model::{self, SessionRecord};
use crate::paged_map::PagedMap;
use crate::sessions::{require_active, require_open, Effect, Prepared, Sessions};

/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most tags on one entry.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 64;
/// Most entries in one session.
pub const MAX_ENTRIES: u64 = 10_000;
/// How many values a listing fetches from the store at once.
const FETCH_CONCURRENCY: usize = 16;

/// One entry, as stored in the map (the value is a blob).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    /// Hash of the value blob.
    pub value: String,
    pub size: u64,
    pub tags: Vec<String>,
    pub author: String,
    pub updated_at_ms: i64,
}

/// Knowledge entries in the content store.
pub struct Knowledge {
    blobs: Arc<dyn Blobs>,
    map: PagedMap<EntryRecord>,
}

pub fn validate_key(key: &str) -> Result<()> {
    aether_core::names::validate_knowledge_key(key)
        .map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Checks tags and drops repeats (keeping the first of each).
pub fn validate_tags(tags: &[String]) -> Result<Vec<String>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::InvalidArgument(format!(
            "an entry has at most {MAX_TAGS} tags, got {}; drop some",
            tags.len()
        )));
    }
    let mut kept: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        validate_tag(tag)?;
        if !kept.contains(tag) {
            kept.push(tag.clone());
        }
    }
    Ok(kept)
}

pub fn validate_tag(tag: &str) -> Result<()> {
    let excerpt = || excerpt(tag);
    if tag.is_empty() {
        return Err(Error::InvalidArgument("a tag must not be empty".into()));
    }
    if tag.len() > MAX_TAG_BYTES {
        return Err(Error::InvalidArgument(format!(
            "tag \"{}\" is {} bytes; tags are at most {MAX_TAG_BYTES} bytes",
            excerpt(),
            tag.len()
        )));
    }
    if tag.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "tag \"{}\" contains control characters; remove them",
            excerpt()
        )));
    }
    Ok(())
}

/// User input for an error message: bounded, control characters escaped.
pub(crate) fn excerpt(input: &str) -> String {
    let head: String = input.chars().take(80).collect();
    let more = if head.len() < input.len() { "..." } else { "" };
    format!("{}{more}", head.escape_debug())
}

pub fn validate_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::ResourceExhausted(format!(
            "a knowledge value is at most {MAX_VALUE_BYTES} bytes, got {}; store large data as a file",
            value.len()
        )));
    }
    Ok(())
}

impl Knowledge {
    pub fn new(blobs: Arc<dyn Blobs>) -> Self {
        Self {
            map: PagedMap::new(blobs.clone(), "aetherfs.knowledge.v1"),
            blobs,
        }
    }

    /// Stores a (validated) entry: the new root and the record stored.
    pub async fn put(
        &self,
        root: &str,
        key: &str,
        value: Bytes,
        tags: Vec<String>,
        author: &str,
        now_ms: i64,
    ) -> Result<(String, EntryRecord)> {
        let size = value.len() as u64;
        let exists = self.map.get(root, key).await?.is_some();
        if !exists && self.map.len(root).await? >= MAX_ENTRIES {
            return Err(Error::ResourceExhausted(format!(
                "a session holds at most {MAX_ENTRIES} knowledge entries; delete some first"
            )));
        }
        let hash = self.blobs.put(value).await?;
        let record = EntryRecord {
            value: hash.to_hex(),
            size,
            tags,
            author: author.to_string(),
            updated_at_ms: now_ms,
        };
        let (root, _) = self
            .map
            .insert(root, key.to_string(), record.clone())
            .await?;
        Ok((root, record))
    }

    /// How many entries the knowledge at `root` holds (one index read).
    pub async fn len(&self, root: &str) -> Result<u64> {
        self.map.len(root).await
    }

    pub async fn get(&self, root: &str, key: &str) -> Result<Option<EntryRecord>> {
        self.map.get(root, key).await
    }

    /// The value of an entry.
    pub async fn value(&self, record: &EntryRecord) -> Result<Bytes> {
        let hash = Hash::from_hex(&record.value)
            .map_err(|e| Error::Internal(format!("stored value hash unreadable: {e}")))?;
        Ok(self.blobs.get(&hash).await?)
    }

    /// Removes an entry: the new root, or None if it did not exist.
    pub async fn delete(&self, root: &str, key: &str) -> Result<Option<String>> {
        let (root, removed) = self.map.remove(root, key).await?;
        Ok(removed.map(|_| root))
    }

    /// Every object the entries at `root` reference (map objects and value blobs), for
    /// garbage collection.
    pub async fn objects(&self, root: &str) -> Result<Vec<Hash>> {
        let mut objects = self.map.objects(root).await?;
        let mut values = Vec::new();
        self.map
            .scan(root, Bound::Unbounded, |_, record| {
                values.push(record.value.clone());
                true
            })
            .await?;
        for value in values {
            objects.push(
                Hash::from_hex(&value)
                    .map_err(|e| Error::Internal(format!("stored value hash unreadable: {e}")))?,
            );
        }
        Ok(objects)
    }

    /// Entries whose key starts with `prefix` (and that carry `tag`, if not empty), in key
    /// order after `after`, at most `limit`; and whether more follow.
    pub async fn list(
        &self,
        root: &str,
        prefix: &str,
        tag: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, EntryRecord, Bytes)>, bool)> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ if prefix.is_empty() => Bound::Unbounded,
            _ => Bound::Included(prefix),
        };
        let mut found: Vec<(String, EntryRecord)> = Vec::new();
        let mut more = false;
        self.map
            .scan(root, start, |key, record| {
                if !key.starts_with(prefix) {
                    return false;
                }
                if !tag.is_empty() && !record.tags.iter().any(|t| t == tag) {
                    return true;
                }
                if found.len() == limit {
                    more = true;
                    return false;
                }
                found.push((key.to_string(), record.clone()));
                true
            })
            .await?;
        let entries = futures::stream::iter(found)
            .map(|(key, record)| async move {
                let value = self.value(&record).await?;
                Ok::<_, Error>((key, record, value))
            })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok((entries, more))
    }
}

/// No entry `key` in the session.
fn not_found(key: &str, session_id: &str) -> Error {
    Error::NotFound(format!(
        "knowledge entry \"{}\" not found in session {session_id}",
        excerpt(key)
    ))
}

impl Sessions {
    /// Sets entry `key` of the session's knowledge (versioned with its files).
    pub async fn put_entry(
        &self,
        caller: &Caller,
        session_id: &str,
        key: &str,
        value: Bytes,
        tags: &[String],
    ) -> Result<(Prepared, EntryRecord)> {
        validate_key(key)?;
        validate_value(&value)?;
        let tags = validate_tags(tags)?;
        let mut mutation = self.begin(caller, session_id).await?;
        require_active(&mutation.record)?;
        let root = &mutation.record.knowledge_root;
        let now = model::now_ms();
        let put = self
            .knowledge
            .put(root, key, value, tags, caller.name(), now);
        let (root, record) = put.await?;
        mutation.record.knowledge_root = root;
        let effect = Effect::new(caller.name(), "knowledge.put", key)
            .detail("size", record.size.to_string())
            .detail("value", record.value.clone());
        Ok((Prepared::changed(mutation, effect), record))
    }

    /// Removes entry `key`; NOT_FOUND if there is none.
    pub async fn delete_entry(
        &self,
        caller: &Caller,
        session_id: &str,
        key: &str,
    ) -> Result<Prepared> {
        validate_key(key)?;
        let mut mutation = self.begin(caller, session_id).await?;
        require_active(&mutation.record)?;
        let root = self
            .knowledge
            .delete(&mutation.record.knowledge_root, key)
            .await?
            .ok_or_else(|| not_found(key, &mutation.record.id))?;
        mutation.record.knowledge_root = root;
        let effect = Effect::new(caller.name(), "knowledge.delete", key);
        Ok(Prepared::changed(mutation, effect))
    }

    /// Entry `key` of `record`'s session, with its value.
    pub async fn get_entry(
        &self,
        record: &SessionRecord,
        key: &str,
    ) -> Result<(EntryRecord, Bytes)> {
        validate_key(key)?;
        require_open(record)?;
        let found = self
            .knowledge
            .get(&record.knowledge_root, key)
            .await?
            .ok_or_else(|| not_found(key, &record.id))?;
        let value = self.knowledge.value(&found).await?;
        Ok((found, value))
    }

    /// Up to `size` entries of `record`'s session whose keys start with `prefix` (and carry
    /// `tag`, if not empty), after key `after`, with their values; and whether more follow.
    pub async fn list_entries(
        &self,
        record: &SessionRecord,
        prefix: &str,
        tag: &str,
        after: Option<&str>,
        size: usize,
    ) -> Result<(Vec<(String, EntryRecord, Bytes)>, bool)> {
        require_open(record)?;
        self.knowledge
            .list(&record.knowledge_root, prefix, tag, after, size)
            .await
    }
}
