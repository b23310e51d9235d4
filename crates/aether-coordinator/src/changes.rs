//! Changing a session's files: a batch of validated changes applied atomically to the head,
//! with per-path preconditions checked against the tree as the batch edits it. Plain Rust over
//! domain types; the gRPC layer converts requests into [`Change`]s.

use aether_core::{EntryKind, Hash, WorkspacePath, MAX_SYMLINK_TARGET_BYTES};
use aether_store::blobs::{blob_hash, MAX_CHUNK};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::sessions::{check_expected_version, Effect, Prepared, Sessions};
use crate::trees::TreeEditor;

/// Content uploads in flight while applying one batch.
const STORE_CONCURRENCY: usize = 32;

/// One validated change, ready to apply.
pub enum Step {
    Write {
        path: WorkspacePath,
        content: Content,
        mode: u32,
        mtime_ns: i64,
    },
    Symlink {
        path: WorkspacePath,
        target: Bytes,
        mtime_ns: i64,
    },
    SetAttributes {
        path: WorkspacePath,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    },
    Delete {
        path: WorkspacePath,
        recursive: bool,
    },
    MakeDirectory {
        path: WorkspacePath,
        parents: bool,
    },
    Move {
        from: WorkspacePath,
        to: WorkspacePath,
        overwrite: bool,
    },
    Copy {
        from: WorkspacePath,
        to: WorkspacePath,
        overwrite: bool,
    },
}

/// The content a write names.
pub enum Content {
    /// Bytes sent with the change.
    Inline(Bytes),
    /// Chunks already in the store, in order: (hash, size).
    Chunks(Vec<(Hash, u64)>),
    /// One blob already in the store: (hash, size).
    Stored(Hash, u64),
}

/// A change and what must hold of its target path before it applies.
pub struct Change {
    pub step: Step,
    pub precondition: Option<Precondition>,
}

/// What must hold of a path before a change applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing is at the path.
    MustNotExist,
    /// A file or symlink whose content hash is this (lower-case hex) is at the path.
    ContentHash(String),
}

impl Step {
    /// The path the change names first (the source of a move or copy).
    pub fn target(&self) -> &WorkspacePath {
        match self {
            Step::Write { path, .. }
            | Step::Symlink { path, .. }
            | Step::SetAttributes { path, .. }
            | Step::Delete { path, .. }
            | Step::MakeDirectory { path, .. } => path,
            Step::Move { from, .. } | Step::Copy { from, .. } => from,
        }
    }
}

impl Sessions {
    /// A symlink's target, from its content (hex hash as in the API's `Entry`).
    pub async fn symlink_target(&self, hash: &str) -> Result<String> {
        let hash = Hash::from_hex(hash).map_err(|e| Error::Internal(e.to_string()))?;
        let bytes = self.trees.blobs().get(&hash).await?;
        if bytes.len() > MAX_SYMLINK_TARGET_BYTES {
            return Err(Error::DataLoss(format!(
                "symlink target {hash} is {} bytes, more than a target can be",
                bytes.len()
            )));
        }
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::DataLoss(format!("symlink target {hash} is not UTF-8")))
    }
}

/// Bytes of content one batch may assemble from chunks already in the store (the sizes the
/// writes give, each checked against the store before anything is read).
pub const MAX_BATCH_CHUNK_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Refuses a batch whose chunk lists add up to more than [`MAX_BATCH_CHUNK_BYTES`].
fn check_chunk_bytes(changes: &[Change]) -> Result<()> {
    let total = changes
        .iter()
        .filter_map(|change| match &change.step {
            Step::Write {
                content: Content::Chunks(chunks),
                ..
            } => Some(chunks.iter().fold(0u64, |sum, c| sum.saturating_add(c.1))),
            _ => None,
        })
        .fold(0u64, u64::saturating_add);
    if total > MAX_BATCH_CHUNK_BYTES {
        return Err(Error::InvalidArgument(format!(
            "the batch's chunk lists add up to {total} bytes; at most {MAX_BATCH_CHUNK_BYTES} \
             per batch: send the files in several batches"
        )));
    }
    Ok(())
}

