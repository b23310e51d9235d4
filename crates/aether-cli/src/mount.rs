//! `aether mount SESSION DIR`: the session's head as a read-write directory, through FUSE.
//!
//! A blocking [`fuser::Filesystem`] that calls the SDK on the tokio runtime. Directory
//! listings (ListTree) are cached per directory for a short time and dropped on every change
//! made through the mount; reads are ReadFile ranges. Writes are buffered per open file handle
//! and sent as one WriteFile on flush, fsync or release, so write-temp-then-rename saves become
//! one write and one MovePath. Inode numbers name paths for the life of the mount. chmod of a
//! file rewrites it with the new mode; directories' modes, owners and times are not stored
//! (times shown are the mount's start). Only regular files and directories exist: symlinks,
//! hard links and device nodes are refused.
//!
//! The mount ends cleanly on SIGINT or SIGTERM (the handler unmounts) and when someone runs
//! `fusermount3 -u DIR` (the session loop returns); either way the command exits 0.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use aether_client::proto as pb;
use aether_client::{Rev, SessionHandle};
use bytes::Bytes;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::cli::MountArgs;
use crate::{Context, Failure};

/// How long the kernel and this process trust a listing or an attribute.
const TTL: Duration = Duration::from_secs(1);

/// Runs `aether mount`: mounts, serves until unmounted, unmounts on SIGINT/SIGTERM.
pub async fn run(context: &Context, args: MountArgs) -> Result<(), Failure> {
    if !Path::new("/dev/fuse").exists() {
        return Err(Failure::Other(
            "/dev/fuse is missing: load the FUSE module (`modprobe fuse`), or run the container \
             with `--device /dev/fuse --cap-add SYS_ADMIN`, and install fusermount3 \
             (`apt-get install -y fuse3`)"
                .to_string(),
        ));
    }
    let meta = std::fs::metadata(&args.dir).map_err(|e| Failure::local(&args.dir, e))?;
    if !meta.is_dir() {
        return Err(Failure::Usage(format!(
            "{} is not a directory",
            args.dir.display()
        )));
    }
    let session = context.client.session(args.session.clone());
    // Fails early (exit 3) when the session does not exist.
    session.stat("", &Rev::Head).await?;

    let fs = AetherFs::new(session, Handle::current(), meta.uid(), meta.gid());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("aether:{}", args.session)),
        MountOption::Subtype("aether".to_string()),
        MountOption::RW,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    let dir = args.dir.clone();
    let mut fuse = tokio::task::spawn_blocking(move || fuser::Session::new(fs, &dir, &config))
        .await
        .map_err(|e| Failure::Other(format!("mount task failed: {e}")))?
        .map_err(|e| Failure::Other(format!("cannot mount {}: {e}", args.dir.display())))?;
    let mut unmounter = fuse.unmount_callable();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("aether-fuse".to_string())
        .spawn(move || {
            let _ = done_tx.send(fuse.run());
        })
        .map_err(|e| Failure::Other(format!("cannot start the FUSE thread: {e}")))?;
    eprintln!(
        "aether: mounted session {} at {} (Ctrl-C or `fusermount3 -u {}` to unmount)",
        args.session,
        args.dir.display(),
        args.dir.display()
    );

    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| Failure::Other(format!("cannot handle SIGINT: {e}")))?;
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| Failure::Other(format!("cannot handle SIGTERM: {e}")))?;
    let mut done_rx = done_rx;
    let result = tokio::select! {
        result = &mut done_rx => result,
        _ = interrupt.recv() => {
            unmount(&mut unmounter, &args.dir).await?;
            done_rx.await
        }
        _ = terminate.recv() => {
            unmount(&mut unmounter, &args.dir).await?;
            done_rx.await
        }
    };
    match result {
        Ok(Ok(())) => {
            eprintln!("aether: unmounted {}", args.dir.display());
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::Other(format!(
            "the FUSE session of {} ended with an error: {e}",
            args.dir.display()
        ))),
        Err(_) => Err(Failure::Other(
            "the FUSE thread ended abnormally".to_string(),
        )),
    }
}

