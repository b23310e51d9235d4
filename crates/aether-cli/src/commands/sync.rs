//! `aether clone`, `status`, `pull`, `push`: a plain local directory kept in step with a
//! session path, through the public API only (no mount needed: laptops, CI runners,
//! containers without /dev/fuse).
//!
//! The directory records what it last agreed with the session in `.aether/sync.json`: for
//! each path, the session's entry (kind, content hash, mode) and the local file's stamp
//! (size, times, inode) when it held exactly that. A file whose stamp is unchanged is not
//! read again, so a no-op `status` on 10k files costs one remote listing and 10k `lstat`s.
//!
//! - Local changes: paths whose local state differs from the recorded one.
//! - Remote changes: paths whose entry in the session's head differs from the recorded one.
//! - A path changed on both sides to different states is a conflict: reported, never
//!   overwritten; `pull --theirs` takes the session's, `pull --ours` keeps the local one
//!   (and the next push sends it).
//! - `push` sends every local change in one ApplyChanges, each with a precondition (the
//!   content it replaces, or that the path is free), so a change made in the session since
//!   the last pull fails the whole push cleanly; content the store holds is not sent again.
//!   A push killed midway changed the session entirely or not at all; the next `status`
//!   sees which (a path already equal on both sides is simply recorded).
//!
//! Modification times travel with files (set on download, sent on upload) but a change of
//! time alone is not a change, as in `aether diff`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aether_client::{content_hash, proto as pb, Rev, SessionHandle, UploadSource};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::{CloneArgs, PullArgs, SyncDirArgs};
use crate::{Context, Failure};

/// Where a synced directory keeps its record (never synced itself).
pub const STATE_DIR: &str = ".aether";
const STATE_FILE: &str = "sync.json";
/// Downloads in progress, inside the record's folder.
const TMP_DIR: &str = "tmp";
const STATE_VERSION: u32 = 1;
/// Files downloaded at once by clone and pull.
const DOWNLOADS_AT_ONCE: usize = 16;
/// Bytes of file content a push sends inline (the rest is stored first).
const INLINE_BUDGET: u64 = 4 * 1024 * 1024;
/// Large files stored at once by push.
const UPLOADS_AT_ONCE: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// A path's state as the session holds it (what is compared; times are not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Remote {
    kind: Kind,
    /// Content hash (files), target hash (symlinks); empty for directories.
    hash: String,
    /// Permission bits (files and directories; 0 for symlinks).
    mode: u32,
}

/// What identifies a local file's bytes without reading them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

/// One path as last agreed: the session's entry, and the local stamp when the local file held
/// exactly that (None: read it to know).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Agreed {
    remote: Remote,
    stamp: Option<Stamp>,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    session: String,
    /// The session path synced (empty for the root).
    path: String,
    /// The head version of the last pull or push.
    head_version: u64,
    entries: BTreeMap<String, Agreed>,
}

/// A local path now.
struct Local {
    state: Remote,
    mtime_ns: i64,
    stamp: Stamp,
    /// A symlink's target.
    target: Option<String>,
}

/// What differs since the record, on each side, and where both sides moved apart.
struct Changes {
    local: BTreeMap<String, Option<Remote>>,
    remote: BTreeMap<String, Option<Remote>>,
    /// Changed on both sides, to the same state: nothing to move, only to record.
    converged: BTreeSet<String>,
    conflicts: BTreeSet<String>,
}

fn same(a: Option<&Remote>, b: Option<&Remote>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.kind == b.kind
                && match a.kind {
                    Kind::File => a.hash == b.hash && a.mode == b.mode,
                    Kind::Symlink => a.hash == b.hash,
                    Kind::Dir => a.mode == b.mode,
                }
        }
        _ => false,
    }
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_DIR).join(STATE_FILE)
}

fn load(dir: &Path) -> Result<State, Failure> {
    let path = state_path(dir);
    let bytes = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Failure::Usage(format!(
                "{} is not a synced directory (no {STATE_DIR}/{STATE_FILE}): start with `aether clone SESSION[:PATH] {}`",
                dir.display(),
                dir.display()
            ))
        } else {
            Failure::local(&path, e)
        }
    })?;
    let state: State = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::Other(format!(
            "{} is damaged ({e}); clone the session again into a new directory",
            path.display()
        ))
    })?;
    if state.version != STATE_VERSION {
        return Err(Failure::Other(format!(
            "{} has version {}, this aether reads {STATE_VERSION}",
            path.display(),
            state.version
        )));
    }
    Ok(state)
}