/// Checks that every chunk is as large as the write says, so the bytes a write assembles are
/// the ones it declared (and counted) before any is read.
async fn check_chunk_sizes(
    blobs: &std::sync::Arc<dyn aether_store::Blobs>,
    chunks: &[(Hash, u64)],
) -> Result<()> {
    let lookups: Vec<_> = chunks
        .iter()
        .map(|(hash, _)| {
            let (blobs, hash) = (blobs.clone(), *hash);
            async move { blobs.size(&hash).await }
        })
        .collect();
    let sizes: Vec<u64> = futures::stream::iter(lookups)
        .buffered(STORE_CONCURRENCY)
        .try_collect()
        .await?;
    for ((hash, declared), actual) in chunks.iter().zip(sizes) {
        if *declared != actual {
            return Err(Error::InvalidArgument(format!(
                "chunk {hash} is {actual} bytes in the store, not the {declared} the write gives: \
                 give each chunk's size as PutBlob returned it"
            )));
        }
    }
    Ok(())
}

/// Content named before it is stored, written with the new trees: (name, bytes).
type Deferred = (Hash, Bytes);

impl Sessions {
    /// Stores content named by a write: inline bytes are put; chunk lists are checked to be
    /// present and streamed through the store into one blob.
    async fn store_content(&self, content: Content) -> Result<(Hash, u64)> {
        let blobs = self.trees.blobs();
        match content {
            Content::Stored(hash, size) => Ok((hash, size)),
            Content::Inline(bytes) => {
                let size = bytes.len() as u64;
                Ok((blobs.put(bytes).await?, size))
            }
            Content::Chunks(chunks) => {
                let hashes: Vec<Hash> = chunks.iter().map(|c| c.0).collect();
                let missing = blobs.missing(&hashes).await?;
                if let Some(first) = missing.first() {
                    return Err(Error::ChunksMissing {
                        count: missing.len(),
                        first: first.to_string(),
                    });
                }
                check_chunk_sizes(blobs, &chunks).await?;
                if chunks.len() == 1 {
                    return Ok(chunks[0]);
                }
                // The store names a multi-chunk blob by the manifest of its own cut; streaming
                // the chunks through it, one read at a time, yields that name without holding
                // the content (chunking is deterministic, so a list cut as the store cuts is
                // not stored twice).
                let blobs = blobs.clone();
                let content = futures::stream::iter(chunks)
                    .then(move |(hash, _)| {
                        let blobs = blobs.clone();
                        async move { blobs.read(&hash, 0, 0).await }
                    })
                    .try_flatten()
                    .map_err(Error::from)
                    .boxed();
                self.trees.put_stream(content).await
            }
        }
    }

    /// Whether the caller may change session `session_id` now, asked before an upload reads a
    /// byte of content: a principal that may not write, a session that cannot change or a head
    /// already past `expected_version` (0: any) is refused at once.
    pub async fn admit_upload(
        &self,
        caller: &Caller,
        session_id: &str,
        expected_version: u64,
    ) -> Result<()> {
        let (record, _) = self.load_for_change(caller, session_id).await?;
        crate::sessions::require_active(&record)?;
        check_expected_version(&record, expected_version)
    }

    /// Applies validated changes atomically to the head: one new root, one version, one
    /// fenced commit ([`Sessions::finish`], with the answer); a failed step or precondition
    /// changes nothing.
    pub async fn apply(
        &self,
        session_id: &str,
        caller: &Caller,
        expected_version: u64,
        changes: Vec<Change>,
        operation: &'static str,
    ) -> Result<Prepared> {
        check_chunk_bytes(&changes)?;
        let mut mutation = self.begin_active(caller, session_id).await?;
        check_expected_version(&mutation.record, expected_version)?;
        let old_root = Sessions::root(&mutation.record.head_root)?;
        let mut editor = TreeEditor::open(&self.trees, &old_root).await?;
        let (changes, deferred) = self.name_contents(changes).await?;
        for change in changes {
            if let Some(precondition) = &change.precondition {
                check_precondition(&mut editor, change.step.target(), precondition).await?;
            }
            self.edit(&mut editor, change.step).await?;
        }
        let touched: Vec<String> = editor.touched().to_vec();
        let (new_root, _) = futures::try_join!(editor.finish(), self.put_deferred(deferred))?;
        if new_root == old_root {
            return Ok(Prepared::unchanged(mutation));
        }
        mutation.record.head_root = new_root.to_hex();
        mutation.record.head_version += 1;
        let target = touched.first().cloned().unwrap_or_default();
        let effect = Effect::new(caller.name(), operation_action(operation), target)
            .detail("paths", touched.len().to_string())
            .event(Event::FilesChanged {
                paths: touched,
                operation: operation.to_string(),
            });
        Ok(Prepared::changed(mutation, effect))
    }