async fn unmount(unmounter: &mut fuser::SessionUnmounter, dir: &Path) -> Result<(), Failure> {
    // The unmount waits for the kernel, which may be waiting for this process: off the runtime.
    let Err(error) = tokio::task::block_in_place(|| unmounter.unmount()) else {
        return Ok(());
    };
    // Busy (a shell has its cwd inside). The unmounter is spent after a failure, so detach
    // the mount instead (lazy unmount): the session loop ends at once and the kernel finishes
    // when the last user leaves.
    eprintln!(
        "aether: {error}; detaching {} (lazy unmount)",
        dir.display()
    );
    let status = tokio::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .status()
        .await;
    match status {
        Ok(status) if status.success() => Ok(()),
        _ => Err(Failure::Other(format!(
            "cannot unmount {}: {error}",
            dir.display()
        ))),
    }
}

/// A path's kind, size and mode.
#[derive(Clone, Copy, Debug)]
struct Meta {
    dir: bool,
    size: u64,
    mode: u32,
}

impl Meta {
    fn of(entry: &pb::Entry) -> Meta {
        let dir = entry.kind() == pb::EntryKind::Directory;
        let mode = if entry.mode == 0 {
            if dir {
                0o755
            } else {
                0o644
            }
        } else {
            entry.mode & 0o7777
        };
        Meta {
            dir,
            size: if dir { 0 } else { entry.size },
            mode,
        }
    }
}

/// An open file: writes are kept here until flushed.
struct OpenFile {
    ino: u64,
    /// The whole content once written to (loaded on first write), else None.
    data: Option<Vec<u8>>,
    dirty: bool,
    mode: u32,
}

#[derive(Default)]
struct State {
    paths: HashMap<u64, String>,
    inodes: HashMap<String, u64>,
    next_ino: u64,
    dirs: HashMap<String, (Instant, Arc<Vec<pb::Entry>>)>,
    files: HashMap<u64, OpenFile>,
    next_fh: u64,
}

impl State {
    fn ino(&mut self, path: &str) -> u64 {
        if let Some(ino) = self.inodes.get(path) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(path.to_string(), ino);
        self.paths.insert(ino, path.to_string());
        ino
    }

    fn forget_path(&mut self, path: &str) {
        if let Some(ino) = self.inodes.remove(path) {
            self.paths.remove(&ino);
        }
    }

    /// Renames `from` (and everything below it) to `to` in the inode table.
    fn rename(&mut self, from: &str, to: &str) {
        self.forget_path(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .inodes
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            self.inodes.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            self.inodes.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
        self.dirs.clear();
    }

    /// The size of the unflushed content of `ino`, if an open handle holds some.
    fn pending_size(&self, ino: u64) -> Option<u64> {
        self.files
            .values()
            .filter(|f| f.ino == ino)
            .find_map(|f| f.data.as_ref().map(|d| d.len() as u64))
    }
}

struct AetherFs {
    session: SessionHandle,
    runtime: Handle,
    uid: u32,
    gid: u32,
    started: SystemTime,
    state: Mutex<State>,
}

fn join(parent: &str, name: &OsStr) -> Result<String, Errno> {
    let name = name.to_str().ok_or(Errno::EINVAL)?;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    Ok(if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    })
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn name_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(_, n)| n).unwrap_or(path)
}

/// The errno for an SDK error.
fn errno(error: &aether_client::Error) -> Errno {
    use tonic::Code;
    let message = error.to_string();
    match error.code() {
        Code::NotFound => Errno::ENOENT,
        Code::AlreadyExists => Errno::EEXIST,
        Code::InvalidArgument | Code::OutOfRange => Errno::EINVAL,
        Code::PermissionDenied | Code::Unauthenticated => Errno::EACCES,
        Code::ResourceExhausted => Errno::ENOSPC,
        Code::FailedPrecondition => {
            if message.contains("not empty") {
                Errno::ENOTEMPTY
            } else if message.contains("not a directory") {
                Errno::ENOTDIR
            } else if message.contains("is a directory") || message.contains("one side is a") {
                Errno::EISDIR
            } else if message.contains("read-only")
                || message.contains("finalized")
                || message.contains("closed")
            {
                Errno::EROFS
            } else {
                Errno::EPERM
            }
        }
        _ => Errno::EIO,
    }
}

type Fallible<T> = Result<T, Errno>;

