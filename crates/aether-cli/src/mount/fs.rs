//! The FUSE filesystem: every request is answered from the local [`State`] and local files;
//! the session is called only to list a directory the first time, to fetch content not yet
//! cached, and (in the flusher) to send changes.
//!
//! What the model does not hold fails as a POSIX filesystem says "not supported here": hard
//! links and device nodes, fifos and sockets are EPERM, chown to another owner is EPERM,
//! extended attributes are ENOTSUP (the kernel's answer to an unimplemented call). Sizes past
//! [`MAX_FILE_BYTES`] are EFBIG, checked before anything is allocated.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_client::{Rev, SessionHandle};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use super::content::LocalContent;
use super::flush::{Flusher, EARLY_FLUSH_BYTES};
use super::staging::Staging;
use super::state::{Kind, Node, Op, State, ROOT};

/// How long the kernel trusts an entry or attribute (changes from elsewhere show up within it).
const TTL: Duration = Duration::from_secs(1);
/// Largest file the mount writes: EFBIG beyond (a stated limit, checked before allocating).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Largest read answered at once.
const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;
/// How long a change to a file waits at most for the batch that carries its closed content.
const CLOSED_CONTENT_WAIT: Duration = Duration::from_secs(2);
/// Longest symlink target (Linux's PATH_MAX less the NUL).
const MAX_TARGET_BYTES: usize = 4095;
/// Longest name of one path component.
const MAX_NAME_BYTES: usize = 255;

/// An open file or directory.
enum Open {
    File {
        ino: u64,
        append: bool,
    },
    Dir {
        entries: Vec<(u64, FileType, String)>,
    },
}

/// A rename, resolved: the node moved, its parent and name before and after, its session
/// paths before and after, and when.
struct Rename<'a> {
    ino: u64,
    parent: u64,
    name: &'a str,
    new_parent: u64,
    new_name: &'a str,
    from: String,
    to: String,
    now: i64,
}

/// The mount.
pub struct AetherFs {
    pub session: SessionHandle,
    pub runtime: Handle,
    pub content: LocalContent,
    pub staging: Staging,
    pub flusher: Arc<Flusher>,
    owner: (u32, u32),
    sync_close: bool,
    state: Mutex<State>,
    handles: Mutex<HashMap<u64, Open>>,
    next_fh: AtomicU64,
    /// Head versions this mount produced (their events are not news).
    own_versions: Mutex<std::collections::VecDeque<u64>>,
    /// The newest head version this mount knows the changes of (its own batches, events).
    known_version: AtomicU64,
    /// Events that arrived while a batch was in flight: whether they are ours is known only
    /// once its response (and head version) is.
    events: Mutex<EventGate>,
}

/// What another writer changed.
pub enum Changed {
    Paths(Vec<String>),
    Everything,
}

#[derive(Default)]
struct EventGate {
    in_flight: bool,
    deferred: Vec<(u64, Changed)>,
}

type Fallible<T> = Result<T, Errno>;

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns_of(time: TimeOrNow) -> i64 {
    match time {
        TimeOrNow::Now => now_ns(),
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        },
    }
}

