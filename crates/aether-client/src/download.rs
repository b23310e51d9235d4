//! Downloads of files, symbolic links and whole trees to the local filesystem, with their
//! modes and modification times.
//!
//! A tree is listed once (every page from one root) and its files are then read at the same
//! revision, a few at a time. The order is: directories; files (content, then mode and time);
//! symlinks; then the modes and times of directories, deepest first, so that nothing written
//! later moves a time already set and a read-only directory becomes so only once it is full.
//!
//! What a session names is data, never a way out of the target directory:
//! - listed paths must be plain relative names below the downloaded directory;
//! - every local path is resolved from the open target directory one component at a time with
//!   `openat(O_NOFOLLOW)`, so no symbolic link inside it is ever followed, whether it was there
//!   before or this download made it; one standing where a directory or file is to be written
//!   is refused ([`Error::UnsafeDestination`]) before anything is written through it;
//! - a file is written as a new inode (one already there is removed first), so nothing is
//!   written through a hard link either;
//! - links are made after every file and directory, and their times are set without following
//!   them. A link's target (absolute, or climbing with `..`) is stored as given: it is content.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_proto as pb;
use futures::{StreamExt, TryStreamExt};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::revision::Rev;
use crate::session::SessionHandle;

/// Files (and symlink targets) read at once.
const CONCURRENCY: usize = 4;
/// Longest symlink target the kernel takes (PATH_MAX less the NUL).
const MAX_SYMLINK_TARGET_BYTES: usize = 4095;

/// What a download did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownloadReport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of the files.
    pub bytes: u64,
}

/// `path` below `remote` (a session directory; empty for the root) as a relative local path,
/// refusing anything that could leave the target directory.
fn relative(remote: &str, path: &str) -> Result<PathBuf> {
    let rest = if remote.is_empty() {
        path
    } else {
        path.strip_prefix(remote)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the server listed {path:?}, which is not below {remote:?}"
                ))
            })?
    };
    let relative = PathBuf::from(rest);
    if rest.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Error::InvalidArgument(format!(
            "refusing to write the listed path {path:?} outside the target directory"
        )));
    }
    Ok(relative)
}

fn is_kind(entry: &pb::Entry, kind: pb::EntryKind) -> bool {
    entry.kind == kind as i32
}

/// A time in nanoseconds since the Unix epoch; None for 0, which the service stores for
/// "unknown" (trees written before times were kept).
fn system_time(mtime_ns: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_nanos(mtime_ns.unsigned_abs());
    match mtime_ns {
        0 => None,
        n if n > 0 => UNIX_EPOCH.checked_add(magnitude),
        _ => UNIX_EPOCH.checked_sub(magnitude),
    }
}

fn timespec(mtime_ns: i64) -> TimeSpec {
    TimeSpec::new(
        mtime_ns.div_euclid(1_000_000_000),
        mtime_ns.rem_euclid(1_000_000_000),
    )
}

/// Sets the mode (when not 0) and modification time (when known) of an open file or directory.
fn set_attributes(file: &std::fs::File, path: &Path, mode: u32, mtime_ns: i64) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if mode != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| Error::io(path, e))?;
    }
    if let Some(time) = system_time(mtime_ns) {
        file.set_modified(time).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Checks a symlink target from the session before it is handed to symlink(2).
fn check_target(path: &str, target: &[u8]) -> Result<()> {
    if target.is_empty() || target.len() > MAX_SYMLINK_TARGET_BYTES || target.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "the symlink {path:?} has a target of {} bytes that no link can hold (empty, longer than {MAX_SYMLINK_TARGET_BYTES}, or with NUL)",
            target.len()
        )));
    }
    Ok(())
}

/// The local directory a download writes below, held open: every path under it is resolved
/// from this descriptor without following symbolic links (see the module docs).
struct LocalRoot {
    fd: OwnedFd,
    path: PathBuf,
}

