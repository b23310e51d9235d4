//! The mount's view of the session: an inode table that is the truth for everything the
//! kernel asks, plus the changes made here that the session does not have yet.
//!
//! Inode numbers name nodes, not paths, so a rename moves one node and open files follow it.
//! Directories are listed from the session once, on first use; after that lookups of names
//! that do not exist are answered here (git and make stat many of those). Every change made
//! through the mount is applied here at once and queued as an [`Op`]; the flusher sends the
//! queue as one ApplyChanges per batch. A node changed since the last acknowledged batch is
//! *dirty*: a refresh from the session never overwrites it.

use std::collections::{BTreeMap, HashMap};

use aether_client::proto as pb;

use super::journal::Journal;
use super::staging::Staging;

/// The root's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One file, directory or symlink.
#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub name: String,
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    /// Kept here only (the model has no atime or ctime).
    pub atime_ns: i64,
    pub ctime_ns: i64,
    /// Kept here only; the session has no owners.
    pub uid: u32,
    pub gid: u32,
    /// The content in the session (file or symlink), when it is not staged here.
    pub hash: Option<String>,
    /// The content lives in the staging file of this inode.
    pub staged: bool,
    /// A symlink's target, once known.
    pub target: Option<String>,
    /// A directory's children by name; None until listed from the session.
    pub children: Option<BTreeMap<String, u64>>,
    /// A directory the session changed behind our back: list it again before use.
    pub stale: bool,
    /// False once unlinked or replaced (open handles may still use it).
    pub linked: bool,
    /// The change generation of the last change made here; 0 when clean from the start.
    pub changed: u64,
    /// Open file handles on this node.
    pub open: u32,
    /// The session changed this file's content since it was last opened: the kernel's page
    /// cache of it must be dropped at the next open.
    pub content_changed: bool,
}

impl Node {
    /// A node changed now (`now_ns`), not yet linked anywhere.
    pub fn new(name: &str, kind: Kind, mode: u32, (uid, gid): (u32, u32), now_ns: i64) -> Node {
        Node {
            parent: ROOT,
            name: name.to_string(),
            kind,
            mode,
            size: 0,
            mtime_ns: now_ns,
            atime_ns: now_ns,
            ctime_ns: now_ns,
            uid,
            gid,
            hash: None,
            staged: false,
            target: None,
            children: None,
            stale: false,
            linked: true,
            changed: 0,
            open: 0,
            content_changed: false,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
}

/// A change made through the mount, in the order it was made. Paths are the ones at the
/// time of the change; a write's content is read when the batch is built.
#[derive(Clone, Debug)]
pub enum Op {
    /// A new, empty file (its content follows in a Write once it is closed or fsynced).
    Create {
        ino: u64,
        path: String,
    },
    Write {
        ino: u64,
        path: String,
    },
    Symlink {
        path: String,
        target: String,
        mtime_ns: i64,
    },
    Mkdir {
        path: String,
    },
    Delete {
        path: String,
        recursive: bool,
    },
    Move {
        from: String,
        to: String,
    },
    SetAttributes {
        path: String,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    },
}

/// The inode table and the queue of changes not yet sent.
pub struct State {
    pub nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Changes not yet taken by the flusher.
    pub ops: Vec<Op>,
    /// Inodes with a Write queued since the last namespace change (a later write of the same
    /// file needs no second Write: the batch reads the content when it is built).
    write_queued: HashMap<u64, ()>,
    /// Bumped by every change; nodes changed after the generation a batch was taken at stay
    /// dirty after it is acknowledged.
    pub generation: u64,
    /// Every change up to this generation is in the session.
    pub acknowledged: u64,
    /// Bytes of staged content queued, to flush early past a threshold.
    pub pending_bytes: u64,
    /// Staged inodes forgotten (unlinked and closed): their staging files can go.
    pub orphans: Vec<u64>,
    /// Files written since their content was last queued: their content is queued when they
    /// are closed or fsynced, so a batch never carries a file half-written.
    pub written: std::collections::HashSet<u64>,
    /// Files whose queued content no batch has read yet: before one changes again, that batch
    /// goes ([`crate::mount::fs`]'s `stage`), so the content it had at close is not lost.
    pub content_unsent: std::collections::HashSet<u64>,
    /// Where every queued change is also written as it is queued (none in unit tests).
    pub journal: Option<Journal>,
}

impl State {
    pub fn new(uid: u32, gid: u32, now_ns: i64) -> State {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new("", Kind::Dir, 0o755, (uid, gid), now_ns));
        State {
            nodes,
            next_ino: ROOT + 1,
            ops: Vec::new(),
            write_queued: HashMap::new(),
            generation: 1,
            acknowledged: 0,
            pending_bytes: 0,
            written: std::collections::HashSet::new(),
            content_unsent: std::collections::HashSet::new(),
            orphans: Vec::new(),
            journal: None,
        }
    }

    pub fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn node_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// The session path of a linked node ("" for the root).
    pub fn path(&self, ino: u64) -> Option<String> {
        let mut names = Vec::new();
        let mut at = ino;
        // Bounded by the depth a path can have (4096 bytes, one per component at least).
        for _ in 0..4096 {
            if at == ROOT {
                names.reverse();
                return Some(names.join("/"));
            }
            let node = self.nodes.get(&at)?;
            if !node.linked {
                return None;
            }
            names.push(node.name.as_str());
            at = node.parent;
        }
        None
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.nodes
            .get(&parent)?
            .children
            .as_ref()?
            .get(name)
            .copied()
    }

    /// Adds a node under `parent` (whose children are loaded), replacing nothing.
    pub fn insert(&mut self, parent: u64, mut node: Node) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        node.parent = parent;
        let name = node.name.clone();
        self.nodes.insert(ino, node);
        if let Some(children) = self
            .nodes
            .get_mut(&parent)
            .and_then(|p| p.children.as_mut())
        {
            children.insert(name, ino);
        }
        ino
    }