    /// Names every write's content before editing, in batch order, with the small content
    /// still to be written (sorted, without repeats).
    ///
    /// Content of up to one chunk is named here (its hash is the store's name for it) and
    /// written later, in the same round as the new trees: one round of concurrent writes,
    /// which the local store's group commit makes durable with one sync. Larger content and
    /// chunk lists go to the store now, concurrently: a batch of many files is bound by round
    /// trips, not by work. Nothing references the content until the fenced commit. Unordered,
    /// so one slow upload does not hold the slots of those finished after it; the batch order
    /// is restored.
    async fn name_contents(&self, changes: Vec<Change>) -> Result<(Vec<Change>, Vec<Deferred>)> {
        let mut named: Vec<(usize, Change, Option<Deferred>)> =
            futures::stream::iter(changes.into_iter().enumerate())
                .map(|(index, change)| async move {
                    let (change, deferred) = self.name_content(change).await?;
                    Ok::<_, Error>((index, change, deferred))
                })
                .buffer_unordered(STORE_CONCURRENCY)
                .try_collect()
                .await?;
        named.sort_unstable_by_key(|(index, _, _)| *index);
        let mut deferred: Vec<Deferred> = Vec::new();
        let mut changes = Vec::with_capacity(named.len());
        for (_, change, content) in named {
            changes.push(change);
            deferred.extend(content);
        }
        deferred.sort_unstable_by_key(|(hash, _)| *hash);
        deferred.dedup_by_key(|(hash, _)| *hash);
        Ok((changes, deferred))
    }

    /// One change with its content named (stored now if large), and the small content it
    /// leaves to write with the trees.
    async fn name_content(&self, mut change: Change) -> Result<(Change, Option<Deferred>)> {
        let deferred = match &mut change.step {
            Step::Write { content, .. } => {
                let (named, deferred) =
                    match std::mem::replace(content, Content::Inline(Bytes::new())) {
                        Content::Inline(bytes) if bytes.len() <= MAX_CHUNK => {
                            let hash = blob_hash(&bytes);
                            let named = Content::Stored(hash, bytes.len() as u64);
                            (named, Some((hash, bytes)))
                        }
                        other => {
                            let (hash, size) = self.store_content(other).await?;
                            (Content::Stored(hash, size), None)
                        }
                    };
                *content = named;
                deferred
            }
            Step::Symlink { target, .. } => Some((blob_hash(target), target.clone())),
            _ => None,
        };
        Ok((change, deferred))
    }

    /// Makes one step's edit in the tree being built.
    async fn edit(&self, editor: &mut TreeEditor, step: Step) -> Result<()> {
        match step {
            Step::Write {
                path,
                content,
                mode,
                mtime_ns,
            } => {
                let (hash, size) = self.store_content(content).await?;
                editor.write_file(&path, hash, size, mode, mtime_ns).await
            }
            Step::Symlink {
                path,
                target,
                mtime_ns,
            } => {
                let size = target.len() as u64;
                editor
                    .symlink(&path, blob_hash(&target), size, mtime_ns)
                    .await
            }
            Step::SetAttributes {
                path,
                mode,
                mtime_ns,
            } => editor.set_attributes(&path, mode, mtime_ns).await,
            Step::Delete { path, recursive } => editor.delete(&path, recursive).await.map(|_| ()),
            Step::MakeDirectory { path, parents } => editor.make_directory(&path, parents).await,
            Step::Move {
                from,
                to,
                overwrite,
            } => editor.move_path(&from, &to, overwrite).await,
            Step::Copy {
                from,
                to,
                overwrite,
            } => editor.copy_path(&from, &to, overwrite).await,
        }
    }

