//! Reading a session's files as of a revision: directory listings, differences between two
//! revisions, and tar exports, each bounded (a page, or a stream read as the client reads).

use aether_core::{diff_trees, Changed, EntryChange, EntryKind, Hash, TreeEntry, WorkspacePath};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::model::{ApprovalStateRecord, SessionRecord, State};
use crate::revisions::Revision;
use crate::sessions::{require_open, Sessions};
use crate::trees::Trees;

/// One page of a directory listing.
pub struct Listing {
    /// (path, entry), in path order.
    pub entries: Vec<(WorkspacePath, TreeEntry)>,
    /// Whether more follow the page.
    pub more: bool,
    /// The root the listing read.
    pub root: Hash,
}

/// One path that differs between two revisions: a file or symlink on either side, or a
/// directory on both whose own attributes changed.
pub struct Difference {
    pub path: WorkspacePath,
    /// None: added.
    pub old: Option<TreeEntry>,
    /// None: deleted.
    pub new: Option<TreeEntry>,
    pub changed: Changed,
}

impl Difference {
    fn new(
        path: &WorkspacePath,
        old: Option<&TreeEntry>,
        new: Option<&TreeEntry>,
        changed: Changed,
    ) -> Self {
        Self {
            path: path.clone(),
            old: old.cloned(),
            new: new.cloned(),
            changed,
        }
    }
}

/// One page of the differences between two revisions.
pub struct Diff {
    pub entries: Vec<Difference>,
    pub more: bool,
    /// The walk reached [`MAX_DIFF_EXAMINED`] before the page filled: the page ends early and
    /// the next goes on after this path (its own difference, if any, is in this page).
    pub resume_after: Option<WorkspacePath>,
    pub from_root: Hash,
    pub to_root: Hash,
}

/// What a session holds: its head's files (none once it is closed: the workspace is gone),
/// knowledge entries, and its review.
#[derive(Default)]
pub struct Counts {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
    pub knowledge_entries: u64,
    /// Annotations, resolved or not (they are never deleted).
    pub annotations: u64,
    /// Approval requests neither decided against, used, nor made stale by the head moving.
    pub pending_approvals: u64,
}

impl Sessions {
    /// What `record`'s session holds.
    pub async fn counts(&self, record: &SessionRecord) -> Result<Counts> {
        let mut counts = Counts {
            annotations: record.annotation_sequence,
            ..Counts::default()
        };
        if record.approval_sequence > 0 {
            let approvals = self.load_approvals(record).await?;
            counts.pending_approvals = approvals
                .iter()
                .filter(|a| a.effective(record) == ApprovalStateRecord::Pending)
                .count() as u64;
        }
        if !matches!(record.state, State::Active | State::Finalized) {
            return Ok(counts);
        }
        let root = Sessions::root(&record.head_root)?;
        (counts.files, counts.directories) = self.trees.count(root).await?;
        counts.bytes = self.trees.load(&root).await?.total_size();
        if !record.knowledge_root.is_empty() {
            counts.knowledge_entries = self.knowledge.len(&record.knowledge_root).await?;
        }
        Ok(counts)
    }

    /// Up to `size` entries of directory `dir` as of `at` (all below it if `recursive`), after
    /// the path whose components below `dir` are `after`.
    pub async fn list_tree(
        &self,
        record: &SessionRecord,
        at: &Revision,
        dir: WorkspacePath,
        recursive: bool,
        after: &[String],
        size: usize,
    ) -> Result<Listing> {
        require_open(record)?;
        let root = self.resolve(record, at).await?;
        let entry = self.trees.lookup(&root, &dir).await?;
        let entry = entry.ok_or_else(|| Error::PathNotFound {
            path: dir.to_string(),
        })?;
        if entry.kind != EntryKind::Directory {
            return Err(Error::NotADirectory {
                path: dir.to_string(),
                what: "a file",
            });
        }
        // One more than a page says whether another follows.
        let mut entries = Vec::with_capacity(size + 1);
        self.trees
            .walk_page(entry.hash, dir, recursive, after, size + 1, &mut entries)
            .await?;
        let more = entries.len() > size;
        entries.truncate(size);
        Ok(Listing {
            entries,
            more,
            root,
        })
    }

    /// Up to `size` differences under `prefix` between revisions `from` and `to`, after the
    /// path whose components below `prefix` are `after`. Changes of modification time alone
    /// are left out unless `include_time_only`.
    pub async fn diff(
        &self,
        record: &SessionRecord,
        (from, to): (&Revision, &Revision),
        prefix: WorkspacePath,
        include_time_only: bool,
        after: &[String],
        size: usize,
    ) -> Result<Diff> {
        require_open(record)?;
        let from_root = self.resolve(record, from).await?;
        let to_root = self.resolve(record, to).await?;
        let old = self.directory_at(&from_root, &prefix).await?;
        let new = self.directory_at(&to_root, &prefix).await?;
        // One more than a page says whether another follows.
        let mut walk = DiffWalk {
            trees: &self.trees,
            include_time_only,
            limit: size + 1,
            out: Vec::with_capacity(size + 1),
            examined: 0,
            stopped_after: None,
        };
        walk.walk(old, new, prefix, after).await?;
        let mut entries = walk.out;
        let more = entries.len() > size;
        entries.truncate(size);
        Ok(Diff {
            entries,
            more,
            resume_after: walk.stopped_after.filter(|_| !more),
            from_root,
            to_root,
        })
    }

    /// The tree of directory `dir` under `root`, if it is one.
    async fn directory_at(&self, root: &Hash, dir: &WorkspacePath) -> Result<Option<Hash>> {
        Ok(match self.trees.lookup(root, dir).await? {
            Some(e) if e.kind == EntryKind::Directory => Some(e.hash),
            _ => None,
        })
    }

