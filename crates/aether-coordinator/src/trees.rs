//! Reading and editing trees in the content store.
//!
//! Trees are immutable and content-addressed, so decoded trees are cached by hash, and the
//! counts of a tree (files, directories) are memoized by hash too: after a change only the
//! trees on the changed paths are new, so counting a new root costs what changed, not the
//! whole workspace.
//!
//! [`TreeEditor`] applies a batch of path operations in memory, loading only the directories it
//! touches, then writes the changed trees bottom-up. The new root is published by the caller's
//! fenced metadata transaction; until then nothing references the new trees (promise 4: a batch
//! applies wholly or not at all).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aether_core::tree::empty_tree_hash;
use aether_core::{EntryKind, Hash, Tree, TreeEntry, WorkspacePath};
use aether_store::Blobs;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};

use crate::error::{Error, Result};

/// Default mode of files and directories created without one.
pub const FILE_MODE: u32 = 0o644;
pub const DIR_MODE: u32 = 0o755;

/// Cached access to trees in the content store.
#[derive(Clone)]
pub struct Trees {
    blobs: Arc<dyn Blobs>,
    cache: Arc<Mutex<HashMap<Hash, Arc<Tree>>>>,
    counts: Arc<Mutex<HashMap<Hash, (u64, u64)>>>,
}

/// Trees written to the store at once when a change touches many directories.
const WRITE_CONCURRENCY: usize = 16;

/// Past this many cached trees the cache starts over (trees are cheap to reload).
const CACHE_LIMIT: usize = 200_000;

impl Trees {
    pub fn new(blobs: Arc<dyn Blobs>) -> Self {
        Self {
            blobs,
            cache: Arc::default(),
            counts: Arc::default(),
        }
    }

    pub fn blobs(&self) -> &Arc<dyn Blobs> {
        &self.blobs
    }