    /// Takes `ino` out of its parent's children; the node stays while handles use it.
    pub fn unlink(&mut self, ino: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.linked = false;
        let (parent, name) = (node.parent, node.name.clone());
        if let Some(children) = self
            .nodes
            .get_mut(&parent)
            .and_then(|p| p.children.as_mut())
        {
            if children.get(&name) == Some(&ino) {
                children.remove(&name);
            }
        }
        self.drop_subtree(ino);
    }

    /// Forgets an unlinked node and its descendants once nothing holds them open.
    fn drop_subtree(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        let children: Vec<u64> = node
            .children
            .as_ref()
            .map(|c| c.values().copied().collect())
            .unwrap_or_default();
        for child in children {
            if let Some(c) = self.nodes.get_mut(&child) {
                c.linked = false;
            }
            self.drop_subtree(child);
        }
        let node = &self.nodes[&ino];
        if node.open == 0 && !node.linked {
            // Its staged content (kept even after a refresh unstaged it) goes too.
            if node.kind == Kind::File {
                self.orphans.push(ino);
            }
            self.nodes.remove(&ino);
            self.written.remove(&ino);
        }
    }

    /// Whether `ino` is `ancestor` or lies below it.
    pub fn is_within(&self, ino: u64, ancestor: u64) -> bool {
        let mut at = ino;
        // Bounded by the depth a path can have.
        for _ in 0..4096 {
            if at == ancestor {
                return true;
            }
            if at == ROOT {
                return false;
            }
            match self.nodes.get(&at) {
                Some(node) => at = node.parent,
                None => return false,
            }
        }
        false
    }

    /// Moves `ino` to `name` under `parent` (the caller has removed any target).
    pub fn relink(&mut self, ino: u64, parent: u64, name: &str) {
        let (old_parent, old_name) = {
            let node = &self.nodes[&ino];
            (node.parent, node.name.clone())
        };
        if let Some(children) = self
            .nodes
            .get_mut(&old_parent)
            .and_then(|p| p.children.as_mut())
        {
            children.remove(&old_name);
        }
        if let Some(children) = self
            .nodes
            .get_mut(&parent)
            .and_then(|p| p.children.as_mut())
        {
            children.insert(name.to_string(), ino);
        }
        let node = self.nodes.get_mut(&ino).expect("moved node exists");
        node.parent = parent;
        node.name = name.to_string();
    }