/// Writes the record atomically (a new file renamed over the old one), so an interrupted
/// command leaves the previous record or the new one.
fn save(dir: &Path, state: &State) -> Result<(), Failure> {
    let folder = dir.join(STATE_DIR);
    std::fs::create_dir_all(&folder).map_err(|e| Failure::local(&folder, e))?;
    let bytes = serde_json::to_vec(state).map_err(|e| Failure::Other(e.to_string()))?;
    let mut file =
        tempfile::NamedTempFile::new_in(&folder).map_err(|e| Failure::local(&folder, e))?;
    std::io::Write::write_all(&mut file, &bytes).map_err(|e| Failure::local(&folder, e))?;
    file.as_file()
        .sync_all()
        .map_err(|e| Failure::local(&folder, e))?;
    file.persist(state_path(dir))
        .map_err(|e| Failure::local(state_path(dir), e.error))?;
    Ok(())
}

fn session_path(state: &State, relative: &str) -> String {
    if state.path.is_empty() {
        relative.to_string()
    } else {
        format!("{}/{relative}", state.path)
    }
}

fn kind_of(entry: &pb::Entry) -> Kind {
    match pb::EntryKind::try_from(entry.kind) {
        Ok(pb::EntryKind::Directory) => Kind::Dir,
        Ok(pb::EntryKind::Symlink) => Kind::Symlink,
        _ => Kind::File,
    }
}

fn remote_of(entry: &pb::Entry) -> Remote {
    let kind = kind_of(entry);
    let mode = match (kind, entry.mode & 0o7777) {
        (Kind::Symlink, _) => 0,
        (Kind::Dir, 0) => 0o755,
        (Kind::File, 0) => 0o644,
        (_, mode) => mode,
    };
    Remote {
        kind,
        hash: if kind == Kind::Dir {
            String::new()
        } else {
            entry.hash.clone()
        },
        mode,
    }
}

/// The session's entries below the synced path, by relative path, and the head version
/// they were listed at (read before the listing: a later change shows as a change next time).
async fn list_remote(
    session: &SessionHandle,
    path: &str,
) -> Result<(u64, BTreeMap<String, pb::Entry>), Failure> {
    let version = session.info().await?.head_version;
    let entries = session.list(path, true, &Rev::Head).await?;
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut out = BTreeMap::new();
    for entry in entries {
        if let Some(relative) = entry.path.strip_prefix(&prefix) {
            if relative != STATE_DIR && !relative.starts_with(&format!("{STATE_DIR}/")) {
                out.insert(relative.to_string(), entry);
            }
        }
    }
    Ok((version, out))
}

fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    Stamp {
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        ino: meta.ino(),
    }
}

/// A stamp worth recording. A file rewritten at the same size within the clock tick of its
/// last change keeps its stamp ("racy git"), so a stamp whose modification time is within a
/// second of now is not kept and the file is read again next time (and stamped then, see
/// [`refresh_stamps`]). A file the pull wrote has the session's (older) time; a later change
/// moves it.
fn settled(stamp: &Stamp) -> Option<Stamp> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(i64::MAX);
    (now.saturating_sub(stamp.mtime_ns) >= 1_000_000_000).then(|| stamp.clone())
}

/// Records the stamps of files that were read because their stamp was missing or stale and
/// turned out to hold the recorded content, so the next scan need not read them (as `git
/// status` refreshes its index). Whether anything changed.
fn refresh_stamps(state: &mut State, local: &BTreeMap<String, Local>) -> bool {
    let mut refreshed = false;
    for (path, here) in local {
        let Some(agreed) = state.entries.get_mut(path) else {
            continue;
        };
        if agreed.remote.kind != Kind::File
            || agreed.stamp.as_ref() == Some(&here.stamp)
            || !same(Some(&agreed.remote), Some(&here.state))
        {
            continue;
        }
        if let Some(stamp) = settled(&here.stamp) {
            agreed.stamp = Some(stamp);
            refreshed = true;
        }
    }
    refreshed
}

/// Every path below `dir` (but the record), by relative path; a file is read only when its
/// stamp differs from the recorded one.
async fn scan_local(
    dir: &Path,
    agreed: &BTreeMap<String, Agreed>,
) -> Result<BTreeMap<String, Local>, Failure> {
    let mut out = BTreeMap::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((folder, relative)) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|e| Failure::local(&folder, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Failure::local(&folder, e))?;
            let name = entry.file_name().into_string().map_err(|name| {
                Failure::Other(format!(
                    "{} has a name that is not UTF-8 ({name:?}); rename it to sync",
                    folder.display()
                ))
            })?;
            if relative.is_empty() && name == STATE_DIR {
                continue;
            }
            let path = entry.path();
            let key = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            let Some(local) = local_of(&path, &key, agreed).await? else {
                continue;
            };
            if local.state.kind == Kind::Dir {
                pending.push((path, key.clone()));
            }
            out.insert(key, local);
        }
    }
    Ok(out)
}

