//! Retries apply once (design promise 9): the outcomes of recent changes, by client request id.
//!
//! A client names each logical change with the [`REQUEST_ID_HEADER`] metadata header (1 to
//! [`MAX_REQUEST_ID_BYTES`] visible ASCII characters) and sends every attempt with the same id.
//! The holder records the answer of each change it applies under (principal, method, id) — in
//! the same fenced transaction as the change itself (`Sessions::commit`), so a coordinator
//! killed between applying and answering leaves the record for the retry, whichever
//! coordinator takes the session over. An attempt whose key is recorded applies nothing and
//! gets the recorded answer, byte for byte ([`crate::grpc::caller`] sends it).
//!
//! What is kept, per session: a ring of the last [`RETAINED`] recorded requests, in
//! [`GENERATIONS`] coordination keys (`/aether/v1/requests/{session}/{gg}`) of
//! [`PER_GENERATION`] entries each. Request number `n` goes to generation `n / 16 mod 64`; the
//! first request of a generation replaces that key whole, so the last 1,008 to 1,024 recorded
//! requests are always found, a change rewrites one key of at most 16 small entries (etcd
//! keeps every revision until compaction, so this is most of what a change adds to etcd's
//! history: the soak measured 8.5 KB per change with keys of 32 entries, 5.6 KB with 16), and
//! a session costs at most 64 keys whatever its history (promise 10; a closing transaction
//! deletes the other 63 within etcd's 128 operations). Answers up to
//! [`MAX_INLINE_REPLY_BYTES`] are kept in the entry, larger ones in the content store by hash
//! (the garbage collector keeps them while they are listed). A closed or expired session keeps
//! only the request that closed it, in its archived record (`closing_request`): the closing
//! transaction deletes every requests key.
//!
//! Not recorded: errors (they applied nothing, unless they say the outcome is unknown, and then
//! the retry finds the record if there is one: a retry runs the request again), and requests
//! that changed nothing. A session's creation (CreateSession, ForkSession) is recorded in the
//! new session as its request 0; its id is derived from the key ([`creation_session_id`]), so
//! a retry finds it without any index by principal.

use std::collections::HashMap;

use aether_coord::{Coordination, Op};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model;
use crate::sessions::to_json;

/// The metadata header naming a change: every attempt of one logical call sends the same id.
pub const REQUEST_ID_HEADER: &str = "x-aether-request-id";
/// Set (to "true") on an answer that is the recorded outcome of an earlier attempt.
pub const REPLAYED_HEADER: &str = "x-aether-replayed";
/// Longest request id accepted.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Coordination keys per session holding request outcomes.
pub const GENERATIONS: u64 = 64;
/// Entries per key.
pub const PER_GENERATION: u64 = 16;
/// Most request outcomes a session keeps; at least `RETAINED - PER_GENERATION` are kept.
pub const RETAINED: u64 = GENERATIONS * PER_GENERATION;
/// Largest answer kept inline in the coordination store; larger ones go to the content store.
pub const MAX_INLINE_REPLY_BYTES: usize = 512;

/// `Service/Method` of a gRPC path of the v1 API, if it changes something ([`crate::rpcs`]):
/// exactly these take a request id.
pub fn change_of(path: &str) -> Option<String> {
    crate::rpcs::lookup(path)
        .filter(|rpc| rpc.is_change())
        .map(|rpc| rpc.name())
}

/// Checks a request id header value: 1 to [`MAX_REQUEST_ID_BYTES`] visible ASCII characters.
pub fn parse_request_id(value: &[u8]) -> std::result::Result<String, String> {
    if value.is_empty()
        || value.len() > MAX_REQUEST_ID_BYTES
        || !value.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "{REQUEST_ID_HEADER} must be 1 to {MAX_REQUEST_ID_BYTES} visible ASCII characters (no spaces), such as a UUID; got {} bytes",
            value.len()
        ));
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

/// What identifies a change across its attempts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub principal: String,
    /// `Service/Method`, a change of [`crate::rpcs::RPCS`].
    pub method: String,
    pub id: String,
}

/// The id of the session a creation makes: derived from its key, so every attempt names the
/// same session (20 hex digits, like a random id).
pub fn creation_session_id(key: &RequestKey) -> String {
    let mut named = Vec::new();
    for part in ["aether-creation-v1", &key.principal, &key.method, &key.id] {
        named.extend_from_slice(&(part.len() as u64).to_le_bytes());
        named.extend_from_slice(part.as_bytes());
    }
    aether_core::Hash::of(&named).to_hex()[..20].to_string()
}

/// A recorded answer, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredReply {
    /// The encoded response message, in hex.
    Inline(String),
    /// The encoded response message is this blob of the content store.
    Blob(String),
}

/// One recorded request, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub sequence: u64,
    pub principal: String,
    pub method: String,
    pub id: String,
    pub time_ms: i64,
    pub reply: StoredReply,
}

impl RequestRecord {
    fn key(&self) -> RequestKey {
        RequestKey {
            principal: self.principal.clone(),
            method: self.method.clone(),
            id: self.id.clone(),
        }
    }