impl LocalRoot {
    /// Creates `path` if missing (its own components are the caller's to choose, so they are
    /// followed) and opens it.
    fn create(path: &Path) -> Result<LocalRoot> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let fd = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = fd.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        Ok(LocalRoot {
            fd: fd.into(),
            path: path.to_path_buf(),
        })
    }

    fn local(&self, relative: &Path) -> PathBuf {
        self.path.join(relative)
    }

    /// The directory at `relative` (empty for the root itself), opened; with `create`,
    /// missing directories are made on the way. A component that is a symlink or not a
    /// directory is refused.
    fn dir(&self, relative: &Path, create: bool) -> Result<OwnedFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut dir = self.fd.try_clone().map_err(|e| Error::io(&self.path, e))?;
        let mut walked = PathBuf::new();
        for component in relative.components() {
            let Component::Normal(name) = component else {
                return Err(Error::InvalidArgument(format!(
                    "refusing the local path {} below {}: only plain names may follow it",
                    relative.display(),
                    self.path.display()
                )));
            };
            walked.push(name);
            let opened = match openat(&dir, name, flags, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&dir, name, Mode::from_bits_truncate(0o777)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(Error::io(self.local(&walked), e.into())),
                    }
                    openat(&dir, name, flags, Mode::empty())
                }
                other => other,
            };
            dir = match opened {
                Ok(next) => next,
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(self.refusal(&dir, name, &walked, "a directory"))
                }
                Err(e) => return Err(Error::io(self.local(&walked), e.into())),
            };
        }
        Ok(dir)
    }

    /// Why `name` in `dir` cannot be used as `wanted`.
    fn refusal(&self, dir: &OwnedFd, name: &OsStr, walked: &Path, wanted: &str) -> Error {
        let path = self.local(walked);
        let reason = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat)
                if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK =>
            {
                let target = nix::fcntl::readlinkat(dir, name)
                    .map(|t| format!(" (to {})", t.to_string_lossy()))
                    .unwrap_or_default();
                format!(
                    "it is a symbolic link{target} inside the target directory {}, and aether never writes through links there; remove it, or download into an empty directory",
                    self.path.display()
                )
            }
            _ => format!(
                "it exists and is not {wanted}; remove it, or download into an empty directory"
            ),
        };
        Error::UnsafeDestination { path, reason }
    }

    /// The parent directory of `relative` (created if missing) and the last name.
    fn parent<'a>(&self, relative: &'a Path) -> Result<(OwnedFd, &'a OsStr)> {
        let name = relative.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("{} has no file name", relative.display()))
        })?;
        let parent = relative.parent().unwrap_or(Path::new(""));
        Ok((self.dir(parent, true)?, name))
    }

    /// Creates the file at `relative` for writing, as a new inode: a regular file already
    /// there is replaced (removed first, so neither a read-only file nor another hard link to
    /// it stands in the way or is written through); true when the result is a regular file.
    /// An existing symlink there is refused, not followed; so is anything else unless
    /// `special` (a device the caller named, such as `/dev/null`, written to as it is).
    fn create_file(&self, relative: &Path, special: bool) -> Result<(std::fs::File, bool)> {
        let (dir, name) = self.parent(relative)?;
        let local = || self.local(relative);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        // Bounded: one replacement, then the name must be free (unless another process keeps
        // recreating it, which is reported).
        for _ in 0..2 {
            match openat(&dir, name, flags, Mode::from_bits_truncate(0o666)) {
                Ok(fd) => return Ok((std::fs::File::from(fd), true)),
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(Error::io(local(), e.into())),
            }
            let stat = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| Error::io(local(), e.into()))?;
            let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFREG {
                unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| Error::io(local(), e.into()))?;
            } else if special && kind != SFlag::S_IFLNK && kind != SFlag::S_IFDIR {
                let existing = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let fd = openat(&dir, name, existing, Mode::empty())
                    .map_err(|e| Error::io(local(), e.into()))?;
                return Ok((std::fs::File::from(fd), false));
            } else {
                return Err(self.refusal(&dir, name, relative, "a regular file"));
            }
        }
        Err(Error::io(
            local(),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something keeps recreating this path while it is downloaded",
            ),
        ))
    }

    /// Creates the symlink `relative` → `target`, replacing a file or symlink there (never
    /// following it), and sets the link's own modification time.
    fn symlink(&self, relative: &Path, target: &[u8], mtime_ns: i64) -> Result<()> {
        let (dir, name) = self.parent(relative)?;
        let local = self.local(relative);
        match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => {}
            Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                return Err(Error::UnsafeDestination {
                    path: local,
                    reason: "a directory is there, where the session has a symbolic link; remove it, or download into an empty directory".into(),
                })
            }
            Ok(_) => unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| Error::io(&local, e.into()))?,
            Err(e) => return Err(Error::io(&local, e.into())),
        }
        symlinkat(OsStr::from_bytes(target), &dir, name)
            .map_err(|e| Error::io(&local, e.into()))?;
        if mtime_ns != 0 {
            utimensat(
                &dir,
                name,
                &TimeSpec::UTIME_OMIT,
                &timespec(mtime_ns),
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| Error::io(&local, e.into()))?;
        }
        Ok(())
    }

    /// Sets the mode and time of the directory at `relative` (empty for the root).
    fn set_directory_attributes(&self, relative: &Path, mode: u32, mtime_ns: i64) -> Result<()> {
        let dir = std::fs::File::from(self.dir(relative, false)?);
        set_attributes(&dir, &self.local(relative), mode, mtime_ns)
    }
}