/// The local state of `path` (`key` relative to the synced directory), reading a file only
/// when its stamp differs from the recorded one; None (and a warning) for what cannot be
/// synced (not a regular file, directory or symlink).
async fn local_of(
    path: &Path,
    key: &str,
    agreed: &BTreeMap<String, Agreed>,
) -> Result<Option<Local>, Failure> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Failure::local(path, e))?;
    let stamp = stamp_of(&meta);
    let mtime_ns = stamp.mtime_ns;
    let kind = meta.file_type();
    let (state, target) = if kind.is_dir() {
        let state = Remote {
            kind: Kind::Dir,
            hash: String::new(),
            mode: meta.permissions().mode() & 0o7777,
        };
        (state, None)
    } else if kind.is_symlink() {
        let target = std::fs::read_link(path)
            .map_err(|e| Failure::local(path, e))?
            .into_os_string()
            .into_string()
            .map_err(|_| {
                Failure::Other(format!("{} points at a non-UTF-8 target", path.display()))
            })?;
        let state = Remote {
            kind: Kind::Symlink,
            hash: aether_client::symlink_hash(&target),
            mode: 0,
        };
        (state, Some(target))
    } else if kind.is_file() {
        let known = agreed
            .get(key)
            .filter(|a| a.remote.kind == Kind::File && a.stamp.as_ref() == Some(&stamp));
        let hash = match known {
            Some(a) => a.remote.hash.clone(),
            None => content_hash(path).await?.0.to_hex(),
        };
        let state = Remote {
            kind: Kind::File,
            hash,
            mode: meta.permissions().mode() & 0o7777,
        };
        (state, None)
    } else {
        eprintln!(
            "aether: skipped {} (not a regular file, directory or symlink)",
            path.display()
        );
        return Ok(None);
    };
    Ok(Some(Local {
        state,
        mtime_ns,
        stamp,
        target,
    }))
}

fn compare(
    agreed: &BTreeMap<String, Agreed>,
    local: &BTreeMap<String, Local>,
    remote: &BTreeMap<String, pb::Entry>,
) -> Changes {
    let mut changes = Changes {
        local: BTreeMap::new(),
        remote: BTreeMap::new(),
        converged: BTreeSet::new(),
        conflicts: BTreeSet::new(),
    };
    let paths: BTreeSet<&String> = agreed
        .keys()
        .chain(local.keys())
        .chain(remote.keys())
        .collect();
    for path in paths {
        let base = agreed.get(path).map(|a| &a.remote);
        let here = local.get(path).map(|l| &l.state);
        let there = remote.get(path).map(remote_of);
        let local_changed = !same(base, here);
        let remote_changed = !same(base, there.as_ref());
        if local_changed {
            changes.local.insert(path.clone(), here.cloned());
        }
        if remote_changed {
            changes.remote.insert(path.clone(), there.clone());
        }
        if local_changed && remote_changed {
            if same(here, there.as_ref()) {
                changes.converged.insert(path.clone());
            } else {
                changes.conflicts.insert(path.clone());
            }
        }
    }
    changes
}

fn describe(change: &Option<Remote>, had: bool) -> &'static str {
    match (change, had) {
        (None, _) => "deleted",
        (Some(_), false) => "added",
        (Some(_), true) => "modified",
    }
}