    /// Marks nodes changed now and returns the generation.
    pub fn touch(&mut self, inos: &[u64]) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        for ino in inos {
            if let Some(node) = self.nodes.get_mut(ino) {
                node.changed = generation;
            }
        }
        generation
    }

    /// Whether a node has changes the session does not have yet.
    pub fn dirty(&self, ino: u64) -> bool {
        self.written.contains(&ino)
            || self
                .nodes
                .get(&ino)
                .is_some_and(|n| n.changed > self.acknowledged)
    }

    /// Queues a namespace change; the next write of any file is queued again after it.
    pub fn queue(&mut self, op: Op) {
        self.write_queued.clear();
        if let Some(change) = self.namespace_change(&op) {
            self.journal_with(|journal| journal.append(&change));
        }
        self.ops.push(op);
    }

    /// A queued change that carries no file content, as it goes to the session: all but a
    /// Write (and a Create, sent as an empty write with the file's mode and time).
    pub fn namespace_change(&self, op: &Op) -> Option<pb::Change> {
        use pb::change::Op as C;
        let change = match op {
            Op::Write { .. } => return None,
            Op::Create { ino, path } => {
                let (mode, mtime_ns) = self
                    .node(*ino)
                    .map(|n| (n.mode, n.mtime_ns))
                    .unwrap_or((0o644, 0));
                C::Write(pb::WriteOp {
                    path: path.clone(),
                    mode,
                    mtime_ns,
                    ..Default::default()
                })
            }
            Op::Symlink {
                path,
                target,
                mtime_ns,
            } => C::Symlink(pb::SymlinkOp {
                path: path.clone(),
                target: target.clone(),
                mtime_ns: *mtime_ns,
            }),
            Op::Mkdir { path } => C::MakeDirectory(pb::MakeDirectoryOp {
                path: path.clone(),
                parents: true,
            }),
            Op::Delete { path, recursive } => C::Delete(pb::DeleteOp {
                path: path.clone(),
                recursive: *recursive,
            }),
            Op::Move { from, to } => C::Move(pb::MoveOp {
                from: from.clone(),
                to: to.clone(),
                overwrite: true,
            }),
            Op::SetAttributes {
                path,
                mode,
                mtime_ns,
            } => C::SetAttributes(pb::SetAttributesOp {
                path: path.clone(),
                mode: *mode,
                mtime_ns: *mtime_ns,
            }),
        };
        Some(pb::Change {
            op: Some(change),
            precondition: None,
        })
    }

    /// Journals the content of file `ino` as it is now (it was just closed or fsynced).
    pub fn journal_content(&mut self, ino: u64, staging: &Staging) {
        if self.journal.is_none() {
            return;
        }
        let Some(path) = self.path(ino).filter(|p| !p.is_empty()) else {
            return; // unlinked: its delete follows
        };
        let Some(node) = self.node(ino) else {
            return;
        };
        let (staged, size) = (node.staged, node.size);
        let mut write = pb::WriteOp {
            path,
            mode: node.mode,
            mtime_ns: node.mtime_ns,
            ..Default::default()
        };
        self.journal_with(|journal| {
            if !staged || size == 0 {
                return journal.append(&file_write(write));
            }
            if size <= super::journal::INLINE_CONTENT_BYTES {
                write.content = staging.read_all(ino, size)?.into();
                return journal.append(&file_write(write));
            }
            journal.append_large_write(&write, &staging.file_path(ino)?, size)
        });
    }

    fn journal_with(&mut self, append: impl FnOnce(&mut Journal) -> std::io::Result<()>) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        if let Err(error) = append(journal) {
            self.stop_journal(&error);
        }
    }

    /// Stops journaling after a failed write, removing the journal: a journal missing one
    /// change would, recovered, apply the changes around the gap without it.
    pub fn stop_journal(&mut self, error: &dyn std::fmt::Display) {
        if let Some(journal) = self.journal.take() {
            journal.close();
            eprintln!(
                "aether mount: cannot write the journal ({error}); journaling stops: changes still reach the session, but a kill of this mount before they do loses them"
            );
        }
    }

    /// Queues the content of a file (once until the next namespace change).
    pub fn queue_write(&mut self, ino: u64) {
        self.written.remove(&ino);
        if self.write_queued.contains_key(&ino) {
            return;
        }
        let Some(path) = self.path(ino) else {
            return; // unlinked: nothing to write
        };
        self.write_queued.insert(ino, ());
        self.content_unsent.insert(ino);
        self.ops.push(Op::Write { ino, path });
    }

    /// Queues the content of every file written and not yet queued (fsync of the mount).
    pub fn queue_all_written(&mut self, staging: &Staging) {
        let mut written: Vec<u64> = self.written.iter().copied().collect();
        written.sort_unstable();
        for ino in written {
            self.queue_write(ino);
            self.journal_content(ino, staging);
        }
    }

    /// Takes the queue for a batch: (ops, the generation they cover, the journal segment
    /// that holds them).
    pub fn take_ops(&mut self) -> (Vec<Op>, u64, Option<u64>) {
        self.write_queued.clear();
        self.pending_bytes = 0;
        if self.ops.is_empty() {
            return (Vec::new(), self.generation, None);
        }
        let segment = match self.journal.as_mut().map(Journal::rotate) {
            None => None,
            Some(Ok(segment)) => Some(segment),
            Some(Err(error)) => {
                self.stop_journal(&error);
                None
            }
        };
        (std::mem::take(&mut self.ops), self.generation, segment)
    }

    /// Fills a listed directory's children from the session's entries, keeping dirty nodes
    /// and the inode numbers of names that stay the same kind.
    pub fn merge_listing(&mut self, dir: u64, entries: Vec<pb::Entry>, default: (u32, u32)) {
        let mut remote: BTreeMap<String, pb::Entry> = BTreeMap::new();
        for entry in entries {
            let name = entry
                .path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            remote.insert(name, entry);
        }
        let old = self
            .nodes
            .get_mut(&dir)
            .and_then(|d| d.children.take())
            .unwrap_or_default();
        let mut children = BTreeMap::new();
        for (name, ino) in &old {
            let keep = self.dirty(*ino)
                || self
                    .nodes
                    .get(ino)
                    .is_some_and(|n| remote.get(name).is_some_and(|e| kind_of(e) == n.kind));
            if keep {
                children.insert(name.clone(), *ino);
            } else if let Some(node) = self.nodes.get_mut(ino) {
                node.linked = false;
            }
        }
        if let Some(node) = self.nodes.get_mut(&dir) {
            node.children = Some(children);
            node.stale = false;
        }
        for (name, ino) in old {
            if !self.nodes.get(&ino).is_some_and(|n| n.linked) {
                self.drop_subtree(ino);
            }
            let _ = name;
        }
        for (name, entry) in remote {
            match self.child(dir, &name) {
                Some(ino) if self.dirty(ino) => {}
                Some(ino) => {
                    let node = self.nodes.get_mut(&ino).expect("child exists");
                    update_from(node, &entry);
                }
                None => {
                    let node = node_from(&name, &entry, default);
                    self.insert(dir, node);
                }
            }
        }
    }
}