/// Writes `target`'s link, replacing a file or symlink at `local` (the caller's own path;
/// its parent is followed, `local` itself is not).
fn replace_with_symlink(local: &Path, target: &[u8], mtime_ns: i64) -> Result<()> {
    let parent = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = local
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} has no file name", local.display())))?;
    let root = LocalRoot {
        fd: std::fs::File::open(parent)
            .map_err(|e| Error::io(parent, e))?
            .into(),
        path: parent.to_path_buf(),
    };
    root.symlink(Path::new(name), target, mtime_ns)
}

impl SessionHandle {
    /// Downloads one file to `local` (created or replaced) with its mode and modification
    /// time, or, when `path` is a symlink, makes `local` that symlink. `local`'s directories
    /// are the caller's to choose; `local` itself is never followed: an existing symlink there
    /// is refused for a file (replaced for a symlink).
    pub async fn download_file(
        &self,
        path: &str,
        at: &Rev,
        local: &Path,
        progress: &dyn Progress,
    ) -> Result<pb::Entry> {
        let entry = self.stat(path, at).await?;
        if is_kind(&entry, pb::EntryKind::Directory) {
            return Err(Error::InvalidArgument(format!(
                "{path:?} is a directory; download it with download_directory"
            )));
        }
        if is_kind(&entry, pb::EntryKind::Symlink) {
            let target = entry.symlink_target.clone().into_bytes();
            check_target(path, &target)?;
            let local = local.to_path_buf();
            let mtime_ns = entry.mtime_ns;
            blocking(move || replace_with_symlink(&local, &target, mtime_ns)).await?;
            return Ok(entry);
        }
        let parent = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = local
            .file_name()
            .ok_or_else(|| Error::InvalidArgument(format!("{} has no file name", local.display())))?
            .to_os_string();
        let root = Arc::new(
            blocking(move || {
                let fd = std::fs::File::open(&parent).map_err(|e| Error::io(&parent, e))?;
                Ok(LocalRoot {
                    fd: fd.into(),
                    path: parent,
                })
            })
            .await?,
        );
        self.download_into(&root, PathBuf::from(name), path, at, progress, true)
            .await
    }

    /// Writes the file `path` to `relative` below `root`, then sets its mode and time. With
    /// `named` (one file, to a path the caller chose) its size is announced to `progress`, and
    /// a device there (such as `/dev/null`) is written to and left as it is.
    async fn download_into(
        &self,
        root: &Arc<LocalRoot>,
        relative: PathBuf,
        path: &str,
        at: &Rev,
        progress: &dyn Progress,
        named: bool,
    ) -> Result<pb::Entry> {
        let opener = root.clone();
        let target = relative.clone();
        let (file, regular) = blocking(move || opener.create_file(&target, named)).await?;
        let local = root.local(&relative);
        let mut writer =
            tokio::io::BufWriter::with_capacity(1024 * 1024, tokio::fs::File::from_std(file));
        let entry = self
            .read_into(path, at, &mut writer, progress, named)
            .await?;
        writer.flush().await.map_err(|e| Error::io(&local, e))?;
        if regular {
            let file = writer.into_inner().into_std().await;
            let (mode, mtime_ns) = (entry.mode, entry.mtime_ns);
            blocking(move || set_attributes(&file, &local, mode, mtime_ns)).await?;
        }
        Ok(entry)
    }