    /// Stores the bytes `source` yields through the store's streaming put (memory bounded by
    /// a few chunks, whatever their length) and returns their name and size. An error from the
    /// source ends the upload and is returned exactly as it came, a gRPC status or a domain
    /// error alike; the store's own errors come back as [`Error`]s.
    pub fn put_stream<'a, S, E>(
        &'a self,
        source: S,
    ) -> BoxFuture<'a, std::result::Result<(Hash, u64), E>>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'a,
        E: From<Error> + Send + 'a,
    {
        async move {
            // The store speaks StoreError; the source's own error waits here meanwhile.
            let failed: Mutex<Option<E>> = Mutex::new(None);
            let data = source
                .map(|piece| {
                    piece.map_err(|e| {
                        *failed.lock().expect("source error") = Some(e);
                        aether_store::StoreError::Internal("the upload's source failed".into())
                    })
                })
                .boxed();
            let stored = self.blobs.put_stream(data).await;
            let failed = failed.into_inner().expect("source error");
            match (stored, failed) {
                (_, Some(source_error)) => Err(source_error),
                (Ok(stored), None) => Ok(stored),
                (Err(store_error), None) => Err(Error::from(store_error).into()),
            }
        }
        .boxed()
    }

    /// Loads and decodes a tree (verified by the store against its hash).
    pub async fn load(&self, hash: &Hash) -> Result<Arc<Tree>> {
        if let Some(tree) = self.cache.lock().expect("tree cache").get(hash) {
            return Ok(tree.clone());
        }
        let tree = if *hash == empty_tree_hash() {
            Tree::new()
        } else {
            let bytes = self.blobs.get(hash).await?;
            Tree::decode(&bytes)
                .map_err(|e| Error::DataLoss(format!("tree {hash} cannot be decoded: {e}")))?
        };
        let tree = Arc::new(tree);
        self.remember(*hash, tree.clone());
        Ok(tree)
    }

    fn remember(&self, hash: Hash, tree: Arc<Tree>) {
        let mut cache = self.cache.lock().expect("tree cache");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(hash, tree);
    }

    /// Stores a tree and returns its hash.
    pub async fn store(&self, tree: Tree) -> Result<Hash> {
        let encoded = tree.encode();
        self.store_encoded(tree, encoded).await
    }

    /// [`Trees::store`] for a tree already encoded (`encoded` is `tree.encode()`).
    async fn store_encoded(&self, tree: Tree, encoded: Vec<u8>) -> Result<Hash> {
        let hash = Hash::of(&encoded);
        let cached = self.cache.lock().expect("tree cache").contains_key(&hash);
        if !cached {
            let stored = self.blobs.put(Bytes::from(encoded)).await?;
            // A tree is named by the hash of its encoding, which is the store's name for it
            // only while it is one chunk (8 MiB).
            if stored != hash {
                return Err(Error::ResourceExhausted(format!(
                    "a directory listing is too large to store as one object ({} entries); \
                     split directories with more than about 100,000 entries",
                    tree.len()
                )));
            }
            self.remember(hash, Arc::new(tree));
        }
        Ok(hash)
    }

    /// Makes sure the empty tree exists in the store (every new session points at it).
    pub async fn ensure_empty(&self) -> Result<Hash> {
        let hash = empty_tree_hash();
        self.blobs.put(Bytes::from(Tree::new().encode())).await?;
        Ok(hash)
    }

    /// The entry at `path` under `root`, or None. The root itself is a directory entry.
    pub async fn lookup(&self, root: &Hash, path: &WorkspacePath) -> Result<Option<TreeEntry>> {
        let mut entry = TreeEntry {
            name: String::new(),
            kind: EntryKind::Directory,
            mode: DIR_MODE,
            size: 0,
            mtime_ns: 0,
            hash: *root,
        };
        if path.is_root() {
            entry.size = self.load(root).await?.total_size();
            return Ok(Some(entry));
        }
        for name in path.components() {
            if entry.kind != EntryKind::Directory {
                return Ok(None);
            }
            let tree = self.load(&entry.hash).await?;
            match tree.get(name) {
                Some(next) => entry = next.clone(),
                None => return Ok(None),
            }
        }
        Ok(Some(entry))
    }

    /// (files, directories) below a tree, memoized by hash.
    pub fn count(&self, root: Hash) -> BoxFuture<'_, Result<(u64, u64)>> {
        async move {
            if let Some(counts) = self.counts.lock().expect("counts").get(&root) {
                return Ok(*counts);
            }
            let tree = self.load(&root).await?;
            let (mut files, mut dirs) = (0, 0);
            for entry in tree.entries() {
                match entry.kind {
                    // A symlink counts as a file: one non-directory name.
                    EntryKind::File | EntryKind::Symlink => files += 1,
                    EntryKind::Directory => {
                        // Copies of copies share subtrees: a tree can name more paths than a
                        // u64 counts.
                        let (f, d) = self.count(entry.hash).await?;
                        files = u64::saturating_add(files, f);
                        dirs = u64::saturating_add(dirs, d.saturating_add(1));
                    }
                }
            }
            let mut counts = self.counts.lock().expect("counts");
            if counts.len() >= CACHE_LIMIT {
                counts.clear();
            }
            counts.insert(root, (files, dirs));
            Ok((files, dirs))
        }
        .boxed()
    }

    /// One page of the entries below `dir` in depth-first path order: at most `limit` entries
    /// after `after` (components relative to `dir`; empty for the first page). Seeks to the
    /// token by binary search at each level instead of walking what precedes it, so a page
    /// costs O(limit + depth × log(width)) whatever the page's position.
    pub fn walk_page<'a>(
        &'a self,
        dir: Hash,
        prefix: WorkspacePath,
        recursive: bool,
        after: &'a [String],
        limit: usize,
        out: &'a mut Vec<(WorkspacePath, TreeEntry)>,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let tree = self.load(&dir).await?;
            let entries = tree.entries();
            // Entries named before the token's component precede it with their subtrees.
            let start = match after.first() {
                Some(name) => entries.partition_point(|e| e.name.as_str() < name.as_str()),
                None => 0,
            };
            for (index, entry) in entries.iter().enumerate().skip(start) {
                if out.len() >= limit {
                    return Ok(());
                }
                let path = prefix.join(&entry.name)?;
                let on_token = index == start && after.first() == Some(&entry.name);
                // The token's own entry (and its ancestors) were sent on an earlier page.
                if !on_token {
                    out.push((path.clone(), entry.clone()));
                }
                if recursive && entry.kind == EntryKind::Directory {
                    let rest: &[String] = if on_token { &after[1..] } else { &[] };
                    self.walk_page(entry.hash, path, true, rest, limit, out)
                        .await?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    /// Every entry below `dir` (depth-first, in path order), with paths relative to the root.
    pub fn walk<'a>(
        &'a self,
        dir: Hash,
        prefix: WorkspacePath,
        recursive: bool,
        out: &'a mut Vec<(WorkspacePath, TreeEntry)>,
        limit: usize,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let tree = self.load(&dir).await?;
            for entry in tree.entries() {
                if out.len() >= limit {
                    return Err(Error::ResourceExhausted(format!(
                        "more than {limit} entries: list one directory at a time or page"
                    )));
                }
                let path = prefix.join(&entry.name)?;
                out.push((path.clone(), entry.clone()));
                if recursive && entry.kind == EntryKind::Directory {
                    self.walk(entry.hash, path, true, out, limit).await?;
                }
            }
            Ok(())
        }
        .boxed()
    }
}