    /// Writes the small content named by [`Sessions::name_contents`], concurrently.
    async fn put_deferred(&self, deferred: Vec<Deferred>) -> Result<()> {
        let blobs = self.trees.blobs();
        futures::stream::iter(deferred)
            .map(|(hash, bytes)| async move {
                let stored = blobs.put(bytes).await?;
                if stored != hash {
                    return Err(Error::Internal(format!(
                        "the content store named content {stored}, expected {hash}"
                    )));
                }
                Ok(())
            })
            .buffer_unordered(STORE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}

impl Sessions {
    /// Applies one change on its own (the single-operation RPCs).
    pub async fn apply_step(
        &self,
        session_id: &str,
        caller: &Caller,
        expected_version: u64,
        step: Step,
        operation: &'static str,
    ) -> Result<Prepared> {
        let change = Change {
            step,
            precondition: None,
        };
        self.apply(
            session_id,
            caller,
            expected_version,
            vec![change],
            operation,
        )
        .await
    }
}

fn operation_action(operation: &str) -> &'static str {
    match operation {
        "write" => "workspace.write",
        "delete" => "workspace.delete",
        "mkdir" => "workspace.mkdir",
        "move" => "workspace.move",
        "copy" => "workspace.copy",
        "import" => "workspace.import",
        _ => "workspace.apply",
    }
}

/// Checks one precondition against the tree being edited (so against the changes before it
/// in the batch too). A failed one is ABORTED: the caller lost a race with another change.
async fn check_precondition(
    editor: &mut TreeEditor,
    path: &WorkspacePath,
    precondition: &Precondition,
) -> Result<()> {
    let current = editor.get(path).await?;
    match precondition {
        Precondition::MustNotExist => match current {
            None => Ok(()),
            Some(_) => Err(Error::Aborted(format!(
                "precondition failed: \"{path}\" exists but must not"
            ))),
        },
        Precondition::ContentHash(expected) => match current {
            Some(entry)
                if entry.kind != EntryKind::Directory && entry.hash.to_hex() == *expected =>
            {
                Ok(())
            }
            Some(entry) => Err(Error::Aborted(format!(
                "precondition failed: \"{path}\" has hash {} , expected {expected}",
                entry.hash
            ))),
            None => Err(Error::Aborted(format!(
                "precondition failed: \"{path}\" does not exist, expected hash {expected}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::test_support;
    use crate::trees::Trees;

    const PATHS: [&str; 5] = ["a", "b", "d/a", "d/e/f", "d"];

    fn path(at: usize) -> WorkspacePath {
        WorkspacePath::parse(PATHS[at]).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Against any tree of files under a few paths (some written, some deleted in the
        /// same batch), "must not exist" holds exactly where nothing is, and a content hash
        /// exactly where a file with that content is (in any letter case); a directory has no
        /// content hash.
        #[test]
        fn preconditions_hold_exactly_when_the_tree_agrees(
            writes in proptest::collection::vec((0usize..4, 0u8..3), 0..6),
            deletes in proptest::collection::vec(0usize..4, 0..3),
            probe in 0usize..5,
            content in 0u8..3,
            upper in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let trees = Trees::new(test_support::local_blobs(dir.path()));
                let empty = trees.ensure_empty().await.unwrap();
                let mut editor = TreeEditor::open(&trees, &empty).await.unwrap();
                // The model: which of the four file paths hold which content.
                let mut files: BTreeMap<usize, Hash> = BTreeMap::new();
                for (at, content) in &writes {
                    let hash = Hash::of(&[*content]);
                    editor.write_file(&path(*at), hash, 1, 0, 0).await.unwrap();
                    files.insert(*at, hash);
                }
                for at in &deletes {
                    if files.remove(at).is_some() {
                        editor.delete(&path(*at), false).await.unwrap();
                    }
                }
                // Directories made for a file stay when the file is deleted.
                let is_dir = probe == 4 && writes.iter().any(|(at, _)| PATHS[*at].starts_with("d/"));
                let present = files.contains_key(&probe) || is_dir;

                let absent = check_precondition(&mut editor, &path(probe), &Precondition::MustNotExist).await;
                prop_assert_eq!(absent.is_ok(), !present);
                let wanted = Hash::of(&[content]).to_hex();
                let wanted = if upper { wanted.to_ascii_uppercase() } else { wanted };
                let condition = Precondition::ContentHash(wanted.to_ascii_lowercase());
                let same = check_precondition(&mut editor, &path(probe), &condition).await;
                prop_assert_eq!(same.is_ok(), files.get(&probe) == Some(&Hash::of(&[content])));
                for failed in [absent, same] {
                    if let Err(e) = failed {
                        prop_assert!(matches!(e, Error::Aborted(_)), "{e:?}");
                    }
                }
                Ok(())
            })?;
        }
    }
}