    /// Directory `dir` as of `at` as a tar stream, built as the client reads it
    /// (back-pressure from the HTTP/2 window, one piece of content in hand; a client that goes
    /// away drops the stream and its store reads). An export needs the approvals the policy
    /// requires ([`Sessions::admit_export`]).
    pub async fn export(
        &self,
        caller: &Caller,
        record: &SessionRecord,
        at: &Revision,
        dir: &WorkspacePath,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        require_open(record)?;
        self.admit_export(caller, record, at).await?;
        let root = self.resolve(record, at).await?;
        let subtree = match self.trees.lookup(&root, dir).await? {
            Some(e) if e.kind == EntryKind::Directory => e.hash,
            Some(_) => {
                return Err(Error::FailedPrecondition(format!(
                    "\"{dir}\" is a file; export a directory"
                )))
            }
            None => {
                return Err(Error::PathNotFound {
                    path: dir.to_string(),
                })
            }
        };
        crate::archive::tar_stream(&self.trees, &subtree).await
    }
}

/// The files and symlinks that differ between two trees (and directories whose mode
/// changed), walking only subtrees whose hashes differ. Changes of modification time alone
/// are left out unless `include_time_only`. Pages: at most `limit` entries in `out`.
struct DiffWalk<'a> {
    trees: &'a Trees,
    include_time_only: bool,
    limit: usize,
    out: Vec<Difference>,
    /// Entries compared so far, against [`MAX_DIFF_EXAMINED`].
    examined: usize,
    /// Where the walk stopped at that bound.
    stopped_after: Option<WorkspacePath>,
}

/// Entries (of both sides' directories) one Diff call compares at most. Trees share subtrees,
/// so two roots can differ in more places than the store holds objects (copies of copies): a
/// page that reaches the bound ends early with a token to go on from, as ListSessions does.
pub const MAX_DIFF_EXAMINED: usize = 100_000;

impl<'a> DiffWalk<'a> {
    /// Walks the subtrees `old` and `new` at `prefix`, after the path whose components (below
    /// `prefix`) are `after`, found by seeking, not by walking what precedes it.
    fn walk<'w>(
        &'w mut self,
        old: Option<Hash>,
        new: Option<Hash>,
        prefix: WorkspacePath,
        after: &'w [String],
    ) -> BoxFuture<'w, Result<()>>
    where
        'a: 'w,
    {
        async move {
            let old_tree = self.load(old).await?;
            let new_tree = self.load(new).await?;
            // The bound counts entries compared. A directory on the way to the token is passed
            // through, not counted, and the first compared after it always is, so every page
            // moves on.
            if after.is_empty() {
                let entries = old_tree.len() + new_tree.len();
                if self.examined > 0 && self.examined + entries > MAX_DIFF_EXAMINED {
                    // This directory's own entry is done; what is below it is the next page's.
                    self.stopped_after = Some(prefix);
                    return Ok(());
                }
                self.examined += entries.max(1);
            }
            for change in diff_trees(&old_tree, &new_tree) {
                if self.out.len() >= self.limit || self.stopped_after.is_some() {
                    return Ok(());
                }
                let (old_entry, new_entry) = match change {
                    EntryChange::Added(e) => (None, Some(e)),
                    EntryChange::Deleted(e) => (Some(e), None),
                    EntryChange::Modified { old, new } => (Some(old), Some(new)),
                };
                let name = &old_entry
                    .as_ref()
                    .or(new_entry.as_ref())
                    .expect("one side")
                    .name;
                // Names before the token's precede it with everything below them; the token's
                // own entry was sent on the page before.
                let on_token = match after.first() {
                    Some(first) if name.as_str() < first.as_str() => continue,
                    Some(first) => name == first,
                    None => false,
                };
                let path = prefix.join(name)?;
                if !on_token {
                    self.report(&path, old_entry.as_ref(), new_entry.as_ref());
                }
                let dir_hash = |e: Option<TreeEntry>| {
                    e.filter(|e| e.kind == EntryKind::Directory).map(|e| e.hash)
                };
                let (old_dir, new_dir) = (dir_hash(old_entry), dir_hash(new_entry));
                if old_dir.is_some() || new_dir.is_some() {
                    let rest: &[String] = if on_token { &after[1..] } else { &[] };
                    self.walk(old_dir, new_dir, path, rest).await?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    async fn load(&self, tree: Option<Hash>) -> Result<std::sync::Arc<aether_core::Tree>> {
        Ok(match tree {
            Some(h) => self.trees.load(&h).await?,
            None => std::sync::Arc::new(aether_core::Tree::new()),
        })
    }

    /// Adds the difference at `path` itself: a file or symlink on either side, or a
    /// directory on both whose own attributes changed (its files follow).
    fn report(&mut self, path: &WorkspacePath, old: Option<&TreeEntry>, new: Option<&TreeEntry>) {
        let is_dir = |e: &&TreeEntry| e.kind == EntryKind::Directory;
        let (old_leaf, new_leaf) = (old.filter(|e| !is_dir(e)), new.filter(|e| !is_dir(e)));
        if old_leaf.is_some() || new_leaf.is_some() {
            let changed = match (old_leaf, new_leaf) {
                (Some(o), Some(n)) => Changed::between(o, n),
                _ => Changed::default(),
            };
            if changed.mtime_only() && !self.include_time_only {
                return;
            }
            self.out
                .push(Difference::new(path, old_leaf, new_leaf, changed));
        } else if let (Some(o), Some(n)) = (old.filter(is_dir), new.filter(is_dir)) {
            let changed = Changed::between(o, n);
            if changed.mode || (changed.mtime && self.include_time_only) {
                self.out
                    .push(Difference::new(path, Some(o), Some(n), changed));
            }
        }
    }
}