/// A directory being edited: its current entries and the edited subdirectories below it.
struct Dir {
    tree: Tree,
    /// Subdirectories loaded for editing; their entries in `tree` are stale until written.
    children: BTreeMap<String, Dir>,
    dirty: bool,
    /// A name was added or removed here: its modification time becomes the batch's time,
    /// as POSIX updates a directory's mtime (unless the batch sets it explicitly later).
    names_changed: bool,
}

impl Dir {
    /// Puts `entry` under `name`, replacing what was there (and any edits loaded below it).
    fn put(&mut self, name: String, mut entry: TreeEntry) {
        self.children.remove(&name);
        entry.name = name;
        self.tree.insert(entry);
        self.dirty = true;
    }

    fn new(tree: Tree) -> Dir {
        Dir {
            tree,
            children: BTreeMap::new(),
            dirty: false,
            names_changed: false,
        }
    }
}

/// Applies path operations to a root in memory, then writes the changed trees.
pub struct TreeEditor {
    trees: Trees,
    root: Dir,
    /// Paths touched, for change events.
    touched: Vec<String>,
    /// The batch's time: the modification time of what it writes without one.
    now_ns: i64,
}

impl TreeEditor {
    pub async fn open(trees: &Trees, root: &Hash) -> Result<Self> {
        let tree = trees.load(root).await?.as_ref().clone();
        Ok(Self {
            trees: trees.clone(),
            root: Dir::new(tree),
            touched: Vec::new(),
            now_ns: now_ns(),
        })
    }

    /// The modification time a change stores: the one given, or the batch's time for 0.
    fn mtime(&self, mtime_ns: i64) -> i64 {
        if mtime_ns == 0 {
            self.now_ns
        } else {
            mtime_ns
        }
    }

    pub fn touched(&self) -> &[String] {
        &self.touched
    }

    /// The directory at `path`, loading it for editing; with `create`, missing directories
    /// are made on the way.
    async fn dir_mut(&mut self, path: &WorkspacePath, create: bool) -> Result<&mut Dir> {
        let (trees, now_ns) = (self.trees.clone(), self.now_ns);
        let mut dir = &mut self.root;
        let mut walked = WorkspacePath::root();
        for name in path.components() {
            walked = walked.join(name)?;
            if !dir.children.contains_key(name) {
                let tree = match dir.tree.get(name) {
                    Some(entry) if entry.kind == EntryKind::Directory => {
                        trees.load(&entry.hash).await?.as_ref().clone()
                    }
                    Some(entry) => {
                        let what = if entry.kind == EntryKind::Symlink {
                            "a symlink"
                        } else {
                            "a file"
                        };
                        return Err(Error::NotADirectory {
                            path: walked.to_string(),
                            what,
                        });
                    }
                    None if create => {
                        dir.tree.insert(TreeEntry {
                            name: name.to_string(),
                            kind: EntryKind::Directory,
                            mode: DIR_MODE,
                            size: 0,
                            mtime_ns: now_ns,
                            hash: empty_tree_hash(),
                        });
                        dir.dirty = true;
                        dir.names_changed = true;
                        Tree::new()
                    }
                    None => {
                        return Err(Error::DirectoryNotFound {
                            path: walked.to_string(),
                            role: "directory",
                        })
                    }
                };
                dir.children.insert(name.to_string(), Dir::new(tree));
            }
            dir = dir.children.get_mut(name).expect("just inserted");
        }
        Ok(dir)
    }