pub async fn clone(context: &Context, args: CloneArgs) -> Result<(), Failure> {
    let dir = args.directory;
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .map_err(|e| Failure::local(&dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Failure::Usage(format!(
                "{} exists and is not empty: clone into a new or empty directory",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| Failure::local(&dir, e))?;
    let session = context.client.session(&args.source.session);
    let mut state = State {
        version: STATE_VERSION,
        session: args.source.session.clone(),
        path: args.source.path.clone(),
        head_version: 0,
        entries: BTreeMap::new(),
    };
    let (version, remote) = list_remote(&session, &state.path).await?;
    if !state.path.is_empty() {
        let root = session.stat(&state.path, &Rev::Head).await?;
        if kind_of(&root) != Kind::Dir {
            return Err(Failure::Usage(format!(
                "{}:{} is not a directory: sync a directory",
                state.session, state.path
            )));
        }
    }
    let changes = compare(&state.entries, &BTreeMap::new(), &remote);
    let applied = apply_remote(&session, &dir, &state, &changes.remote, &remote).await?;
    state.entries = applied;
    state.head_version = version;
    save(&dir, &state)?;
    report(
        context,
        "cloned",
        json!({ "session": state.session, "path": state.path, "head_version": version, "paths": state.entries.len() }),
        &format!(
            "cloned {}:{} (version {version}, {} paths) into {}",
            state.session,
            state.path,
            state.entries.len(),
            dir.display()
        ),
    )
}

pub async fn status(context: &Context, args: SyncDirArgs) -> Result<(), Failure> {
    let dir = args.directory;
    let mut state = load(&dir)?;
    let session = context.client.session(&state.session);
    let (version, remote) = list_remote(&session, &state.path).await?;
    let local = scan_local(&dir, &state.entries).await?;
    let changes = compare(&state.entries, &local, &remote);
    if refresh_stamps(&mut state, &local) {
        save(&dir, &state)?;
    }
    if context.json() {
        let side = |map: &BTreeMap<String, Option<Remote>>| {
            map.iter()
                .filter(|(p, _)| !changes.conflicts.contains(*p) && !changes.converged.contains(*p))
                .map(|(p, c)| json!({ "path": p, "change": describe(c, state.entries.contains_key(p)) }))
                .collect::<Vec<_>>()
        };
        let value = json!({
            "session": state.session,
            "path": state.path,
            "synced_version": state.head_version,
            "head_version": version,
            "local": side(&changes.local),
            "remote": side(&changes.remote),
            "conflicts": changes.conflicts,
        });
        println!("{value}");
        return Ok(());
    }
    println!(
        "{}:{} synced at version {}, head is version {version}",
        state.session, state.path, state.head_version
    );
    let mut clean = true;
    for (title, map) in [("local", &changes.local), ("remote", &changes.remote)] {
        for (path, change) in map {
            if changes.conflicts.contains(path) || changes.converged.contains(path) {
                continue;
            }
            clean = false;
            println!(
                "{title:<8} {:<9} {path}",
                describe(change, state.entries.contains_key(path))
            );
        }
    }
    for path in &changes.conflicts {
        clean = false;
        println!("conflict changed on both sides  {path}");
    }
    if clean {
        println!("in step: nothing to pull or push");
    }
    Ok(())
}

pub async fn pull(context: &Context, args: PullArgs) -> Result<(), Failure> {
    let dir = args.directory;
    let mut state = load(&dir)?;
    clear_scratch(&dir);
    let session = context.client.session(&state.session);
    let (version, remote) = list_remote(&session, &state.path).await?;
    let local = scan_local(&dir, &state.entries).await?;
    let changes = compare(&state.entries, &local, &remote);
    refresh_stamps(&mut state, &local);
    let (take, left) = choose_pulled(&changes, &local, args.theirs, args.ours);
    let applied = apply_remote(&session, &dir, &state, &take, &remote).await?;
    let taken = take.len();
    for (path, change) in &take {
        match applied.get(path) {
            Some(agreed) => {
                state.entries.insert(path.clone(), agreed.clone());
            }
            None if change.is_none() => {
                state.entries.remove(path);
            }
            None => {}
        }
    }
    record_settled(&mut state, &changes, &local, &remote, args.ours);
    state.head_version = version;
    save(&dir, &state)?;
    for path in &left {
        eprintln!(
            "aether: conflict: {path} changed here and in the session; kept the local one. \
             `aether pull --theirs` takes the session's, `aether pull --ours` keeps yours for the next push"
        );
    }
    report(
        context,
        "pulled",
        json!({ "head_version": version, "applied": taken, "conflicts": left }),
        &format!(
            "pulled version {version}: {taken} paths updated, {} conflicts",
            left.len()
        ),
    )?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(Failure::Other(format!(
            "{} conflicts left in {}",
            left.len(),
            dir.display()
        )))
    }
}

/// What a pull brings here (None: deleted): remote changes not made locally, and conflicts
/// with `--theirs`; and the conflicts it leaves (named to the user), none with `--ours`.
fn choose_pulled(
    changes: &Changes,
    local: &BTreeMap<String, Local>,
    theirs: bool,
    ours: bool,
) -> (BTreeMap<String, Option<Remote>>, Vec<String>) {
    let mut take: BTreeMap<String, Option<Remote>> = BTreeMap::new();
    let mut left = Vec::new();
    for (path, change) in &changes.remote {
        if changes.converged.contains(path) {
            continue;
        }
        if changes.conflicts.contains(path) {
            if theirs {
                take.insert(path.clone(), change.clone());
            } else if !ours {
                left.push(path.clone());
            }
            continue;
        }
        if !changes.local.contains_key(path) {
            take.insert(path.clone(), change.clone());
        }
    }
    // A directory the session removed (or made a file or link) that still holds local work
    // here is a conflict on the directory: it stays, and is named.
    let kept: Vec<&String> = changes
        .local
        .keys()
        .filter(|p| !take.contains_key(*p))
        .collect();
    let blocked: Vec<String> = take
        .iter()
        .filter(|(path, change)| {
            local.get(*path).is_some_and(|l| l.state.kind == Kind::Dir)
                && change.as_ref().is_none_or(|c| c.kind != Kind::Dir)
                && kept.iter().any(|k| k.starts_with(&format!("{path}/")))
        })
        .map(|(path, _)| path.clone())
        .collect();
    for path in blocked {
        take.remove(&path);
        left.push(path);
    }
    (take, left)
}

/// Records the session's state of the paths a pull settles without moving anything: those
/// equal on both sides, and with `ours` the conflicts kept local.
fn record_settled(
    state: &mut State,
    changes: &Changes,
    local: &BTreeMap<String, Local>,
    remote: &BTreeMap<String, pb::Entry>,
    ours: bool,
) {
    // Equal on both sides, or kept local with --ours: the session's state is the new record;
    // with --ours the local file differs from it (no stamp: read next time) and is pushed.
    let ours = if ours {
        changes.conflicts.iter().cloned().collect()
    } else {
        Vec::new()
    };
    for path in changes.converged.iter().chain(&ours) {
        match remote.get(path) {
            Some(entry) => {
                let stamp = match (changes.converged.contains(path), local.get(path)) {
                    (true, Some(l)) => settled(&l.stamp),
                    _ => None,
                };
                state.entries.insert(
                    path.clone(),
                    Agreed {
                        remote: remote_of(entry),
                        stamp,
                    },
                );
            }
            None => {
                state.entries.remove(path);
            }
        }
    }
}

/// Brings the session's state of `take` (None: deleted) into `dir`: deletions deepest first,
/// directories shallowest first, files and links downloaded beside their place and renamed
/// over it (an interrupted pull leaves whole files). Returns the record of each path written.
async fn apply_remote(
    session: &SessionHandle,
    dir: &Path,
    state: &State,
    take: &BTreeMap<String, Option<Remote>>,
    remote: &BTreeMap<String, pb::Entry>,
) -> Result<BTreeMap<String, Agreed>, Failure> {
    remove_replaced(dir, take)?;
    // Directories, shallowest first; then files and links, several at once.
    let (mut applied, downloads) = make_directories(dir, take)?;
    let fetched: Vec<(String, Agreed)> = futures::stream::iter(downloads)
        .map(|path| download(session, dir, state, path))
        .buffer_unordered(DOWNLOADS_AT_ONCE)
        .try_collect()
        .await?;
    applied.extend(fetched);
    // Directory modes and times last, deepest first: a read-only directory is filled before
    // it becomes read-only, and creating children moved the times.
    for (path, change) in take.iter().rev() {
        if let (
            Some(
                target @ Remote {
                    kind: Kind::Dir, ..
                },
            ),
            Some(entry),
        ) = (change, remote.get(path))
        {
            let local = dir.join(path);
            set_mtime(&local, entry.mtime_ns);
            std::fs::set_permissions(&local, std::fs::Permissions::from_mode(target.mode))
                .map_err(|e| Failure::local(&local, e))?;
        }
    }
    Ok(applied)
}

/// Removes, deepest first, what the session deleted in `take` and what changes between a
/// directory and a file or link.
fn remove_replaced(dir: &Path, take: &BTreeMap<String, Option<Remote>>) -> Result<(), Failure> {
    for (path, change) in take.iter().rev() {
        let local = dir.join(path);
        let Ok(meta) = std::fs::symlink_metadata(&local) else {
            continue;
        };
        let replace = match change {
            None => true,
            Some(r) => (r.kind == Kind::Dir) != meta.is_dir(),
        };
        if replace {
            let removed = if meta.is_dir() {
                std::fs::remove_dir(&local)
            } else {
                std::fs::remove_file(&local)
            };
            removed.map_err(|e| {
                Failure::Other(format!(
                    "cannot remove {} as the session did: {e} (a local file the session does not know is in the way?)",
                    local.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// Creates the directories of `take`, shallowest first (never through a local symlink);
/// their records, and the files and links left to download.
fn make_directories(
    dir: &Path,
    take: &BTreeMap<String, Option<Remote>>,
) -> Result<(BTreeMap<String, Agreed>, Vec<String>), Failure> {
    let mut applied = BTreeMap::new();
    let mut downloads = Vec::new();
    for (path, change) in take {
        let Some(target) = change else { continue };
        if target.kind != Kind::Dir {
            downloads.push(path.clone());
            continue;
        }
        if let Some(link) = linked_ancestor(dir, &format!("{path}/.")) {
            return Err(Failure::Other(format!(
                "{} is a symlink where the session has a directory: move it away and pull again",
                link.display()
            )));
        }
        let local = dir.join(path);
        std::fs::create_dir_all(&local).map_err(|e| Failure::local(&local, e))?;
        applied.insert(
            path.clone(),
            Agreed {
                remote: target.clone(),
                stamp: None,
            },
        );
    }
    Ok((applied, downloads))
}

/// Downloads one file or link beside its place and renames it over it (an interrupted pull
/// leaves whole files); records what was read, which a change made since the listing may
/// have moved.
async fn download(
    session: &SessionHandle,
    dir: &Path,
    state: &State,
    path: String,
) -> Result<(String, Agreed), Failure> {
    let local = dir.join(&path);
    let parent = local.parent().unwrap_or(dir).to_path_buf();
    // Never through a link, not even to make a missing parent: a local symlink where the
    // session has a directory would send the download outside the synced directory.
    if let Some(link) = linked_ancestor(dir, &path) {
        return Err(Failure::Other(format!(
            "{} is a symlink where the session has a directory: move it away and pull again",
            link.display()
        )));
    }
    std::fs::create_dir_all(&parent).map_err(|e| Failure::local(&parent, e))?;
    // Downloads land in the record's folder (same filesystem, never synced), are flushed to
    // disk, then renamed into place: a pull killed or cut by power loss leaves whole files.
    let scratch = dir.join(STATE_DIR).join(TMP_DIR);
    std::fs::create_dir_all(&scratch).map_err(|e| Failure::local(&scratch, e))?;
    let temporary = scratch.join(format!(
        "{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let read = session
        .download_file(
            &session_path(state, &path),
            &Rev::Head,
            &temporary,
            &aether_client::NoProgress,
        )
        .await;
    let read = match read {
        Ok(read) => read,
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(e.into());
        }
    };
    let remote = remote_of(&read);
    if remote.kind == Kind::File {
        // The service's default mode (0) is 0644 here, whatever the umask.
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(remote.mode))
            .map_err(|e| Failure::local(&temporary, e))?;
        std::fs::File::open(&temporary)
            .and_then(|f| f.sync_all())
            .map_err(|e| Failure::local(&temporary, e))?;
    }
    std::fs::rename(&temporary, &local).map_err(|e| Failure::local(&local, e))?;
    let meta = std::fs::symlink_metadata(&local).map_err(|e| Failure::local(&local, e))?;
    Ok((
        path,
        Agreed {
            remote,
            stamp: settled(&stamp_of(&meta)),
        },
    ))
}

/// The first component of `relative` below `dir` (its parents, not itself) that is a symlink.
fn linked_ancestor(dir: &Path, relative: &str) -> Option<PathBuf> {
    let mut at = dir.to_path_buf();
    let mut components: Vec<&str> = relative.split('/').collect();
    components.pop();
    for component in components {
        at.push(component);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(at);
        }
    }
    None
}

/// Removes what an interrupted download left in the record's folder.
fn clear_scratch(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join(STATE_DIR).join(TMP_DIR));
}

fn set_mtime(path: &Path, mtime_ns: i64) {
    let time = std::time::UNIX_EPOCH
        + std::time::Duration::from_nanos(u64::try_from(mtime_ns).unwrap_or(0));
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.set_modified(time);
    }
}

pub async fn push(context: &Context, args: SyncDirArgs) -> Result<(), Failure> {
    let dir = args.directory;
    let mut state = load(&dir)?;
    let session = context.client.session(&state.session);
    let (listed_version, remote) = list_remote(&session, &state.path).await?;
    let local = scan_local(&dir, &state.entries).await?;
    let changes = compare(&state.entries, &local, &remote);
    refresh_stamps(&mut state, &local);
    let sending = changes_to_push(&changes)?;
    let contents = file_contents(&session, &dir, &state, &sending, &local).await?;
    let mut batch = PushBatch::new(&state, &local, &contents);
    for (path, change) in &sending {
        batch.add(path, change);
    }
    let batch = batch.into_changes();
    let count = batch.len();
    // Directories carry no content hash to check: a push that changes one applies only to
    // the head it listed (any change since fails it, and it is tried again after a pull).
    let touches_directory = sending.iter().any(|(path, change)| {
        change.as_ref().is_some_and(|c| c.kind == Kind::Dir)
            || state
                .entries
                .get(*path)
                .is_some_and(|a| a.remote.kind == Kind::Dir)
    });
    let expected = if touches_directory { listed_version } else { 0 };
    let mut version = state.head_version;
    if !batch.is_empty() {
        version = apply_push(&session, batch, expected).await?;
    }
    record_pushed(&mut state, &changes, &sending, &local, &remote);
    state.head_version = version;
    save(&dir, &state)?;
    report(
        context,
        "pushed",
        json!({ "head_version": version, "paths": sending.len(), "changes": count }),
        &format!(
            "pushed {} paths ({count} changes) in one batch: version {version}",
            sending.len()
        ),
    )
}

/// The local changes a push sends (not those the session already has), after checking that
/// the session changed none of them since the last pull and that one batch carries them.
fn changes_to_push(changes: &Changes) -> Result<Vec<(&String, &Option<Remote>)>, Failure> {
    if let Some(path) = changes.conflicts.iter().next() {
        return Err(Failure::Other(format!(
            "{path} (and {} more) changed in the session too since the last pull: run `aether pull` and settle the conflicts first",
            changes.conflicts.len() - 1
        )));
    }
    let sending: Vec<(&String, &Option<Remote>)> = changes
        .local
        .iter()
        .filter(|(p, _)| !changes.converged.contains(*p))
        .collect();
    if sending.len() > aether_client::MAX_BATCH_CHANGES / 2 {
        return Err(Failure::Other(format!(
            "{} local changes are more than one push carries ({}): push a part with `aether put`, or pull and push in steps",
            sending.len(),
            aether_client::MAX_BATCH_CHANGES / 2
        )));
    }
    Ok(sending)
}

/// What a push requires of a path as last agreed: that it is still free, or that it still
/// holds the content the push replaces. None for a directory, which has no content hash (a
/// push that changes one is tied to the head version it listed instead).
fn precondition(state: &State, path: &str) -> Option<pb::PathPrecondition> {
    use pb::path_precondition::Condition;
    match state.entries.get(path).map(|a| &a.remote) {
        None => Some(pb::PathPrecondition {
            condition: Some(Condition::MustNotExist(true)),
        }),
        // The service checks a content hash on any entry that is not a directory.
        Some(Remote {
            kind: Kind::File | Kind::Symlink,
            hash,
            ..
        }) => Some(pb::PathPrecondition {
            condition: Some(Condition::ContentHash(hash.clone())),
        }),
        Some(_) => None,
    }
}

/// The changes of one push, gathered by group: the order they are sent in is set by
/// [`PushBatch::into_changes`].
struct PushBatch<'a> {
    state: &'a State,
    local: &'a BTreeMap<String, Local>,
    /// How each file's content travels (see [`file_contents`]).
    contents: &'a BTreeMap<String, (bytes::Bytes, Vec<pb::ChunkRef>)>,
    deletes: Vec<pb::Change>,
    directories: Vec<pb::Change>,
    writes: Vec<pb::Change>,
    attributes: Vec<pb::Change>,
}

impl<'a> PushBatch<'a> {
    /// An empty batch against the record `state`, of the local paths `local`.
    fn new(
        state: &'a State,
        local: &'a BTreeMap<String, Local>,
        contents: &'a BTreeMap<String, (bytes::Bytes, Vec<pb::ChunkRef>)>,
    ) -> Self {
        PushBatch {
            state,
            local,
            contents,
            deletes: Vec::new(),
            directories: Vec::new(),
            writes: Vec::new(),
            attributes: Vec::new(),
        }
    }

    /// Adds the changes that send the local change of `path` (None: deleted).
    fn add(&mut self, path: &str, change: &Option<Remote>) {
        let remote_path = session_path(self.state, path);
        let base = self.state.entries.get(path).map(|a| &a.remote);
        let replaces_kind = matches!((base, change), (Some(b), Some(c)) if b.kind != c.kind);
        if change.is_none() || replaces_kind {
            self.deletes.push(pb::Change {
                op: Some(pb::change::Op::Delete(pb::DeleteOp {
                    path: remote_path.clone(),
                    recursive: false,
                })),
                precondition: precondition(self.state, path),
            });
        }
        let Some(change) = change else { return };
        let here = &self.local[path];
        // A path whose kind changes was deleted just before (with its own precondition).
        let fresh = if replaces_kind {
            None
        } else {
            precondition(self.state, path)
        };
        match change.kind {
            Kind::Dir => {
                if base.is_none() || replaces_kind {
                    self.directories.push(pb::Change {
                        op: Some(pb::change::Op::MakeDirectory(pb::MakeDirectoryOp {
                            path: remote_path.clone(),
                            parents: true,
                        })),
                        precondition: None,
                    });
                }
                let attributes = set_attributes(remote_path, change, here, None);
                self.attributes.push(attributes);
            }
            Kind::Symlink => self.writes.push(pb::Change {
                op: Some(pb::change::Op::Symlink(pb::SymlinkOp {
                    path: remote_path,
                    target: here.target.clone().unwrap_or_default(),
                    mtime_ns: here.mtime_ns,
                })),
                precondition: fresh,
            }),
            Kind::File => self.add_file(path, remote_path, change, base, fresh),
        }
    }

    /// Adds the change of a file: its mode alone when the session holds its content, else a
    /// write of its content (as [`file_contents`] chose to send it).
    fn add_file(
        &mut self,
        path: &str,
        remote_path: String,
        change: &Remote,
        base: Option<&Remote>,
        fresh: Option<pb::PathPrecondition>,
    ) {
        let here = &self.local[path];
        let content_same = base.is_some_and(|b| b.kind == Kind::File && b.hash == change.hash);
        if content_same {
            // Only the mode changed.
            let attributes = set_attributes(remote_path, change, here, fresh);
            self.attributes.push(attributes);
        } else {
            let (content, chunks) = self.contents.get(path).cloned().unwrap_or_default();
            self.writes.push(pb::Change {
                op: Some(pb::change::Op::Write(pb::WriteOp {
                    path: remote_path,
                    mode: change.mode,
                    content,
                    chunks,
                    mtime_ns: here.mtime_ns,
                })),
                precondition: fresh,
            });
        }
    }

    /// The batch in the order it is applied: deepest deletions first; directories before
    /// what goes in them; attributes last.
    fn into_changes(self) -> Vec<pb::Change> {
        let PushBatch {
            mut deletes,
            mut directories,
            mut writes,
            mut attributes,
            ..
        } = self;
        deletes.reverse();
        let mut batch = deletes;
        batch.append(&mut directories);
        batch.append(&mut writes);
        attributes.reverse();
        batch.append(&mut attributes);
        batch
    }
}

/// The change that gives `remote_path` the mode and modification time of the local path.
fn set_attributes(
    remote_path: String,
    change: &Remote,
    here: &Local,
    precondition: Option<pb::PathPrecondition>,
) -> pb::Change {
    pb::Change {
        op: Some(pb::change::Op::SetAttributes(pb::SetAttributesOp {
            path: remote_path,
            mode: Some(change.mode),
            mtime_ns: Some(here.mtime_ns),
        })),
        precondition,
    }
}

/// Sends a push's batch in one ApplyChanges (applied only at head version `expected`, when
/// not 0); the new head version.
async fn apply_push(
    session: &SessionHandle,
    batch: Vec<pb::Change>,
    expected: u64,
) -> Result<u64, Failure> {
    let request_id = format!("push-{}", uuid::Uuid::new_v4().simple());
    let response = session
        .apply_changes_as(&request_id, batch, expected)
        .await
        .map_err(|e| match e.code() {
            tonic::Code::FailedPrecondition | tonic::Code::Aborted => Failure::Other(format!(
                "the session changed since the last pull, so nothing was pushed ({}): run `aether pull`, then push again",
                e
            )),
            _ => e.into(),
        })?;
    Ok(response.head_version)
}

/// Records the pushed and the converged paths as agreed.
fn record_pushed(
    state: &mut State,
    changes: &Changes,
    sending: &[(&String, &Option<Remote>)],
    local: &BTreeMap<String, Local>,
    remote: &BTreeMap<String, pb::Entry>,
) {
    for (path, change) in sending {
        match change {
            Some(change) => {
                let stamp = local.get(*path).and_then(|l| settled(&l.stamp));
                state.entries.insert(
                    (*path).clone(),
                    Agreed {
                        remote: change.clone(),
                        stamp,
                    },
                );
            }
            None => {
                state.entries.remove(*path);
            }
        }
    }
    for path in &changes.converged {
        match (remote.get(path), local.get(path)) {
            (Some(entry), Some(here)) => {
                state.entries.insert(
                    path.clone(),
                    Agreed {
                        remote: remote_of(entry),
                        stamp: settled(&here.stamp),
                    },
                );
            }
            _ => {
                state.entries.remove(path);
            }
        }
    }
}

/// How each file to push travels: a small file the store lacks goes inline; one it holds is
/// named (one HasBlobs for all of them); a large one is stored chunk by chunk, sending only
/// the chunks the store lacks.
async fn file_contents(
    session: &SessionHandle,
    dir: &Path,
    state: &State,
    sending: &[(&String, &Option<Remote>)],
    local: &BTreeMap<String, Local>,
) -> Result<BTreeMap<String, (bytes::Bytes, Vec<pb::ChunkRef>)>, Failure> {
    let mut small = Vec::new();
    let mut large = Vec::new();
    for (path, change) in sending {
        let Some(change) = change else { continue };
        let base = state.entries.get(*path).map(|a| &a.remote);
        if change.kind != Kind::File
            || base.is_some_and(|b| b.kind == Kind::File && b.hash == change.hash)
        {
            continue;
        }
        // Up to 8 MiB a file is one chunk named by its hash; the inline limit is below that.
        if local[*path].stamp.size <= aether_client::MAX_INLINE_BYTES {
            small.push((*path).clone());
        } else {
            large.push((*path).clone());
        }
    }
    let hashes: Vec<String> = small.iter().map(|p| local[p].state.hash.clone()).collect();
    let missing: BTreeSet<String> = session
        .client()
        .missing_blobs(&hashes)
        .await?
        .into_iter()
        .collect();
    let mut out = BTreeMap::new();
    let mut inline_bytes = 0u64;
    for path in small {
        let here = &local[&path];
        // Inline content stays well under the coordinator's message limit; past the budget,
        // files the store lacks are stored first and named, like large ones.
        if missing.contains(&here.state.hash) && inline_bytes + here.stamp.size > INLINE_BUDGET {
            large.push(path);
            continue;
        }
        let entry = if missing.contains(&here.state.hash) {
            inline_bytes += here.stamp.size;
            let file = dir.join(&path);
            let data = std::fs::read(&file).map_err(|e| Failure::local(&file, e))?;
            (bytes::Bytes::from(data), Vec::new())
        } else {
            let chunk = pb::ChunkRef {
                hash: here.state.hash.clone(),
                size: here.stamp.size,
            };
            (bytes::Bytes::new(), vec![chunk])
        };
        out.insert(path, entry);
    }
    let stored: Vec<(String, Vec<pb::ChunkRef>)> = futures::stream::iter(large)
        .map(|path| async move {
            let chunks = session
                .store_chunks(UploadSource::File(dir.join(&path)))
                .await?;
            Ok::<_, Failure>((path, chunks))
        })
        .buffer_unordered(UPLOADS_AT_ONCE)
        .try_collect()
        .await?;
    for (path, chunks) in stored {
        out.insert(path, (bytes::Bytes::new(), chunks));
    }
    Ok(out)
}

fn report(
    context: &Context,
    what: &str,
    value: serde_json::Value,
    text: &str,
) -> Result<(), Failure> {
    if context.json() {
        println!("{}", json!({ what: value }));
    } else {
        println!("{text}");
    }
    Ok(())
}