impl AetherFs {
    fn new(session: SessionHandle, runtime: Handle, uid: u32, gid: u32) -> AetherFs {
        let mut state = State {
            next_ino: 2,
            next_fh: 1,
            ..State::default()
        };
        state.inodes.insert(String::new(), INodeNo::ROOT.0);
        state.paths.insert(INodeNo::ROOT.0, String::new());
        AetherFs {
            session,
            runtime,
            uid,
            gid,
            started: SystemTime::now(),
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, ino: INodeNo) -> Fallible<String> {
        self.state().paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn call<T>(
        &self,
        future: impl std::future::Future<Output = aether_client::Result<T>>,
    ) -> Fallible<T> {
        self.runtime.block_on(future).map_err(|e| errno(&e))
    }

    fn attr(&self, ino: u64, meta: Meta) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: meta.size,
            blocks: meta.size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind: if meta.dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: (meta.mode & 0o7777) as u16,
            nlink: if meta.dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// A directory's entries, from the cache when fresh.
    fn listing(&self, dir: &str) -> Fallible<Arc<Vec<pb::Entry>>> {
        if let Some((at, entries)) = self.state().dirs.get(dir) {
            if at.elapsed() < TTL {
                return Ok(entries.clone());
            }
        }
        let entries = Arc::new(self.call(self.session.list(dir, false, &Rev::Head))?);
        self.state()
            .dirs
            .insert(dir.to_string(), (Instant::now(), entries.clone()));
        Ok(entries)
    }

    fn invalidate(&self, path: &str) {
        let mut state = self.state();
        state.dirs.remove(parent_of(path));
        state.dirs.remove(path);
    }

    /// The metadata of `path`, with unflushed writes counted.
    fn meta(&self, path: &str) -> Fallible<Meta> {
        if path.is_empty() {
            return Ok(Meta {
                dir: true,
                size: 0,
                mode: 0o755,
            });
        }
        let listing = self.listing(parent_of(path))?;
        let name = name_of(path);
        let mut meta = listing
            .iter()
            .find(|e| name_of(&e.path) == name)
            .map(Meta::of)
            .ok_or(Errno::ENOENT)?;
        let state = self.state();
        if let Some(size) = state
            .inodes
            .get(path)
            .and_then(|ino| state.pending_size(*ino))
        {
            meta.size = size;
        }
        Ok(meta)
    }

    fn entry_of(&self, path: &str) -> Fallible<FileAttr> {
        let meta = self.meta(path)?;
        let ino = self.state().ino(path);
        Ok(self.attr(ino, meta))
    }

    /// Loads the content of an open file into its buffer, if not yet there.
    fn load(&self, fh: u64) -> Fallible<()> {
        let (ino, loaded) = {
            let state = self.state();
            let file = state.files.get(&fh).ok_or(Errno::EBADF)?;
            (file.ino, file.data.is_some())
        };
        if loaded {
            return Ok(());
        }
        let path = self.path(INodeNo(ino))?;
        let data = match self.runtime.block_on(self.session.read(&path, &Rev::Head)) {
            Ok(data) => data,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(errno(&e)),
        };
        let mut state = self.state();
        let file = state.files.get_mut(&fh).ok_or(Errno::EBADF)?;
        if file.data.is_none() {
            file.data = Some(data);
        }
        Ok(())
    }

    /// Sends the buffered content of an open file as one WriteFile.
    fn flush_handle(&self, fh: u64) -> Fallible<()> {
        let (ino, data, mode) = {
            let state = self.state();
            let Some(file) = state.files.get(&fh) else {
                return Ok(());
            };
            if !file.dirty {
                return Ok(());
            }
            (file.ino, file.data.clone().unwrap_or_default(), file.mode)
        };
        let Ok(path) = self.path(INodeNo(ino)) else {
            // Unlinked while open: nothing to write.
            return Ok(());
        };
        self.call(self.session.write_file(&path, Bytes::from(data), mode))?;
        if let Some(file) = self.state().files.get_mut(&fh) {
            file.dirty = false;
        }
        self.invalidate(&path);
        Ok(())
    }

    fn open_handle(&self, ino: u64, mode: u32, data: Option<Vec<u8>>, dirty: bool) -> u64 {
        let mut state = self.state();
        let fh = state.next_fh;
        state.next_fh += 1;
        state.files.insert(
            fh,
            OpenFile {
                ino,
                data,
                dirty,
                mode,
            },
        );
        fh
    }

    fn read_range(&self, ino: INodeNo, fh: u64, offset: u64, size: u32) -> Fallible<Vec<u8>> {
        {
            let state = self.state();
            let buffered = state
                .files
                .get(&fh)
                .and_then(|f| f.data.as_ref())
                .or_else(|| {
                    state
                        .files
                        .values()
                        .filter(|f| f.ino == ino.0)
                        .find_map(|f| f.data.as_ref())
                });
            if let Some(data) = buffered {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                return Ok(data[start..end].to_vec());
            }
        }
        let path = self.path(ino)?;
        // ReadFile refuses a range past the end: clamp to the size, from the cached listing
        // first and, if that was stale, from a fresh Stat.
        let mut known = self.meta(&path)?.size;
        for attempt in 0..2 {
            if offset >= known {
                return Ok(Vec::new());
            }
            let length = u64::from(size).min(known - offset);
            match self.read_remote(&path, offset, length) {
                Err(e) if e.code() == tonic::Code::OutOfRange && attempt == 0 => {
                    self.invalidate(&path);
                    known = self.call(self.session.stat(&path, &Rev::Head))?.size;
                }
                other => return other.map_err(|e| errno(&e)),
            }
        }
        Err(Errno::EIO)
    }

    fn read_remote(&self, path: &str, offset: u64, length: u64) -> aether_client::Result<Vec<u8>> {
        self.runtime.block_on(async {
            let mut stream = self
                .session
                .open_read(path, &Rev::Head, offset, length)
                .await?;
            let mut out = Vec::with_capacity(length as usize);
            while let Some(message) = stream.message().await? {
                out.extend_from_slice(&message.data);
            }
            Ok(out)
        })
    }

    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        size: Option<u64>,
        fh: Option<FileHandle>,
    ) -> Fallible<FileAttr> {
        let path = self.path(ino)?;
        let mut meta = self.meta(&path)?;
        if let Some(size) = size {
            if meta.dir {
                return Err(Errno::EISDIR);
            }
            let handle = fh
                .map(|f| f.0)
                .filter(|f| self.state().files.contains_key(f));
            if let Some(fh) = handle {
                self.load(fh)?;
                let mut state = self.state();
                let file = state.files.get_mut(&fh).ok_or(Errno::EBADF)?;
                if let Some(data) = file.data.as_mut() {
                    data.resize(size as usize, 0);
                }
                file.dirty = true;
            } else {
                let mut data = if size == 0 {
                    Vec::new()
                } else {
                    self.call(self.session.read(&path, &Rev::Head))?
                };
                data.resize(size as usize, 0);
                self.call(self.session.write_file(&path, Bytes::from(data), meta.mode))?;
                // Open handles that already hold the content see the new size too.
                let mut state = self.state();
                for file in state.files.values_mut().filter(|f| f.ino == ino.0) {
                    if let Some(data) = file.data.as_mut() {
                        data.resize(size as usize, 0);
                    }
                }
                drop(state);
                self.invalidate(&path);
            }
            meta.size = size;
        }
        if let Some(mode) = mode.map(|m| m & 0o7777).filter(|m| *m != meta.mode) {
            if !meta.dir {
                // Open handles write the new mode when they flush; with none holding unflushed
                // writes the file is rewritten now (the API has no mode-only change).
                let pending = {
                    let mut state = self.state();
                    let mut pending = false;
                    for file in state.files.values_mut().filter(|f| f.ino == ino.0) {
                        file.mode = mode;
                        pending |= file.dirty;
                    }
                    pending
                };
                if !pending {
                    let data = self.call(self.session.read(&path, &Rev::Head))?;
                    self.call(self.session.write_file(&path, Bytes::from(data), mode))?;
                    self.invalidate(&path);
                }
            }
            meta.mode = mode;
        }
        Ok(self.attr(ino.0, meta))
    }

    fn do_rename(&self, from: &str, to: &str, flags: RenameFlags) -> Fallible<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return Err(Errno::EINVAL);
        }
        let overwrite = !flags.contains(RenameFlags::RENAME_NOREPLACE);
        // Pending writes of the source go first, so the moved file has them.
        let source_ino = self.state().inodes.get(from).copied();
        if let Some(ino) = source_ino {
            let handles: Vec<u64> = self
                .state()
                .files
                .iter()
                .filter(|(_, f)| f.ino == ino && f.dirty)
                .map(|(fh, _)| *fh)
                .collect();
            for fh in handles {
                self.flush_handle(fh)?;
            }
        }
        if overwrite {
            // POSIX lets a directory replace an empty directory.
            if let (Ok(source), Ok(target)) = (self.meta(from), self.meta(to)) {
                if source.dir && target.dir {
                    if !self.listing(to)?.is_empty() {
                        return Err(Errno::ENOTEMPTY);
                    }
                    self.call(self.session.delete(to, false))?;
                } else if source.dir != target.dir {
                    return Err(if target.dir {
                        Errno::EISDIR
                    } else {
                        Errno::ENOTDIR
                    });
                }
            }
        }
        self.call(self.session.move_path(from, to, overwrite))?;
        self.state().rename(from, to);
        Ok(())
    }
}