    /// The current entry at `path` (reflecting edits so far).
    pub async fn get(&mut self, path: &WorkspacePath) -> Result<Option<TreeEntry>> {
        let Some(parent) = path.parent() else {
            return Ok(Some(TreeEntry {
                name: String::new(),
                kind: EntryKind::Directory,
                mode: DIR_MODE,
                size: 0,
                mtime_ns: 0,
                hash: Hash([0; 32]),
            }));
        };
        let name = path.file_name().expect("non-root");
        match self.dir_mut(&parent, false).await {
            Ok(dir) => Ok(dir.tree.get(name).cloned()),
            Err(Error::DirectoryNotFound { .. }) | Err(Error::FailedPrecondition(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn require_not_root(path: &WorkspacePath, what: &str) -> Result<()> {
        if path.is_root() {
            return Err(Error::InvalidArgument(format!(
                "cannot {what} the session root; name a path inside it"
            )));
        }
        Ok(())
    }

    /// Puts a file entry at `path`, creating parent directories. `mtime_ns` 0 is the batch's
    /// time.
    pub async fn write_file(
        &mut self,
        path: &WorkspacePath,
        hash: Hash,
        size: u64,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<()> {
        let entry = TreeEntry {
            name: String::new(),
            kind: EntryKind::File,
            mode: if mode == 0 { FILE_MODE } else { mode & 0o7777 },
            size,
            mtime_ns: self.mtime(mtime_ns),
            hash,
        };
        self.put_leaf(path, entry, "write a file").await
    }

    /// Creates or replaces a symlink at `path` whose target is the content `hash` (`size`
    /// bytes), creating parent directories.
    pub async fn symlink(
        &mut self,
        path: &WorkspacePath,
        hash: Hash,
        size: u64,
        mtime_ns: i64,
    ) -> Result<()> {
        let entry = TreeEntry {
            name: String::new(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size,
            mtime_ns: self.mtime(mtime_ns),
            hash,
        };
        self.put_leaf(path, entry, "create a symlink").await
    }

    /// Puts a file or symlink entry at `path`, replacing a file or symlink but not a directory.
    async fn put_leaf(&mut self, path: &WorkspacePath, entry: TreeEntry, what: &str) -> Result<()> {
        Self::require_not_root(path, what)?;
        let name = path.file_name().expect("non-root").to_string();
        let dir = self
            .dir_mut(&path.parent().expect("non-root"), true)
            .await?;
        match dir.tree.get(&name) {
            Some(existing) if existing.kind == EntryKind::Directory => {
                return Err(Error::DirectoryInTheWay {
                    path: path.to_string(),
                    what: "is a directory",
                    purpose: format!(" to {what} there"),
                });
            }
            Some(_) => {}
            None => dir.names_changed = true,
        }
        dir.put(name, entry);
        self.touched.push(path.to_string());
        Ok(())
    }

    /// Sets the mode and/or modification time of an existing path, keeping its content.
    pub async fn set_attributes(
        &mut self,
        path: &WorkspacePath,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> Result<()> {
        Self::require_not_root(path, "change the attributes of")?;
        if let Some(mode) = mode.filter(|m| *m > 0o7777) {
            return Err(Error::InvalidArgument(format!(
                "mode {mode:o} has bits beyond 07777; pass permission bits only"
            )));
        }
        let name = path.file_name().expect("non-root").to_string();
        let dir = match self.dir_mut(&path.parent().expect("non-root"), false).await {
            Ok(dir) => dir,
            // A missing parent: the path does not exist. A parent that is a file says so, as
            // it does for writes.
            Err(Error::DirectoryNotFound { .. }) => return Err(not_found(path)),
            Err(e) => return Err(e),
        };
        let Some(mut entry) = dir.tree.get(&name).cloned() else {
            return Err(not_found(path));
        };
        if let Some(mode) = mode {
            // A symlink's permission bits mean nothing on Linux; they stay 0777.
            if entry.kind != EntryKind::Symlink {
                entry.mode = mode;
            }
        }
        if let Some(mtime_ns) = mtime_ns {
            entry.mtime_ns = mtime_ns;
            // An explicit time wins over the implicit update of names changed earlier.
            if let Some(child) = dir.children.get_mut(&name) {
                child.names_changed = false;
            }
        }
        dir.tree.insert(entry);
        dir.dirty = true;
        self.touched.push(path.to_string());
        Ok(())
    }

    /// Creates a directory; with `parents`, creates missing parents and accepts an existing one.
    pub async fn make_directory(&mut self, path: &WorkspacePath, parents: bool) -> Result<()> {
        Self::require_not_root(path, "create")?;
        let now_ns = self.now_ns;
        let name = path.file_name().expect("non-root").to_string();
        let dir = self
            .dir_mut(&path.parent().expect("non-root"), parents)
            .await?;
        match dir.tree.get(&name) {
            Some(e) if e.kind == EntryKind::Directory && parents => return Ok(()),
            Some(_) => {
                return Err(Error::PathExists {
                    path: path.to_string(),
                    hint: "",
                })
            }
            None => {}
        }
        dir.tree.insert(TreeEntry {
            name,
            kind: EntryKind::Directory,
            mode: DIR_MODE,
            size: 0,
            mtime_ns: now_ns,
            hash: empty_tree_hash(),
        });
        dir.dirty = true;
        dir.names_changed = true;
        self.touched.push(path.to_string());
        Ok(())
    }

    /// Removes `path` and returns its entry (with its subtree's current hash).
    pub async fn delete(&mut self, path: &WorkspacePath, recursive: bool) -> Result<TreeEntry> {
        Self::require_not_root(path, "delete")?;
        let name = path.file_name().expect("non-root").to_string();
        let parent = path.parent().expect("non-root");
        let dir = match self.dir_mut(&parent, false).await {
            Ok(dir) => dir,
            // A missing parent: the path does not exist. A parent that is a file says so, as
            // it does for writes.
            Err(Error::DirectoryNotFound { .. }) => return Err(not_found(path)),
            Err(e) => return Err(e),
        };
        let Some(mut entry) = dir.tree.get(&name).cloned() else {
            return Err(not_found(path));
        };
        if entry.kind == EntryKind::Directory {
            // An edited subdirectory must be written first so the entry we hand back is current.
            if let Some(child) = dir.children.remove(&name) {
                let (trees, now_ns) = (self.trees.clone(), self.now_ns);
                if child.names_changed {
                    entry.mtime_ns = now_ns;
                }
                let (hash, size) = write_dir(&trees, child, now_ns).await?;
                entry.hash = hash;
                entry.size = size;
            }
            if !recursive && entry.hash != empty_tree_hash() {
                return Err(Error::DirectoryNotEmpty {
                    path: path.to_string(),
                });
            }
        }
        let dir = self.dir_mut(&parent, false).await?;
        dir.tree.remove(&name);
        dir.dirty = true;
        dir.names_changed = true;
        self.touched.push(path.to_string());
        Ok(entry)
    }

    /// Places an existing entry (file or whole subtree) at `path`: O(1), content is shared.
    async fn place(
        &mut self,
        path: &WorkspacePath,
        entry: TreeEntry,
        overwrite: bool,
    ) -> Result<()> {
        Self::require_not_root(path, "replace")?;
        let name = path.file_name().expect("non-root").to_string();
        let dir = self
            .dir_mut(&path.parent().expect("non-root"), false)
            .await?;
        if let Some(existing) = dir.tree.get(&name) {
            if !overwrite {
                return Err(Error::PathExists {
                    path: path.to_string(),
                    hint: OVERWRITE_HINT,
                });
            }
            if existing.kind == EntryKind::Directory || entry.kind == EntryKind::Directory {
                return Err(Error::DirectoryInTheWay {
                    path: path.to_string(),
                    what: "exists and one side is a directory",
                    purpose: String::new(),
                });
            }
        } else {
            dir.names_changed = true;
        }
        dir.put(name, entry);
        self.touched.push(path.to_string());
        Ok(())
    }

    /// Moves a file or directory; atomic with the rest of the batch.
    pub async fn move_path(
        &mut self,
        from: &WorkspacePath,
        to: &WorkspacePath,
        overwrite: bool,
    ) -> Result<()> {
        Self::check_move(from, to, "move")?;
        let existing = self.get(from).await?;
        if existing.is_none() {
            return Err(not_found(from));
        }
        // Check the destination before removing the source, so a failed move changes nothing.
        self.check_destination(to, overwrite).await?;
        let entry = self.delete(from, true).await?;
        self.place(to, entry, overwrite).await
    }

    /// Copies a file or directory by sharing its content (O(1)).
    pub async fn copy_path(
        &mut self,
        from: &WorkspacePath,
        to: &WorkspacePath,
        overwrite: bool,
    ) -> Result<()> {
        Self::check_move(from, to, "copy")?;
        let Some(mut entry) = self.get(from).await? else {
            return Err(not_found(from));
        };
        self.check_destination(to, overwrite).await?;
        if entry.kind == EntryKind::Directory {
            // Write pending edits below the source so the copy sees them.
            let parent = from.parent().expect("non-root");
            let name = from.file_name().expect("non-root").to_string();
            let (trees, now_ns) = (self.trees.clone(), self.now_ns);
            let dir = self.dir_mut(&parent, false).await?;
            if let Some(child) = dir.children.remove(&name) {
                let names_changed = child.names_changed;
                let (hash, size) = write_dir(&trees, child, now_ns).await?;
                entry.hash = hash;
                entry.size = size;
                if names_changed {
                    entry.mtime_ns = now_ns;
                }
                if let Some(current) = dir.tree.get(&name).cloned() {
                    dir.tree.insert(TreeEntry {
                        hash,
                        size,
                        mtime_ns: entry.mtime_ns,
                        ..current
                    });
                }
            }
        }
        self.place(to, entry, overwrite).await
    }

    fn check_move(from: &WorkspacePath, to: &WorkspacePath, what: &str) -> Result<()> {
        Self::require_not_root(from, what)?;
        Self::require_not_root(to, what)?;
        if to.starts_with(from) {
            return Err(Error::InvalidArgument(format!(
                "cannot {what} \"{from}\" into itself (\"{to}\")"
            )));
        }
        Ok(())
    }

    async fn check_destination(&mut self, to: &WorkspacePath, overwrite: bool) -> Result<()> {
        let parent = to.parent().expect("non-root");
        match self.get(&parent).await? {
            Some(e) if e.kind == EntryKind::Directory => {}
            Some(e) => {
                return Err(Error::NotADirectory {
                    path: parent.to_string(),
                    what: if e.kind == EntryKind::Symlink {
                        "a symlink"
                    } else {
                        "a file"
                    },
                })
            }
            None => {
                return Err(Error::DirectoryNotFound {
                    path: parent.to_string(),
                    role: "destination directory",
                })
            }
        }
        if let Some(existing) = self.get(to).await? {
            if !overwrite {
                return Err(Error::PathExists {
                    path: to.to_string(),
                    hint: OVERWRITE_HINT,
                });
            }
            if existing.kind == EntryKind::Directory {
                return Err(Error::DirectoryInTheWay {
                    path: to.to_string(),
                    what: "is a directory",
                    purpose: String::new(),
                });
            }
        }
        Ok(())
    }

    /// Writes every changed tree and returns the new root hash.
    pub async fn finish(self) -> Result<Hash> {
        Ok(write_dir(&self.trees, self.root, self.now_ns).await?.0)
    }
}

/// Stores a directory and every edited tree below it: (hash, total size). A tree's name
/// depends only on its children's names, so all are hashed first, bottom-up, and then stored
/// in one round of concurrent writes rather than one round per level of depth.
async fn write_dir(trees: &Trees, dir: Dir, now_ns: i64) -> Result<(Hash, u64)> {
    let mut changed = Vec::new();
    let named = hash_dir(dir, now_ns, &mut changed);
    futures::stream::iter(changed)
        .map(|(tree, encoded)| trees.store_encoded(tree, encoded))
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_collect::<Vec<Hash>>()
        .await?;
    Ok(named)
}

/// Names a directory after naming its edited children: (hash, total size). Collects every
/// tree that changed, with its encoding, to be stored.
fn hash_dir(dir: Dir, now_ns: i64, changed: &mut Vec<(Tree, Vec<u8>)>) -> (Hash, u64) {
    let Dir {
        mut tree,
        children,
        mut dirty,
        names_changed: _,
    } = dir;
    for (name, child) in children {
        let names_changed = child.names_changed;
        let (hash, size) = hash_dir(child, now_ns, changed);
        if let Some(entry) = tree.get(&name).cloned() {
            let mtime_ns = if names_changed {
                now_ns
            } else {
                entry.mtime_ns
            };
            if entry.hash != hash || entry.size != size || entry.mtime_ns != mtime_ns {
                tree.insert(TreeEntry {
                    hash,
                    size,
                    mtime_ns,
                    ..entry
                });
                dirty = true;
            }
        }
    }
    let size = tree.total_size();
    let encoded = tree.encode();
    let hash = Hash::of(&encoded);
    if dirty {
        changed.push((tree, encoded));
    }
    (hash, size)
}

/// The wall clock in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How a refused move, copy or placement onto an existing path can go on.
const OVERWRITE_HINT: &str = "; set overwrite to replace it";

/// Nothing at `path`.
fn not_found(path: &WorkspacePath) -> Error {
    Error::PathNotFound {
        path: path.to_string(),
    }
}
