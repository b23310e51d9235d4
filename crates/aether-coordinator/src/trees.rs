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
use futures::{FutureExt, StreamExt, TryStreamExt};

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
                    EntryKind::File => files += 1,
                    EntryKind::Directory => {
                        let (f, d) = self.count(entry.hash).await?;
                        files += f;
                        dirs += d + 1;
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
}

/// Applies path operations to a root in memory, then writes the changed trees.
pub struct TreeEditor {
    trees: Trees,
    root: Dir,
    /// Paths touched, for change events.
    touched: Vec<String>,
}

impl TreeEditor {
    pub async fn open(trees: &Trees, root: &Hash) -> Result<Self> {
        let tree = trees.load(root).await?.as_ref().clone();
        Ok(Self {
            trees: trees.clone(),
            root: Dir {
                tree,
                children: BTreeMap::new(),
                dirty: false,
            },
            touched: Vec::new(),
        })
    }

    pub fn touched(&self) -> &[String] {
        &self.touched
    }

    /// The directory at `path`, loading it for editing; with `create`, missing directories
    /// are made on the way.
    async fn dir_mut(&mut self, path: &WorkspacePath, create: bool) -> Result<&mut Dir> {
        let trees = self.trees.clone();
        let mut dir = &mut self.root;
        let mut walked = WorkspacePath::root();
        for name in path.components() {
            walked = walked.join(name)?;
            if !dir.children.contains_key(name) {
                let tree = match dir.tree.get(name) {
                    Some(entry) if entry.kind == EntryKind::Directory => {
                        trees.load(&entry.hash).await?.as_ref().clone()
                    }
                    Some(_) => {
                        return Err(Error::FailedPrecondition(format!(
                            "\"{walked}\" is a file, not a directory"
                        )))
                    }
                    None if create => {
                        dir.tree.insert(TreeEntry {
                            name: name.to_string(),
                            kind: EntryKind::Directory,
                            mode: DIR_MODE,
                            size: 0,
                            hash: empty_tree_hash(),
                        });
                        dir.dirty = true;
                        Tree::new()
                    }
                    None => {
                        return Err(Error::NotFound(format!(
                            "directory \"{walked}\" does not exist"
                        )))
                    }
                };
                dir.children.insert(
                    name.to_string(),
                    Dir {
                        tree,
                        children: BTreeMap::new(),
                        dirty: false,
                    },
                );
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
                hash: Hash([0; 32]),
            }));
        };
        let name = path.file_name().expect("non-root");
        match self.dir_mut(&parent, false).await {
            Ok(dir) => Ok(dir.tree.get(name).cloned()),
            Err(Error::NotFound(_)) | Err(Error::FailedPrecondition(_)) => Ok(None),
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

    /// Puts a file entry at `path`, creating parent directories.
    pub async fn write_file(
        &mut self,
        path: &WorkspacePath,
        hash: Hash,
        size: u64,
        mode: u32,
    ) -> Result<()> {
        Self::require_not_root(path, "write")?;
        let name = path.file_name().expect("non-root").to_string();
        let dir = self
            .dir_mut(&path.parent().expect("non-root"), true)
            .await?;
        if let Some(existing) = dir.tree.get(&name) {
            if existing.kind == EntryKind::Directory {
                return Err(Error::FailedPrecondition(format!(
                    "\"{path}\" is a directory; delete it first to write a file there"
                )));
            }
        }
        dir.children.remove(&name);
        dir.tree.insert(TreeEntry {
            name,
            kind: EntryKind::File,
            mode: if mode == 0 { FILE_MODE } else { mode & 0o7777 },
            size,
            hash,
        });
        dir.dirty = true;
        self.touched.push(path.to_string());
        Ok(())
    }

    /// Creates a directory; with `parents`, creates missing parents and accepts an existing one.
    pub async fn make_directory(&mut self, path: &WorkspacePath, parents: bool) -> Result<()> {
        Self::require_not_root(path, "create")?;
        let name = path.file_name().expect("non-root").to_string();
        let dir = self
            .dir_mut(&path.parent().expect("non-root"), parents)
            .await?;
        match dir.tree.get(&name) {
            Some(e) if e.kind == EntryKind::Directory && parents => return Ok(()),
            Some(_) => return Err(Error::AlreadyExists(format!("\"{path}\" already exists"))),
            None => {}
        }
        dir.tree.insert(TreeEntry {
            name,
            kind: EntryKind::Directory,
            mode: DIR_MODE,
            size: 0,
            hash: empty_tree_hash(),
        });
        dir.dirty = true;
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
            Err(Error::NotFound(_)) | Err(Error::FailedPrecondition(_)) => {
                return Err(Error::NotFound(format!("\"{path}\" does not exist")))
            }
            Err(e) => return Err(e),
        };
        let Some(mut entry) = dir.tree.get(&name).cloned() else {
            return Err(Error::NotFound(format!("\"{path}\" does not exist")));
        };
        if entry.kind == EntryKind::Directory {
            // An edited subdirectory must be written first so the entry we hand back is current.
            if let Some(child) = dir.children.remove(&name) {
                let trees = self.trees.clone();
                let (hash, size) = write_dir(&trees, child).await?;
                entry.hash = hash;
                entry.size = size;
            }
            if !recursive && entry.hash != empty_tree_hash() {
                return Err(Error::FailedPrecondition(format!(
                    "directory \"{path}\" is not empty; set recursive to delete it with its contents"
                )));
            }
        }
        let dir = self.dir_mut(&parent, false).await?;
        dir.tree.remove(&name);
        dir.dirty = true;
        self.touched.push(path.to_string());
        Ok(entry)
    }

    /// Places an existing entry (file or whole subtree) at `path`: O(1), content is shared.
    async fn place(
        &mut self,
        path: &WorkspacePath,
        mut entry: TreeEntry,
        overwrite: bool,
    ) -> Result<()> {
        Self::require_not_root(path, "replace")?;
        let name = path.file_name().expect("non-root").to_string();
        let dir = self
            .dir_mut(&path.parent().expect("non-root"), false)
            .await?;
        if let Some(existing) = dir.tree.get(&name) {
            if !overwrite {
                return Err(Error::AlreadyExists(format!(
                    "\"{path}\" already exists; set overwrite to replace it"
                )));
            }
            if existing.kind == EntryKind::Directory || entry.kind == EntryKind::Directory {
                return Err(Error::FailedPrecondition(format!(
                    "\"{path}\" exists and one side is a directory; delete it first"
                )));
            }
        }
        dir.children.remove(&name);
        entry.name = name;
        dir.tree.insert(entry);
        dir.dirty = true;
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
            return Err(Error::NotFound(format!("\"{from}\" does not exist")));
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
            return Err(Error::NotFound(format!("\"{from}\" does not exist")));
        };
        self.check_destination(to, overwrite).await?;
        if entry.kind == EntryKind::Directory {
            // Write pending edits below the source so the copy sees them.
            let parent = from.parent().expect("non-root");
            let name = from.file_name().expect("non-root").to_string();
            let trees = self.trees.clone();
            let dir = self.dir_mut(&parent, false).await?;
            if let Some(child) = dir.children.remove(&name) {
                let (hash, size) = write_dir(&trees, child).await?;
                entry.hash = hash;
                entry.size = size;
                if let Some(current) = dir.tree.get(&name).cloned() {
                    dir.tree.insert(TreeEntry {
                        hash,
                        size,
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
            _ => {
                return Err(Error::NotFound(format!(
                    "destination directory \"{parent}\" does not exist"
                )))
            }
        }
        if let Some(existing) = self.get(to).await? {
            if !overwrite {
                return Err(Error::AlreadyExists(format!(
                    "\"{to}\" already exists; set overwrite to replace it"
                )));
            }
            if existing.kind == EntryKind::Directory {
                return Err(Error::FailedPrecondition(format!(
                    "\"{to}\" is a directory; delete it first"
                )));
            }
        }
        Ok(())
    }

    /// Writes every changed tree and returns the new root hash.
    pub async fn finish(self) -> Result<Hash> {
        Ok(write_dir(&self.trees, self.root).await?.0)
    }
}

/// Stores a directory and every edited tree below it: (hash, total size). A tree's name
/// depends only on its children's names, so all are hashed first, bottom-up, and then stored
/// in one round of concurrent writes rather than one round per level of depth.
async fn write_dir(trees: &Trees, dir: Dir) -> Result<(Hash, u64)> {
    let mut changed = Vec::new();
    let named = hash_dir(dir, &mut changed);
    futures::stream::iter(changed)
        .map(|(tree, encoded)| trees.store_encoded(tree, encoded))
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_collect::<Vec<Hash>>()
        .await?;
    Ok(named)
}

/// Names a directory after naming its edited children: (hash, total size). Collects every
/// tree that changed, with its encoding, to be stored.
fn hash_dir(dir: Dir, changed: &mut Vec<(Tree, Vec<u8>)>) -> (Hash, u64) {
    let Dir {
        mut tree,
        children,
        mut dirty,
    } = dir;
    for (name, child) in children {
        let (hash, size) = hash_dir(child, changed);
        if let Some(entry) = tree.get(&name).cloned() {
            if entry.hash != hash || entry.size != size {
                tree.insert(TreeEntry {
                    hash,
                    size,
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