impl Filesystem for AetherFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self
            .path(parent)
            .and_then(|p| join(&p, name))
            .and_then(|path| self.entry_of(&path));
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self
            .path(ino)
            .and_then(|path| self.meta(&path))
            .map(|meta| self.attr(ino.0, meta));
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, size, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self
            .path(parent)
            .and_then(|p| join(&p, name))
            .and_then(|path| {
                self.call(self.session.mkdir(&path, false))?;
                self.invalidate(&path);
                self.entry_of(&path)
            });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self
            .path(parent)
            .and_then(|p| join(&p, name))
            .and_then(|path| {
                if self.meta(&path)?.dir {
                    return Err(Errno::EISDIR);
                }
                self.call(self.session.delete(&path, false))?;
                self.invalidate(&path);
                self.state().forget_path(&path);
                Ok(())
            });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self
            .path(parent)
            .and_then(|p| join(&p, name))
            .and_then(|path| {
                if !self.meta(&path)?.dir {
                    return Err(Errno::ENOTDIR);
                }
                self.call(self.session.delete(&path, false))?;
                self.invalidate(&path);
                self.state().forget_path(&path);
                Ok(())
            });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        let result = (|| {
            let from = join(&self.path(parent)?, name)?;
            let to = join(&self.path(newparent)?, newname)?;
            self.do_rename(&from, &to, flags)
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.path(ino).and_then(|path| self.meta(&path));
        match result {
            Ok(meta) if meta.dir => reply.error(Errno::EISDIR),
            Ok(meta) => {
                let fh = self.open_handle(ino.0, meta.mode, None, false);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self
            .path(parent)
            .and_then(|p| join(&p, name))
            .and_then(|path| {
                let mode = mode & !umask & 0o7777;
                // The empty file exists at once, so lookups and renames find it before the
                // first flush.
                self.call(self.session.write_file(&path, Bytes::new(), mode))?;
                self.invalidate(&path);
                let ino = self.state().ino(&path);
                let fh = self.open_handle(ino, mode, Some(Vec::new()), false);
                let meta = Meta {
                    dir: false,
                    size: 0,
                    mode,
                };
                Ok((self.attr(ino, meta), fh))
            });
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_range(ino, fh.0, offset, size) {
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
        let result = self.load(fh.0).and_then(|()| {
            let mut state = self.state();
            let file = state.files.get_mut(&fh.0).ok_or(Errno::EBADF)?;
            let buffer = file.data.get_or_insert_with(Vec::new);
            let start = offset as usize;
            let end = start + data.len();
            if buffer.len() < end {
                buffer.resize(end, 0);
            }
            buffer[start..end].copy_from_slice(data);
            file.dirty = true;
            Ok(data.len() as u32)
        });
        match result {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.flush_handle(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        let result = self.flush_handle(fh.0);
        self.state().files.remove(&fh.0);
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.flush_handle(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.path(ino).and_then(|path| {
            let listing = self.listing(&path)?;
            let parent_ino = if path.is_empty() {
                INodeNo::ROOT.0
            } else {
                self.state().ino(parent_of(&path))
            };
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".to_string()),
                (parent_ino, FileType::Directory, "..".to_string()),
            ];
            let mut state = self.state();
            for entry in listing.iter() {
                let kind = if Meta::of(entry).dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((
                    state.ino(&entry.path),
                    kind,
                    name_of(&entry.path).to_string(),
                ));
            }
            Ok(entries)
        });
        match result {
            Ok(entries) => {
                for (index, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), index as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}