    /// Downloads directory `remote` (empty for the root) at a revision into `local`, which is
    /// created if missing: `local` ends up holding what `remote` holds — files, directories
    /// and symlinks, with modes and modification times, `local`'s own included unless
    /// `remote` is the session root. Nothing is written through a symlink inside `local`
    /// (see the module docs).
    pub async fn download_directory(
        &self,
        remote: &str,
        at: &Rev,
        local: &Path,
        progress: &dyn Progress,
    ) -> Result<DownloadReport> {
        let remote = remote.trim_matches('/');
        let top = if remote.is_empty() {
            None
        } else {
            let entry = self.stat(remote, at).await?;
            if !is_kind(&entry, pb::EntryKind::Directory) {
                return Err(Error::InvalidArgument(format!(
                    "{remote:?} is not a directory; download it with download_file"
                )));
            }
            Some(entry)
        };
        let listing = Listing::split(remote, self.list(remote, true, at).await?)?;
        let report = listing.report();

        // 1. Directories, parents first (a listing is in path order; `dir` makes missing
        // parents anyway).
        let local = local.to_path_buf();
        let made: Vec<PathBuf> = listing.directories.iter().map(|(r, _)| r.clone()).collect();
        let root = Arc::new(
            blocking(move || {
                let root = LocalRoot::create(&local)?;
                for relative in &made {
                    root.dir(relative, true)?;
                }
                Ok(root)
            })
            .await?,
        );
        // 2. Files.
        progress.phase("downloading", Some(report.bytes));
        futures::stream::iter(listing.files)
            .map(|(relative, entry)| {
                let root = root.clone();
                async move {
                    self.download_into(&root, relative, &entry.path, at, progress, false)
                        .await
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        // 3. Symlinks, after every file: nothing is written through them.
        self.download_links(&root, listing.links, at).await?;
        // 4. Directories' modes and times, deepest first, `local` itself last.
        let mut attributes: Vec<(PathBuf, u32, i64)> = listing
            .directories
            .into_iter()
            .map(|(relative, entry)| (relative, entry.mode, entry.mtime_ns))
            .collect();
        attributes.sort_by_key(|(relative, _, _)| std::cmp::Reverse(relative.components().count()));
        attributes.extend(top.map(|top| (PathBuf::new(), top.mode, top.mtime_ns)));
        blocking(move || {
            for (relative, mode, mtime_ns) in &attributes {
                root.set_directory_attributes(relative, *mode, *mtime_ns)?;
            }
            Ok(())
        })
        .await?;
        Ok(report)
    }

    /// Reads the targets of `links` (a few at a time), then makes the links below `root`.
    async fn download_links(
        &self,
        root: &Arc<LocalRoot>,
        links: Vec<(PathBuf, pb::Entry)>,
        at: &Rev,
    ) -> Result<()> {
        let targets: Vec<(PathBuf, Vec<u8>, i64)> = futures::stream::iter(links)
            .map(|(relative, entry)| async move {
                let target = self.read(&entry.path, at).await?;
                check_target(&entry.path, &target)?;
                Ok::<_, Error>((relative, target, entry.mtime_ns))
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let root = root.clone();
        blocking(move || {
            for (relative, target, mtime_ns) in &targets {
                root.symlink(relative, target, *mtime_ns)?;
            }
            Ok(())
        })
        .await
    }
}

/// A recursive listing split by kind, each entry with its local path relative to the target.
#[derive(Default)]
struct Listing {
    directories: Vec<(PathBuf, pb::Entry)>,
    files: Vec<(PathBuf, pb::Entry)>,
    links: Vec<(PathBuf, pb::Entry)>,
}

impl Listing {
    /// Splits the listing of `remote`, checking every path stays below it.
    fn split(remote: &str, entries: Vec<pb::Entry>) -> Result<Listing> {
        let mut listing = Listing::default();
        for entry in entries {
            let relative = relative(remote, &entry.path)?;
            let into = if is_kind(&entry, pb::EntryKind::Directory) {
                &mut listing.directories
            } else if is_kind(&entry, pb::EntryKind::Symlink) {
                &mut listing.links
            } else if is_kind(&entry, pb::EntryKind::File) {
                &mut listing.files
            } else {
                return Err(Error::InvalidArgument(format!(
                    "the server listed {:?} with an unknown kind {}; is the client older than the server?",
                    entry.path, entry.kind
                )));
            };
            into.push((relative, entry));
        }
        Ok(listing)
    }

    fn report(&self) -> DownloadReport {
        DownloadReport {
            files: self.files.len() as u64,
            directories: self.directories.len() as u64,
            symlinks: self.links.len() as u64,
            bytes: self.files.iter().map(|(_, e)| e.size).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(relative("", "a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(relative("src", "src/a").unwrap(), PathBuf::from("a"));
        assert!(relative("src", "srcx/a").is_err());
        assert!(relative("", "../etc/passwd").is_err());
        assert!(relative("", "/etc/passwd").is_err());
        assert!(relative("src", "src").is_err());
    }

    #[test]
    fn times_convert_both_ways_of_1970() {
        assert_eq!(system_time(0), None);
        assert_eq!(
            system_time(15_000_000_005),
            Some(UNIX_EPOCH + Duration::new(15, 5))
        );
        assert_eq!(
            system_time(-10_000_000_250),
            Some(UNIX_EPOCH - Duration::new(10, 250))
        );
        let ts = timespec(-10_000_000_250);
        assert_eq!((ts.tv_sec(), ts.tv_nsec()), (-11, 999_999_750));
    }

    #[test]
    fn links_inside_the_target_are_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("evil")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), target.path().join("file")).unwrap();
        let root = LocalRoot::create(target.path()).unwrap();

        let err = root.dir(Path::new("evil/sub"), true).unwrap_err();
        assert!(matches!(err, Error::UnsafeDestination { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = root.create_file(Path::new("evil/x"), false).unwrap_err();
        assert!(matches!(err, Error::UnsafeDestination { .. }), "{err}");
        let err = root.create_file(Path::new("file"), true).unwrap_err();
        assert!(matches!(err, Error::UnsafeDestination { .. }), "{err}");
        let err = root
            .set_directory_attributes(Path::new("evil"), 0o700, 5)
            .unwrap_err();
        assert!(matches!(err, Error::UnsafeDestination { .. }), "{err}");
        // A link is replaced, not followed; its time is its own.
        root.symlink(Path::new("file"), b"../../anywhere", 1_000_000_007)
            .unwrap();
        let meta = std::fs::symlink_metadata(target.path().join("file")).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!(crate::upload::mtime_ns(&meta), 1_000_000_007);
        assert_eq!(
            std::fs::read_link(target.path().join("file")).unwrap(),
            PathBuf::from("../../anywhere")
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        // A file already there is replaced, not written through: a hard link to it elsewhere
        // keeps its bytes, and a read-only file is no obstacle.
        std::fs::write(outside.path().join("kept"), b"kept").unwrap();
        std::fs::hard_link(outside.path().join("kept"), target.path().join("hard")).unwrap();
        let (mut file, regular) = root.create_file(Path::new("hard"), false).unwrap();
        assert!(regular);
        std::io::Write::write_all(&mut file, b"new").unwrap();
        assert_eq!(std::fs::read(outside.path().join("kept")).unwrap(), b"kept");
        assert_eq!(std::fs::read(target.path().join("hard")).unwrap(), b"new");
        {
            use std::os::unix::fs::PermissionsExt;
            let readonly = std::fs::Permissions::from_mode(0o400);
            std::fs::set_permissions(target.path().join("hard"), readonly).unwrap();
        }
        root.create_file(Path::new("hard"), false).unwrap();
        // Other kinds are refused unless the caller named the path.
        let _socket = std::os::unix::net::UnixListener::bind(target.path().join("sock")).unwrap();
        let err = root.create_file(Path::new("sock"), false).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