fn name_str(name: &OsStr) -> Fallible<&str> {
    let name = name.to_str().ok_or(Errno::EINVAL)?;
    if name.len() > MAX_NAME_BYTES {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    Ok(name)
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// A free name beside `to` (in directory `dir`) to move it through in an exchange: short (a
/// long `to` plus a suffix could pass the name limit, and the session would refuse the move)
/// and used by nothing the mount knows of in that directory.
fn exchange_name(state: &State, dir: u64, to: &str, ino: u64) -> String {
    let children = state.node(dir).and_then(|d| d.children.as_ref());
    let name = (0u64..)
        .map(|n| format!(".aether-exchange-{ino}-{n}"))
        .find(|name| !children.is_some_and(|c| c.contains_key(name)))
        .expect("an unused name");
    match to.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{name}"),
        None => name,
    }
}

/// The errno for a session error met while serving a request.
fn errno(error: &aether_client::Error) -> Errno {
    use tonic::Code;
    match error.code() {
        Code::NotFound => Errno::ENOENT,
        Code::PermissionDenied | Code::Unauthenticated => Errno::EACCES,
        Code::ResourceExhausted => Errno::ENOSPC,
        Code::FailedPrecondition => Errno::EROFS,
        _ => Errno::EIO,
    }
}

impl AetherFs {
    pub fn new(
        session: SessionHandle,
        runtime: Handle,
        content: LocalContent,
        staging: Staging,
        owner: (u32, u32),
        sync_close: bool,
    ) -> AetherFs {
        AetherFs {
            session,
            runtime,
            content,
            staging,
            flusher: Arc::new(Flusher::default()),
            owner,
            sync_close,
            state: Mutex::new(State::new(owner.0, owner.1, now_ns())),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            own_versions: Mutex::new(std::collections::VecDeque::new()),
            events: Mutex::new(EventGate::default()),
            known_version: AtomicU64::new(0),
        }
    }

    /// Before a file whose closed content is queued but unread changes again: sends that
    /// batch, so the content of its close reaches the session (and the journal's record of
    /// the batch) before it is overwritten. Costs a batch's round trip, once, only to a file
    /// changed again within the commit interval of its close. When the session is away (the
    /// last flush left changes unsent, or this one takes over [`CLOSED_CONTENT_WAIT`]) the
    /// change goes ahead and the file's content goes with its next close, as it would have.
    fn send_closed_content_first(&self, ino: u64) {
        if !self.state().content_unsent.contains(&ino) {
            return;
        }
        if !self.flusher.is_behind() {
            // A failure is the flusher's to report and retry; the change goes ahead.
            let _ = self
                .flusher
                .flush_and_wait_at_most(Some(CLOSED_CONTENT_WAIT));
        }
        self.state().content_unsent.remove(&ino);
    }

    /// Queues the content of file `ino` for the next batch (it was just closed, or changed
    /// while closed) and journals it as it is now.
    fn queue_content(&self, state: &mut State, ino: u64) {
        state.queue_write(ino);
        state.journal_content(ino, &self.staging);
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handles(&self) -> MutexGuard<'_, HashMap<u64, Open>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the changes up to `version` are known here.
    pub fn note_known_version(&self, version: u64) {
        self.known_version.fetch_max(version, Ordering::Relaxed);
    }

    pub fn known_version(&self) -> u64 {
        self.known_version.load(Ordering::Relaxed)
    }

    pub fn note_own_version(&self, version: u64) {
        self.note_known_version(version);
        let mut own = self.own_versions.lock().unwrap_or_else(|e| e.into_inner());
        own.push_back(version);
        while own.len() > 4096 {
            own.pop_front();
        }
    }

    pub fn is_own_version(&self, version: u64) -> bool {
        let own = self.own_versions.lock().unwrap_or_else(|e| e.into_inner());
        own.contains(&version)
    }

    /// A session event: applied now, or after the batch in flight (it may be that batch's).
    pub fn on_event(&self, version: u64, changed: Changed) {
        {
            let mut gate = self.events.lock().unwrap_or_else(|e| e.into_inner());
            if gate.in_flight {
                gate.deferred.push((version, changed));
                return;
            }
        }
        self.apply_event(version, changed);
    }

    fn apply_event(&self, version: u64, changed: Changed) {
        self.note_known_version(version);
        if self.is_own_version(version) {
            return;
        }
        match changed {
            Changed::Paths(paths) => self.mark_changed(&paths),
            Changed::Everything => self.mark_all_stale(),
        }
    }

    /// Whether a batch is being sent (its version is not known yet).
    pub fn batch_is_in_flight(&self) -> bool {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_flight
    }

    /// Called by the flusher around each batch it sends.
    pub fn batch_in_flight(&self, in_flight: bool) {
        let deferred = {
            let mut gate = self.events.lock().unwrap_or_else(|e| e.into_inner());
            gate.in_flight = in_flight;
            if in_flight {
                return;
            }
            std::mem::take(&mut gate.deferred)
        };
        for (version, changed) in deferred {
            self.apply_event(version, changed);
        }
    }

    /// Marks every listed directory to be listed again.
    pub fn mark_all_stale(&self) {
        let mut state = self.state();
        for node in state.nodes.values_mut() {
            if node.children.is_some() {
                node.stale = true;
            }
        }
    }

    /// Marks the directories holding `paths` (changed elsewhere) to be listed again.
    pub fn mark_changed(&self, paths: &[String]) {
        if paths.is_empty() {
            return self.mark_all_stale();
        }
        let mut state = self.state();
        for path in paths {
            let mut at = ROOT;
            let mut deepest = ROOT;
            for name in path.split('/').filter(|n| !n.is_empty()) {
                match state.child(at, name) {
                    Some(next) if state.node(next).is_some_and(|n| n.is_dir()) => {
                        deepest = next;
                        at = next;
                    }
                    _ => break,
                }
            }
            // The changed path's parent (its entry) and, for a directory, itself (its list).
            if let Some(node) = state.node_mut(deepest) {
                node.stale = node.children.is_some();
            }
            if let Some(parent) = state.node(deepest).map(|n| n.parent) {
                if let Some(node) = state.node_mut(parent) {
                    node.stale = node.children.is_some();
                }
            }
        }
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, size, nlink) = match node.kind {
            Kind::Dir => (FileType::Directory, 4096, 2),
            Kind::File => (FileType::RegularFile, node.size, u32::from(node.linked)),
            Kind::Symlink => (FileType::Symlink, node.size, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time_of(node.atime_ns),
            mtime: time_of(node.mtime_ns),
            ctime: time_of(node.ctime_ns),
            crtime: time_of(node.ctime_ns),
            kind,
            perm: (node.mode & 0o7777) as u16,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Attributes of `ino`, with the state locked by the caller; a directory's link count
    /// is 2 plus its subdirectories, as on ext4 (1, "not counted", as btrfs reports, for a
    /// directory too large to count on every stat).
    fn attr_locked(&self, state: &State, ino: u64) -> Fallible<FileAttr> {
        const MAX_COUNTED_CHILDREN: usize = 4096;
        let node = state.node(ino).ok_or(Errno::ENOENT)?;
        let mut attr = self.attr(ino, node);
        let counted = node
            .children
            .as_ref()
            .filter(|c| c.len() <= MAX_COUNTED_CHILDREN);
        if node.children.is_some() && counted.is_none() {
            attr.nlink = 1;
        } else if let Some(children) = counted {
            let subdirs = children
                .values()
                .filter(|i| state.node(**i).is_some_and(|n| n.is_dir()))
                .count();
            attr.nlink = 2 + subdirs as u32;
        }
        Ok(attr)
    }

    /// Makes sure a directory's children are loaded and fresh. Listing goes by path, so
    /// queued changes (which may rename the path) are sent first.
    fn ensure_listed(&self, dir: u64) -> Fallible<()> {
        let path = {
            let state = self.state();
            let node = state.node(dir).ok_or(Errno::ENOENT)?;
            if node.kind != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            if node.children.is_some() && !node.stale {
                return Ok(());
            }
            let pending = !state.ops.is_empty() || state.acknowledged < state.generation;
            drop(state);
            if pending {
                self.flusher.flush_and_wait()?;
            }
            self.state().path(dir).ok_or(Errno::ENOENT)?
        };
        let entries = match self
            .runtime
            .block_on(self.session.list(&path, false, &Rev::Head))
        {
            Ok(entries) => entries,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(errno(&e)),
        };
        self.state().merge_listing(dir, entries, self.owner);
        self.remove_orphans();
        Ok(())
    }

    /// A child's inode, listing the parent if needed.
    fn lookup_child(&self, parent: u64, name: &str) -> Fallible<Option<u64>> {
        self.ensure_listed(parent)?;
        Ok(self.state().child(parent, name))
    }

    fn new_node(&self, req: &Request, name: &str, kind: Kind, mode: u32) -> Node {
        let mut node = Node::new(name, kind, mode, (req.uid(), req.gid()), now_ns());
        if kind == Kind::Dir {
            node.children = Some(BTreeMap::new());
        }
        node
    }

    /// Records a change of a directory's names: its times, and its dirtiness.
    fn touch_dir(state: &mut State, dir: u64, now: i64) {
        if let Some(node) = state.node_mut(dir) {
            node.mtime_ns = now;
            node.ctime_ns = now;
        }
    }

    /// The cached content of a clean file, fetched from the session if needed.
    fn cached_file(&self, ino: u64) -> Fallible<File> {
        let known = self
            .state()
            .node(ino)
            .and_then(|n| Some((n.hash.clone()?, n.size)));
        if let Some(path) = known.and_then(|(hash, size)| self.content.cached(&hash, size)) {
            return File::open(path).map_err(io_errno);
        }
        // Fetching goes by path: send queued changes first so the path is the session's.
        {
            let state = self.state();
            let pending = !state.ops.is_empty() || state.acknowledged < state.generation;
            drop(state);
            if pending {
                self.flusher.flush_and_wait()?;
            }
        }
        let path = self.state().path(ino).ok_or(Errno::ENOENT)?;
        let (hash, size) = self
            .runtime
            .block_on(self.content.fetch(&self.session, &path))
            .map_err(|e| errno(&e))?;
        {
            let mut state = self.state();
            let dirty = state.dirty(ino);
            if let Some(node) = state.node_mut(ino) {
                if !node.staged && !dirty {
                    node.hash = Some(hash.clone());
                    node.size = size;
                }
            }
        }
        let path = self.content.cached(&hash, size).ok_or(Errno::EIO)?;
        File::open(path).map_err(io_errno)
    }

    /// Makes a file's content local and writable (copying the cached content on first
    /// write), so writes and truncates work on its staged content.
    fn stage(&self, ino: u64, keep_content: bool) -> Fallible<()> {
        self.send_closed_content_first(ino);
        let (staged, size) = {
            let state = self.state();
            let node = state.node(ino).ok_or(Errno::ENOENT)?;
            if node.kind != Kind::File {
                return Err(Errno::EISDIR);
            }
            (node.staged, node.size)
        };
        if staged {
            return Ok(());
        }
        if keep_content && size > 0 {
            let mut source = self.cached_file(ino)?;
            self.staging
                .start(ino, Some((&mut source, size)))
                .map_err(io_errno)?;
        } else {
            self.staging.start(ino, None).map_err(io_errno)?;
        }
        let mut state = self.state();
        if let Some(node) = state.node_mut(ino) {
            node.staged = true;
            node.hash = None;
            if !keep_content {
                node.size = 0;
            }
        }
        Ok(())
    }

    /// fsync and fsyncdir, the durability point: every change made through the mount before
    /// it (file contents still open included) is in the session when this returns.
    fn sync_all(&self) -> Fallible<()> {
        self.state().queue_all_written(&self.staging);
        self.flusher.flush_and_wait()
    }

    fn new_fh(&self, open: Open) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles().insert(fh, open);
        fh
    }

    fn do_lookup(&self, parent: u64, name: &OsStr) -> Fallible<Option<FileAttr>> {
        let name = name_str(name)?;
        let Some(ino) = self.lookup_child(parent, name)? else {
            return Ok(None);
        };
        let state = self.state();
        self.attr_locked(&state, ino).map(Some)
    }

    fn do_getattr(&self, ino: u64) -> Fallible<FileAttr> {
        let parent = {
            let state = self.state();
            let node = state.node(ino).ok_or(Errno::ENOENT)?;
            let parent = node.parent;
            let stale = node.linked && state.node(parent).is_some_and(|p| p.stale);
            if !stale {
                return self.attr_locked(&state, ino);
            }
            parent
        };
        self.ensure_listed(parent)?;
        let state = self.state();
        self.attr_locked(&state, ino)
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        _req: &Request,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Fallible<FileAttr> {
        let now = now_ns();
        self.check_owner_kept(ino, uid, gid)?;
        if let Some(size) = size {
            self.set_size(ino, size, now)?;
        }
        let mut state = self.state();
        let path = state.path(ino);
        let node = state.node_mut(ino).ok_or(Errno::ENOENT)?;
        let (set_mode, set_mtime) = set_attributes(node, mode, uid, gid, atime, mtime, now);
        let staged_file = node.kind == Kind::File && node.staged;
        if set_mode.is_some() || set_mtime.is_some() {
            state.touch(&[ino]);
            if let Some(path) = path.filter(|p| !p.is_empty()) {
                if staged_file && state.written.contains(&ino) && node_open(&state, ino) == 0 {
                    self.queue_content(&mut state, ino);
                }
                state.queue(Op::SetAttributes {
                    path,
                    mode: set_mode,
                    mtime_ns: set_mtime,
                });
            }
        }
        self.attr_locked(&state, ino)
    }

    /// Fails with EPERM when a setattr would change the owner of `ino`.
    fn check_owner_kept(&self, ino: u64, uid: Option<u32>, gid: Option<u32>) -> Fallible<()> {
        let state = self.state();
        let node = state.node(ino).ok_or(Errno::ENOENT)?;
        // Ownership is not in the model: keeping the owner is fine, changing it is EPERM
        // (also for root), as on a filesystem without owners.
        if uid.is_some_and(|u| u != node.uid) || gid.is_some_and(|g| g != node.gid) {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// Truncates or extends a file's staged content to `size` and queues the write (at its
    /// close when it is open).
    fn set_size(&self, ino: u64, size: u64, now: i64) -> Fallible<()> {
        if size > MAX_FILE_BYTES {
            return Err(Errno::EFBIG);
        }
        self.stage(ino, size > 0)?;
        self.staging.set_len(ino, size).map_err(io_errno)?;
        let mut state = self.state();
        if let Some(node) = state.node_mut(ino) {
            node.size = size;
            node.mtime_ns = now;
            node.ctime_ns = now;
        }
        state.touch(&[ino]);
        if state.node(ino).is_some_and(|n| n.open > 0) {
            state.written.insert(ino);
        } else {
            self.queue_content(&mut state, ino);
        }
        Ok(())
    }

    fn check_new_name(&self, parent: u64, name: &str) -> Fallible<()> {
        if self.lookup_child(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    fn do_create(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        target: Option<String>,
    ) -> Fallible<(u64, FileAttr)> {
        let name = name_str(name)?;
        self.check_new_name(parent, name)?;
        let now = now_ns();
        let mut node = self.new_node(req, name, kind, mode & 0o7777);
        if let Some(target) = &target {
            node.size = target.len() as u64;
            node.mode = 0o777;
        }
        node.target = target.clone();
        if kind == Kind::File {
            // The empty staging file exists at once: reads and writes find it.
            node.staged = true;
        }
        let mut state = self.state();
        let parent_path = state.path(parent).ok_or(Errno::ENOENT)?;
        let ino = state.insert(parent, node);
        if kind == Kind::File {
            drop(state);
            self.staging.start(ino, None).map_err(io_errno)?;
            state = self.state();
        }
        Self::touch_dir(&mut state, parent, now);
        state.touch(&[ino, parent]);
        let path = join(&parent_path, name);
        match kind {
            Kind::File => state.queue(Op::Create { ino, path }),
            Kind::Dir => {
                state.queue(Op::Mkdir { path: path.clone() });
                if mode & 0o7777 != 0o755 {
                    state.queue(Op::SetAttributes {
                        path,
                        mode: Some(mode & 0o7777),
                        mtime_ns: None,
                    });
                }
            }
            Kind::Symlink => state.queue(Op::Symlink {
                path,
                target: target.unwrap_or_default(),
                mtime_ns: now,
            }),
        }
        let attr = self.attr_locked(&state, ino)?;
        Ok((ino, attr))
    }

    fn do_remove(&self, parent: u64, name: &OsStr, dir: bool) -> Fallible<()> {
        let name = name_str(name)?;
        let ino = self.lookup_child(parent, name)?.ok_or(Errno::ENOENT)?;
        let is_dir = self.state().node(ino).is_some_and(|n| n.is_dir());
        if dir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !dir && is_dir {
            return Err(Errno::EISDIR);
        }
        if dir {
            self.ensure_listed(ino)?;
            if self
                .state()
                .node(ino)
                .and_then(|n| n.children.as_ref())
                .is_some_and(|c| !c.is_empty())
            {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let now = now_ns();
        let mut state = self.state();
        let path = state.path(ino).ok_or(Errno::ENOENT)?;
        state.unlink(ino);
        Self::touch_dir(&mut state, parent, now);
        if let Some(node) = state.node_mut(ino) {
            node.ctime_ns = now;
        }
        state.touch(&[parent]);
        state.queue(Op::Delete {
            path,
            recursive: false,
        });
        drop(state);
        self.remove_orphans();
        Ok(())
    }

    /// Forgets the staged content of nodes the state has forgotten.
    fn remove_orphans(&self) {
        let orphans = std::mem::take(&mut self.state().orphans);
        for ino in orphans {
            self.staging.remove(ino);
        }
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Fallible<()> {
        let name = name_str(name)?;
        let new_name = name_str(new_name)?;
        let ino = self.lookup_child(parent, name)?.ok_or(Errno::ENOENT)?;
        let target = self.lookup_child(new_parent, new_name)?;
        self.ensure_listed(new_parent)?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        if flags.contains(RenameFlags::RENAME_NOREPLACE) && target.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && target.is_none() {
            return Err(Errno::ENOENT);
        }
        if target == Some(ino) {
            return Ok(());
        }
        let mut state = self.state();
        let from = state.path(ino).ok_or(Errno::ENOENT)?;
        let to_parent = state.path(new_parent).ok_or(Errno::ENOENT)?;
        let to = join(&to_parent, new_name);
        let source_dir = state.node(ino).is_some_and(|n| n.is_dir());
        // A directory cannot move into itself or below.
        if source_dir && state.is_within(new_parent, ino) {
            return Err(Errno::EINVAL);
        }
        let now = now_ns();
        let rename = Rename {
            ino,
            parent,
            name,
            new_parent,
            new_name,
            from,
            to,
            now,
        };
        if exchange {
            let other = target.expect("checked above");
            Self::rename_exchange(&mut state, rename, other)?;
        } else {
            state = self.rename_plain(state, rename, source_dir, target)?;
        }
        Self::touch_dir(&mut state, parent, now);
        Self::touch_dir(&mut state, new_parent, now);
        state.touch(&[parent, new_parent, ino]);
        drop(state);
        self.remove_orphans();
        Ok(())
    }

    /// RENAME_EXCHANGE: the two nodes swap places; the session does it in three moves,
    /// through a temporary name.
    fn rename_exchange(state: &mut State, rename: Rename<'_>, other: u64) -> Fallible<()> {
        let other_dir = state.node(other).is_some_and(|n| n.is_dir());
        if other_dir && state.is_within(rename.parent, other) {
            return Err(Errno::EINVAL);
        }
        let (from, to) = (rename.from, rename.to);
        let temp = exchange_name(state, rename.new_parent, &to, rename.ino);
        state.queue(Op::Move {
            from: to.clone(),
            to: temp.clone(),
        });
        state.queue(Op::Move {
            from: from.clone(),
            to: to.clone(),
        });
        state.queue(Op::Move {
            from: temp,
            to: from,
        });
        // Swap the two nodes' places.
        let (a_parent, a_name) = (rename.parent, rename.name.to_string());
        let (b_parent, b_name) = (rename.new_parent, rename.new_name.to_string());
        if let Some(c) = state.node_mut(a_parent).and_then(|p| p.children.as_mut()) {
            c.insert(a_name.clone(), other);
        }
        if let Some(c) = state.node_mut(b_parent).and_then(|p| p.children.as_mut()) {
            c.insert(b_name.clone(), rename.ino);
        }
        if let Some(n) = state.node_mut(rename.ino) {
            n.parent = b_parent;
            n.name = b_name;
            n.ctime_ns = rename.now;
        }
        if let Some(n) = state.node_mut(other) {
            n.parent = a_parent;
            n.name = a_name;
            n.ctime_ns = rename.now;
        }
        Ok(())
    }

    /// A plain rename: the node moves to its new name, replacing the `target` there (a file,
    /// or an empty directory when the node is one). Listing the target directory unlocks the
    /// state, so the guard is handed in and back.
    fn rename_plain<'s>(
        &'s self,
        mut state: MutexGuard<'s, State>,
        rename: Rename<'_>,
        source_dir: bool,
        target: Option<u64>,
    ) -> Fallible<MutexGuard<'s, State>> {
        let (from, to, now) = (rename.from, rename.to, rename.now);
        if let Some(target) = target {
            let target_dir = state.node(target).is_some_and(|n| n.is_dir());
            match (source_dir, target_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => {
                    drop(state);
                    self.ensure_listed(target)?;
                    state = self.state();
                    if state
                        .node(target)
                        .and_then(|n| n.children.as_ref())
                        .is_some_and(|c| !c.is_empty())
                    {
                        return Err(Errno::ENOTEMPTY);
                    }
                    // The session moves onto files only: remove the empty directory first.
                    state.queue(Op::Delete {
                        path: to.clone(),
                        recursive: false,
                    });
                }
                (false, false) => {}
            }
            state.unlink(target);
            if let Some(node) = state.node_mut(target) {
                node.ctime_ns = now;
            }
        }
        state.queue(Op::Move {
            from,
            to: to.clone(),
        });
        state.relink(rename.ino, rename.new_parent, rename.new_name);
        if let Some(node) = state.node_mut(rename.ino) {
            node.ctime_ns = now;
        }
        Ok(state)
    }

    /// What close(2) of a file opened for writing needs: without `--sync-close` nothing
    /// waits for it (RELEASE, which the kernel sends without waiting, queues the content), so
    /// the kernel skips the FLUSH round trip. A read-only descriptor never needs it.
    fn close_flags(&self) -> FopenFlags {
        if self.sync_close {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        }
    }

    fn do_open(&self, ino: u64, flags: OpenFlags) -> Fallible<(u64, FopenFlags)> {
        let kind = self
            .state()
            .node(ino)
            .map(|n| n.kind)
            .ok_or(Errno::ENOENT)?;
        match kind {
            Kind::Dir => return Err(Errno::EISDIR),
            Kind::Symlink => return Err(Errno::ELOOP),
            Kind::File => {}
        }
        if flags.0 & libc::O_TRUNC != 0 && flags.acc_mode() != fuser::OpenAccMode::O_RDONLY {
            self.stage(ino, false)?;
            let now = now_ns();
            let mut state = self.state();
            if let Some(node) = state.node_mut(ino) {
                node.size = 0;
                node.mtime_ns = now;
                node.ctime_ns = now;
            }
            state.touch(&[ino]);
            state.written.insert(ino);
        }
        let keep_cache = match self.state().node_mut(ino) {
            Some(node) => {
                node.open += 1;
                !std::mem::take(&mut node.content_changed)
            }
            None => return Err(Errno::ENOENT),
        };
        let append = flags.0 & libc::O_APPEND != 0;
        let fh = self.new_fh(Open::File { ino, append });
        // Writes all come through here, so the kernel's page cache of a file stays valid
        // until the session changes it elsewhere (then it is dropped at this open).
        let mut open_flags = if keep_cache {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        if flags.acc_mode() == fuser::OpenAccMode::O_RDONLY || !self.sync_close {
            open_flags |= FopenFlags::FOPEN_NOFLUSH;
        }
        Ok((fh, open_flags))
    }

    fn do_read(&self, ino: u64, offset: u64, size: u32) -> Fallible<Vec<u8>> {
        let (staged, length) = {
            let state = self.state();
            let node = state.node(ino).ok_or(Errno::ENOENT)?;
            (node.staged, node.size)
        };
        if offset >= length {
            return Ok(Vec::new());
        }
        // The kernel asks for at most its max_read (1 MiB); the cap keeps the buffer bounded
        // whatever a request says.
        let want = u64::from(size).min(length - offset).min(MAX_READ_BYTES) as usize;
        let mut buffer = vec![0u8; want];
        let read = if staged {
            self.staging
                .read_at(ino, &mut buffer, offset)
                .map_err(io_errno)?
        } else {
            let file = self.cached_file(ino)?;
            read_at(&file, &mut buffer, offset)?
        };
        buffer.truncate(read);
        Ok(buffer)
    }

    fn do_write(&self, fh: u64, offset: u64, data: &[u8]) -> Fallible<u32> {
        let (ino, append) = match self.handles().get(&fh) {
            Some(Open::File { ino, append }) => (*ino, *append),
            _ => return Err(Errno::EBADF),
        };
        self.stage(ino, true)?;
        let offset = if append {
            self.state().node(ino).map(|n| n.size).unwrap_or(0)
        } else {
            offset
        };
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= MAX_FILE_BYTES)
            .ok_or(Errno::EFBIG)?;
        self.staging.write_at(ino, data, offset).map_err(io_errno)?;
        let now = now_ns();
        let mut state = self.state();
        if let Some(node) = state.node_mut(ino) {
            node.size = node.size.max(end);
            node.mtime_ns = now;
            node.ctime_ns = now;
        }
        state.touch(&[ino]);
        state.written.insert(ino);
        state.pending_bytes += data.len() as u64;
        let early = state.pending_bytes >= EARLY_FLUSH_BYTES;
        if early {
            // Much staged content: send it now rather than hold it all locally.
            state.queue_all_written(&self.staging);
        }
        drop(state);
        if early {
            self.flusher.nudge();
        }
        Ok(data.len() as u32)
    }

    fn do_release(&self, fh: u64) {
        let Some(Open::File { ino, .. }) = self.handles().remove(&fh) else {
            return;
        };
        let mut state = self.state();
        if state.written.contains(&ino) {
            self.queue_content(&mut state, ino);
        }
        let mut gone = false;
        let mut last = false;
        if let Some(node) = state.node_mut(ino) {
            node.open = node.open.saturating_sub(1);
            last = node.open == 0;
            gone = last && !node.linked;
        }
        if last && !gone {
            self.staging.close(ino);
        }
        if gone {
            // The last handle of an unlinked file: its staged content is no longer needed
            // (a write still queued for it sends an empty file, which its delete removes).
            state.nodes.remove(&ino);
            state.written.remove(&ino);
            drop(state);
            self.staging.remove(ino);
        }
    }

    fn do_readlink(&self, ino: u64) -> Fallible<Vec<u8>> {
        if let Some(target) = self.state().node(ino).and_then(|n| n.target.clone()) {
            return Ok(target.into_bytes());
        }
        let file = self.cached_file(ino)?;
        let mut target = Vec::new();
        use std::io::Read;
        file.take(MAX_TARGET_BYTES as u64)
            .read_to_end(&mut target)
            .map_err(io_errno)?;
        if let Ok(text) = String::from_utf8(target.clone()) {
            if let Some(node) = self.state().node_mut(ino) {
                node.target = Some(text);
            }
        }
        Ok(target)
    }

    fn do_opendir(&self, ino: u64) -> Fallible<u64> {
        self.ensure_listed(ino)?;
        let state = self.state();
        let node = state.node(ino).ok_or(Errno::ENOENT)?;
        let mut entries = vec![
            (ino, FileType::Directory, ".".to_string()),
            (node.parent, FileType::Directory, "..".to_string()),
        ];
        for (name, child) in node.children.iter().flatten() {
            let kind = match state.node(*child).map(|n| n.kind) {
                Some(Kind::Dir) => FileType::Directory,
                Some(Kind::Symlink) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            entries.push((*child, kind, name.clone()));
        }
        drop(state);
        Ok(self.new_fh(Open::Dir { entries }))
    }
}

/// Sets the attributes a setattr gives on `node` (times, owner, mode; a symlink keeps its
/// mode), moving its ctime; what the session must learn: the mode when it changed, the
/// mtime when one was given.
fn set_attributes(
    node: &mut Node,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
    now: i64,
) -> (Option<u32>, Option<i64>) {
    let mut set_mode = None;
    let mut set_mtime = None;
    if let Some(mode) = mode {
        let mode = mode & 0o7777;
        if node.kind != Kind::Symlink && mode != node.mode {
            node.mode = mode;
            set_mode = Some(mode);
        }
        node.ctime_ns = now;
    }
    if let Some(uid) = uid {
        node.uid = uid;
        node.ctime_ns = now;
    }
    if let Some(gid) = gid {
        node.gid = gid;
        node.ctime_ns = now;
    }
    if let Some(atime) = atime {
        node.atime_ns = ns_of(atime);
        node.ctime_ns = now;
    }
    if let Some(mtime) = mtime {
        let mtime = ns_of(mtime);
        node.mtime_ns = mtime;
        node.ctime_ns = now;
        set_mtime = Some(mtime);
    }
    (set_mode, set_mtime)
}

fn node_open(state: &State, ino: u64) -> u32 {
    state.node(ino).map(|n| n.open).unwrap_or(0)
}

fn read_at(file: &File, buffer: &mut [u8], offset: u64) -> Fallible<usize> {
    super::staging::read_fully_at(file, buffer, offset).map_err(io_errno)
}

fn io_errno(error: std::io::Error) -> Errno {
    match error.raw_os_error() {
        Some(code) => Errno::from_i32(code),
        None => Errno::EIO,
    }
}

fn reply_entry(reply: ReplyEntry, result: Fallible<Option<FileAttr>>) {
    match result {
        Ok(Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
        // A negative entry (node 0 with a TTL; ENOENT would not be cached): the kernel
        // remembers the name is absent for the TTL, so the many stats of absent files that
        // git, make and compilers do cost one round trip per name and second.
        Ok(None) => reply.entry(&TTL, &absent_attr(), Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// The attributes of a negative entry: only its node number (0) means anything.
fn absent_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn reply_empty(reply: ReplyEmpty, result: Fallible<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// The FUSE session's handle on the mount (the flusher and the event follower hold others).
pub struct Mounted(pub Arc<AetherFs>);

impl std::ops::Deref for Mounted {
    type Target = AetherFs;

    fn deref(&self) -> &AetherFs {
        &self.0
    }
}

impl Filesystem for Mounted {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.do_lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.do_getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(req, ino.0, mode, uid, gid, size, atime, mtime) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.do_readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files exist in the model.
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            return reply.error(Errno::EPERM);
        }
        let result = self
            .do_create(req, parent.0, name, Kind::File, mode & !umask, None)
            .map(|(_, attr)| Some(attr));
        reply_entry(reply, result);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self
            .do_create(req, parent.0, name, Kind::Dir, mode & !umask, None)
            .map(|(_, attr)| Some(attr));
        reply_entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_remove(parent.0, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let target = target.to_str().ok_or(Errno::EINVAL)?;
            if target.len() > MAX_TARGET_BYTES {
                return Err(Errno::ENAMETOOLONG);
            }
            if target.is_empty() {
                return Err(Errno::ENOENT);
            }
            self.do_create(
                req,
                parent.0,
                link_name,
                Kind::Symlink,
                0o777,
                Some(target.to_string()),
            )
            .map(|(_, attr)| Some(attr))
        })();
        reply_entry(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.do_rename(parent.0, name, newparent.0, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // The model has no hard links (link(2): EPERM when the filesystem does not support
        // them).
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino.0, flags) {
            Ok((fh, open_flags)) => reply.opened(FileHandle(fh), open_flags),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self
            .do_create(req, parent.0, name, Kind::File, mode & !umask, None)
            .map(|(ino, attr)| {
                if let Some(node) = self.state().node_mut(ino) {
                    node.open += 1;
                }
                let append = flags & libc::O_APPEND != 0;
                (self.new_fh(Open::File { ino, append }), attr)
            });
        match result {
            Ok((fh, attr)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE | self.close_flags(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(fh.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): the file's content so far goes in the next batch.
        {
            let mut state = self.state();
            if state.written.contains(&ino.0) {
                self.queue_content(&mut state, ino.0);
            }
        }
        let result = if self.sync_close {
            self.flusher.flush_and_wait()
        } else {
            Ok(())
        };
        reply_empty(reply, result);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.sync_all());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let handles = self.handles();
        let Some(Open::Dir { entries }) = handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (index, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries: Vec<(u64, String)> = {
            let handles = self.handles();
            let Some(Open::Dir { entries }) = handles.get(&fh.0) else {
                return reply.error(Errno::EBADF);
            };
            entries
                .iter()
                .map(|(ino, _, name)| (*ino, name.clone()))
                .collect()
        };
        let state = self.state();
        for (index, (ino, name)) in entries.iter().enumerate().skip(offset as usize) {
            let Ok(attr) = self.attr_locked(&state, *ino) else {
                continue;
            };
            if reply.add(
                INodeNo(*ino),
                index as u64 + 1,
                name,
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.sync_all());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The session has no fixed capacity; report a large, stable one so tools proceed.
        let blocks = 1u64 << 32;
        reply.statfs(
            blocks,
            blocks,
            blocks,
            1 << 32,
            1 << 32,
            4096,
            MAX_NAME_BYTES as u32,
            4096,
        );
    }
}