    fn is(&self, sequence: u64, key: &RequestKey) -> bool {
        self.sequence == sequence && self.names(key)
    }

    /// Whether this is the outcome of the change `key` names.
    pub fn names(&self, key: &RequestKey) -> bool {
        self.id == key.id && self.method == key.method && self.principal == key.principal
    }
}

/// The value of one requests key, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub entries: Vec<RequestRecord>,
}

/// The key a request number is stored under.
pub fn generation_of(sequence: u64) -> u64 {
    (sequence / PER_GENERATION) % GENERATIONS
}

/// Whether request number `sequence` is the first of its generation (which replaces the key).
fn starts_generation(sequence: u64) -> bool {
    let offset = sequence % PER_GENERATION;
    offset == 0
}

fn parse_generation(key: &str, value: &[u8]) -> Result<Generation> {
    serde_json::from_slice(value)
        .map_err(|e| Error::Internal(format!("request outcomes {key} unreadable: {e}")))
}

/// The recorded request `sequence` with `key` of session `id`, if it is still kept.
pub async fn fetch(
    coord: &dyn Coordination,
    id: &str,
    sequence: u64,
    key: &RequestKey,
) -> Result<Option<RequestRecord>> {
    let name = model::requests_key(id, generation_of(sequence));
    let Some(kv) = coord.get(&name).await? else {
        return Ok(None);
    };
    Ok(parse_generation(&name, &kv.value)?
        .entries
        .into_iter()
        .find(|e| e.is(sequence, key)))
}

/// Deletes every requests key of session `id` but `keep`.
pub fn delete_ops(id: &str, keep: Option<u64>) -> Vec<Op> {
    (0..GENERATIONS)
        .filter(|g| Some(*g) != keep)
        .map(|g| Op::delete(model::requests_key(id, g)))
        .collect()
}

/// The write that records request `sequence` alone in its generation (a creation).
pub fn only(id: &str, record: RequestRecord) -> (Op, Generation) {
    let generation = Generation {
        entries: vec![record.clone()],
    };
    (
        Op::put(
            model::requests_key(id, generation_of(record.sequence)),
            to_json(&generation),
        ),
        generation,
    )
}

/// What the holder knows of a session's recorded requests, kept with its hold (under the
/// session's lock) so a change costs no read: valid while the record's `request_count` equals
/// [`RequestIndex::count`] (every recording changes both in one transaction), reloaded
/// otherwise.
#[derive(Debug, Default)]
pub struct RequestIndex {
    count: u64,
    sequences: HashMap<RequestKey, u64>,
    /// The stored content of the generation the next request goes to, unless it starts anew.
    current: Generation,
}

impl RequestIndex {
    /// Reads session `id`'s requests keys; `count` is the record's `request_count`.
    pub async fn load(coord: &dyn Coordination, id: &str, count: u64) -> Result<Self> {
        let prefix = model::requests_prefix(id);
        let stored = coord.range(&prefix, None, GENERATIONS as usize + 1).await?;
        let oldest = count.saturating_sub(RETAINED);
        let mut index = RequestIndex {
            count,
            ..Default::default()
        };
        let next = generation_of(count);
        for kv in stored {
            let generation = parse_generation(&kv.key, &kv.value)?;
            for entry in &generation.entries {
                if (oldest..count).contains(&entry.sequence) {
                    index.sequences.insert(entry.key(), entry.sequence);
                }
            }
            if !starts_generation(count) && kv.key == model::requests_key(id, next) {
                index.current = generation;
            }
        }
        Ok(index)
    }

    /// The record's `request_count` this index reflects.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sequence of a recorded request.
    pub fn find(&self, key: &RequestKey) -> Option<u64> {
        self.sequences.get(key).copied()
    }

    /// The write recording `record` (whose sequence must be [`Self::count`]), and the
    /// generation it stores.
    pub fn next(&self, id: &str, record: RequestRecord) -> (Op, Generation) {
        debug_assert_eq!(record.sequence, self.count);
        let mut generation = if starts_generation(record.sequence) {
            Generation::default()
        } else {
            self.current.clone()
        };
        generation.entries.push(record.clone());
        (
            Op::put(
                model::requests_key(id, generation_of(record.sequence)),
                to_json(&generation),
            ),
            generation,
        )
    }

    /// Takes in a recording that was committed.
    pub fn applied(&mut self, key: RequestKey, sequence: u64, generation: Generation) {
        debug_assert_eq!(sequence, self.count);
        self.count = sequence + 1;
        self.sequences.insert(key, sequence);
        self.current = generation;
        if starts_generation(sequence) {
            // The key was replaced: the generation it held is forgotten.
            let kept_from = sequence.saturating_sub((GENERATIONS - 1) * PER_GENERATION);
            self.sequences.retain(|_, s| *s >= kept_from);
        }
        debug_assert!(self.sequences.len() as u64 <= RETAINED);
    }
}

/// Largest recorded answer read back: the coordinator's own response limit (8 MiB); a larger
/// object under a recorded name is not an answer this coordinator wrote.
pub const MAX_REPLY_BYTES: u64 = 8 * 1024 * 1024;