pub fn kind_of(entry: &pb::Entry) -> Kind {
    match entry.kind() {
        pb::EntryKind::Directory => Kind::Dir,
        pb::EntryKind::Symlink => Kind::Symlink,
        _ => Kind::File,
    }
}

/// A clean node for a session entry.
pub fn node_from(name: &str, entry: &pb::Entry, owner: (u32, u32)) -> Node {
    let mut node = Node::new(name, kind_of(entry), 0, owner, 0);
    update_from(&mut node, entry);
    node
}

/// Takes a clean node's attributes from the session's entry.
fn update_from(node: &mut Node, entry: &pb::Entry) {
    let dir = node.kind == Kind::Dir;
    node.mode = match entry.mode & 0o7777 {
        0 if dir => 0o755,
        0 => 0o644,
        mode => mode,
    };
    node.size = if dir { 0 } else { entry.size };
    node.mtime_ns = entry.mtime_ns;
    node.atime_ns = entry.mtime_ns;
    node.ctime_ns = entry.mtime_ns;
    if node.hash.as_deref() != Some(entry.hash.as_str()) {
        if dir {
            // A directory whose tree changed is listed again when next used.
            node.stale = node.children.is_some();
        } else {
            node.target = None;
            node.content_changed = true;
        }
        node.hash = Some(entry.hash.clone());
    }
    if !dir {
        node.staged = false;
    }
}

/// A write as a change, without precondition.
pub fn file_write(write: pb::WriteOp) -> pb::Change {
    pb::Change {
        op: Some(pb::change::Op::Write(write)),
        precondition: None,
    }
}