/// The stored form of an answer: inline when small, else put in the content store first.
pub async fn store_reply(blobs: &dyn aether_store::Blobs, reply: Bytes) -> Result<StoredReply> {
    if reply.len() <= MAX_INLINE_REPLY_BYTES {
        return Ok(StoredReply::Inline(hex::encode(&reply)));
    }
    Ok(StoredReply::Blob(blobs.put(reply).await?.to_hex()))
}

/// The encoded answer a [`StoredReply`] keeps.
pub async fn load_reply(blobs: &dyn aether_store::Blobs, reply: &StoredReply) -> Result<Bytes> {
    match reply {
        StoredReply::Inline(hex) => hex::decode(hex)
            .map(Bytes::from)
            .map_err(|e| Error::Internal(format!("recorded answer unreadable: {e}"))),
        StoredReply::Blob(hash) => {
            let hash = aether_core::Hash::from_hex(hash)
                .map_err(|e| Error::Internal(format!("recorded answer unreadable: {e}")))?;
            let size = blobs.size(&hash).await?;
            if size > MAX_REPLY_BYTES {
                return Err(Error::DataLoss(format!(
                    "recorded answer {hash} is {size} bytes, more than any answer ({MAX_REPLY_BYTES})"
                )));
            }
            Ok(blobs.get(&hash).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> RequestKey {
        RequestKey {
            principal: "alice".into(),
            method: "HistoryService/Commit".into(),
            id: id.into(),
        }
    }

    fn record(sequence: u64, id: &str) -> RequestRecord {
        RequestRecord {
            sequence,
            principal: "alice".into(),
            method: "HistoryService/Commit".into(),
            id: id.into(),
            time_ms: 1,
            reply: StoredReply::Inline(String::new()),
        }
    }

    #[test]
    fn request_ids_are_visible_ascii_of_bounded_length() {
        assert_eq!(parse_request_id(b"0b6f-4c1e").unwrap(), "0b6f-4c1e");
        assert!(parse_request_id(&[b'a'; MAX_REQUEST_ID_BYTES]).is_ok());
        for bad in [
            &b""[..],
            &[b'a'; MAX_REQUEST_ID_BYTES + 1][..],
            b"has space",
            b"tab\t",
            "caf\u{e9}".as_bytes(),
        ] {
            assert!(parse_request_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn changes_take_request_ids_and_reads_do_not() {
        assert_eq!(
            change_of("/aetherfs.v1.WorkspaceService/ApplyChanges").as_deref(),
            Some("WorkspaceService/ApplyChanges")
        );
        assert_eq!(
            change_of("/aetherfs.v1.SessionService/ForkSession").as_deref(),
            Some("SessionService/ForkSession")
        );
        assert_eq!(change_of("/aetherfs.v1.HistoryService/ListCommits"), None);
        assert_eq!(
            change_of("/aetherfs.v1.WorkspaceService/ExportArchive"),
            None
        );
        assert_eq!(change_of("/aetherfs.v1.BusService/Publish"), None);
    }

    #[test]
    fn creation_ids_depend_on_every_part_of_the_key() {
        let a = creation_session_id(&key("r1"));
        assert_eq!(a, creation_session_id(&key("r1")));
        assert_eq!(a.len(), 20);
        crate::sessions::validate_session_id(&a).unwrap();
        assert_ne!(a, creation_session_id(&key("r2")));
        let mut other = key("r1");
        other.principal = "bob".into();
        assert_ne!(a, creation_session_id(&other));
        other = key("r1");
        other.method = "SessionService/ForkSession".into();
        assert_ne!(a, creation_session_id(&other));
    }

    /// Replays recordings through the index as the holder does, checking what stays findable
    /// against the stated bound.
    #[test]
    fn the_last_retained_requests_are_found() {
        let mut index = RequestIndex::default();
        let total = 3 * RETAINED + 17;
        for n in 0..total {
            let (_, generation) = index.next("s", record(n, &format!("r{n}")));
            assert!(generation.entries.len() as u64 <= PER_GENERATION);
            assert_eq!(generation.entries.last().unwrap().sequence, n);
            index.applied(key(&format!("r{n}")), n, generation);
            let kept = index.sequences.len() as u64;
            assert!(
                kept <= RETAINED && kept >= (n + 1).min(RETAINED - PER_GENERATION + 1),
                "{kept} kept after {n}"
            );
        }
        for n in total - (RETAINED - PER_GENERATION)..total {
            assert_eq!(index.find(&key(&format!("r{n}"))), Some(n));
        }
        assert_eq!(
            index.find(&key(&format!("r{}", total - RETAINED - 1))),
            None
        );
        assert_eq!(index.count(), total);
    }

    #[test]
    fn generation_keys_cycle() {
        assert_eq!(generation_of(0), 0);
        assert_eq!(generation_of(PER_GENERATION - 1), 0);
        assert_eq!(generation_of(PER_GENERATION), 1);
        assert_eq!(generation_of(RETAINED), 0);
        assert_eq!(delete_ops("s", Some(3)).len() as u64, GENERATIONS - 1);
    }
}
