//! The mount as a local disk to real tools (design promise 11): make rebuilds what an edit
//! made stale, git clones, commits and checks out a repository with symlinks, an editor's
//! save (write temp, fsync, rename) lands whole, modes, times and symlinks reach the session,
//! changes made through the API show in the mount within a second, hostile sizes get EFBIG
//! and leave the mount serving, and a `kill -9` of the mount mid-copy leaves the session
//! with whole files only (and everything fsynced before it).

use crate::cli_mount::{entry, names, read, require_fuse, settle, sh, Mount};
use crate::cli_support::Aether;
use crate::common;

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::workspace_service_client::WorkspaceServiceClient;

/// `aether dev`, a gRPC channel to it and a new session.
async fn start() -> (Aether, tonic::transport::Channel, String) {
    let aether = Aether::start().await;
    let channel = common::connect(&aether.server.endpoint()).await.unwrap();
    let session = aether.ok(&["session", "create"]).trim().to_string();
    (aether, channel, session)
}

/// An empty directory to mount on (removed with the guard), and its canonical path.
fn mount_point() -> (tempfile::TempDir, std::path::PathBuf) {
    let mountpoint = tempfile::tempdir().unwrap();
    let dir = mountpoint.path().canonicalize().unwrap();
    (mountpoint, dir)
}

/// Runs a command in `dir`; returns (success, stderr).
fn try_sh(dir: &Path, program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn git(dir: &Path, args: &[&str]) -> String {
    let mut all = vec![
        "-c",
        "user.name=Mount Test",
        "-c",
        "user.email=mount@example.com",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "advice.detachedHead=false",
    ];
    all.extend_from_slice(args);
    sh(dir, "git", &all)
}

async fn stat(channel: &tonic::transport::Channel, session: &str, path: &str) -> pb::Entry {
    WorkspaceServiceClient::new(channel.clone())
        .stat(pb::StatRequest {
            session_id: session.to_string(),
            path: path.to_string(),
            at: None,
        })
        .await
        .unwrap_or_else(|e| panic!("Stat {path:?}: {e}"))
        .into_inner()
        .entry
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_make_rebuilds_after_an_edit_and_keeps_modes_times_and_symlinks() {
    require_fuse();
    let (aether, channel, session) = start().await;
    let (_mountpoint, dir) = mount_point();
    let _mount = Mount::start(&aether, &session, &dir, "mount.log");

    // make: build, edit one source, exactly its target is rebuilt.
    sh(&dir, "mkdir", &["-p", "build/src"]);
    let project = dir.join("build");
    for name in ["a", "b", "c"] {
        std::fs::write(project.join(format!("src/{name}.txt")), format!("{name}\n")).unwrap();
    }
    std::fs::write(
        project.join("Makefile"),
        "SRCS := $(wildcard src/*.txt)\nall: $(SRCS:src/%.txt=out/%.sum)\nout/%.sum: src/%.txt\n\t@mkdir -p out && cksum $< > $@ && echo built $@\n",
    )
    .unwrap();
    let first = sh(&project, "make", &[]);
    assert_eq!(first.matches("built").count(), 3, "{first}");
    assert_eq!(
        sh(&project, "make", &["-q"]),
        "",
        "everything is up to date"
    );
    std::fs::write(project.join("src/b.txt"), "b, edited\n").unwrap();
    let second = sh(&project, "make", &[]);
    assert_eq!(
        second.trim(),
        "built out/b.sum",
        "only b is rebuilt: {second}"
    );
    assert!(std::fs::read_to_string(project.join("out/b.sum"))
        .unwrap()
        .contains(' '));

    // Symlinks: created, read, listed, kept in the session with their target.
    sh(&project, "ln", &["-s", "src/a.txt", "link-to-a"]);
    sh(&project, "ln", &["-s", "../nowhere", "dangling"]);
    assert_eq!(
        std::fs::read_link(project.join("link-to-a")).unwrap(),
        Path::new("src/a.txt")
    );
    assert_eq!(
        std::fs::read_to_string(project.join("link-to-a")).unwrap(),
        "a\n"
    );
    assert!(std::fs::symlink_metadata(project.join("dangling"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Times and modes, files and directories.
    sh(
        &project,
        "touch",
        &["-m", "-d", "2001-02-03 04:05:06.123456789 UTC", "src/c.txt"],
    );
    sh(&project, "chmod", &["700", "src"]);
    sh(&project, "chmod", &["640", "src/a.txt"]);
    let c = std::fs::metadata(project.join("src/c.txt")).unwrap();
    assert_eq!((c.mtime(), c.mtime_nsec()), (981_173_106, 123_456_789));

    settle(&dir);
    let link = stat(&channel, &session, "build/link-to-a").await;
    assert_eq!(link.kind(), pb::EntryKind::Symlink);
    assert_eq!(link.symlink_target, "src/a.txt");
    assert_eq!(
        stat(&channel, &session, "build/dangling")
            .await
            .symlink_target,
        "../nowhere"
    );
    assert_eq!(
        stat(&channel, &session, "build/src/c.txt").await.mtime_ns,
        981_173_106_123_456_789
    );
    assert_eq!(entry(&channel, &session, "build", "src").await.mode, 0o700);
    assert_eq!(
        entry(&channel, &session, "build/src", "a.txt").await.mode,
        0o640
    );
    assert_eq!(
        read(&channel, &session, "build/src/b.txt").await,
        b"b, edited\n"
    );

    // What the model does not hold fails with "not supported here".
    let (ok, err) = try_sh(&project, "ln", &["src/a.txt", "hard"]);
    assert!(!ok && err.contains("not permitted"), "hard link: {err}");
    let (ok, err) = try_sh(&project, "mkfifo", &["fifo"]);
    assert!(!ok && err.contains("not permitted"), "fifo: {err}");

    // rename(2) flags: RENAME_NOREPLACE refuses an existing target, RENAME_EXCHANGE swaps.
    std::fs::write(project.join("left"), b"L").unwrap();
    std::fs::write(project.join("right"), b"R").unwrap();
    assert_eq!(
        renameat2(
            &project.join("left"),
            &project.join("right"),
            libc::RENAME_NOREPLACE
        ),
        Err(libc::EEXIST)
    );
    assert_eq!(
        renameat2(
            &project.join("left"),
            &project.join("right"),
            libc::RENAME_EXCHANGE
        ),
        Ok(())
    );
    assert_eq!(std::fs::read(project.join("left")).unwrap(), b"R");
    assert_eq!(std::fs::read(project.join("right")).unwrap(), b"L");
    settle(&dir);
    assert_eq!(read(&channel, &session, "build/left").await, b"R");
    assert_eq!(read(&channel, &session, "build/right").await, b"L");
    // Names at the length limit swap too (the exchange's temporary name stays short), and a
    // file named like one is left alone.
    let (long_a, long_b) = ("a".repeat(255), "b".repeat(255));
    std::fs::write(project.join(&long_a), b"A").unwrap();
    std::fs::write(project.join(&long_b), b"B").unwrap();
    let ino = std::fs::metadata(project.join(&long_a)).unwrap().ino();
    let bystander = format!(".aether-exchange-{ino}-0");
    std::fs::write(project.join(&bystander), b"bystander").unwrap();
    assert_eq!(
        renameat2(
            &project.join(&long_a),
            &project.join(&long_b),
            libc::RENAME_EXCHANGE
        ),
        Ok(())
    );
    settle(&dir);
    assert_eq!(
        read(&channel, &session, &format!("build/{long_a}")).await,
        b"B"
    );
    assert_eq!(
        read(&channel, &session, &format!("build/{long_b}")).await,
        b"A"
    );
    assert_eq!(
        read(&channel, &session, &format!("build/{bystander}")).await,
        b"bystander"
    );

    // O_EXCL on an existing name, O_APPEND at the end.
    let exclusive = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(project.join("src/a.txt"));
    assert_eq!(
        exclusive.unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(project.join("src/a.txt"))
            .unwrap();
        log.write_all(b"appended\n").unwrap();
        log.sync_all().unwrap();
    }
    assert_eq!(
        read(&channel, &session, "build/src/a.txt").await,
        b"a\nappended\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_survives_hostile_sizes_with_efbig() {
    require_fuse();
    let (aether, channel, session) = start().await;
    let (_mountpoint, dir) = mount_point();
    let _mount = Mount::start(&aether, &session, &dir, "mount.log");

    std::fs::write(dir.join("f"), b"small").unwrap();
    let (ok, err) = try_sh(&dir, "truncate", &["-s", "1152921504606846976", "f"]);
    assert!(!ok && err.contains("too large"), "truncate to 2^60: {err}");
    let (ok, err) = try_sh(&dir, "truncate", &["-s", "999999999999999", "f"]);
    assert!(!ok && err.contains("too large"), "truncate to ~1 PB: {err}");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("f"))
        .unwrap();
    let error = file.write_at(b"x", 1 << 50).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc_efbig()), "{error}");
    // A sparse file within the limit costs no memory or disk for its holes.
    file.set_len(1 << 30).unwrap();
    assert_eq!(std::fs::metadata(dir.join("f")).unwrap().len(), 1 << 30);
    file.set_len(5).unwrap();
    drop(file);

    // The mount still serves, and the file is whole.
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"small");
    settle(&dir);
    assert_eq!(read(&channel, &session, "f").await, b"small");
    assert_eq!(names(&channel, &session, "").await, ["f"]);
}

fn libc_efbig() -> i32 {
    libc::EFBIG
}

/// renameat2(2) with flags; Err(errno) on failure.
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> Result<(), i32> {
    use nix::fcntl::{RenameFlags, AT_FDCWD};
    nix::fcntl::renameat2(
        AT_FDCWD,
        from,
        AT_FDCWD,
        to,
        RenameFlags::from_bits_truncate(flags),
    )
    .map_err(|e| e as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_git_clone_commit_checkout_with_symlinks() {
    require_fuse();
    let (aether, channel, session) = start().await;

    // A repository with symlinks and an executable, on local disk, with two branches.
    let origin = aether.path("origin");
    std::fs::create_dir_all(origin.join("bin")).unwrap();
    git(&origin, &["init", "-q"]);
    std::fs::write(origin.join("tool.sh"), "#!/bin/sh\necho tool\n").unwrap();
    std::fs::set_permissions(
        origin.join("tool.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../tool.sh", origin.join("bin/tool")).unwrap();
    std::fs::write(origin.join("README"), "v1\n").unwrap();
    git(&origin, &["add", "-A"]);
    git(&origin, &["commit", "-q", "-m", "v1"]);
    git(&origin, &["checkout", "-q", "-b", "next"]);
    std::fs::remove_file(origin.join("bin/tool")).unwrap();
    std::os::unix::fs::symlink("../README", origin.join("bin/tool")).unwrap();
    std::os::unix::fs::symlink("README", origin.join("LATEST")).unwrap();
    std::fs::write(origin.join("README"), "v2\n").unwrap();
    git(&origin, &["add", "-A"]);
    git(&origin, &["commit", "-q", "-m", "v2"]);
    git(&origin, &["checkout", "-q", "main"]);

    let (_mountpoint, dir) = mount_point();
    let _mount = Mount::start(&aether, &session, &dir, "mount.log");
    git(
        &dir,
        &["clone", "-q", &origin.display().to_string(), "checkout"],
    );
    let repo = dir.join("checkout");
    assert_eq!(sh(&repo, "bin/tool", &[]), "tool\n");
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    git(&repo, &["checkout", "-q", "next"]);
    assert_eq!(
        std::fs::read_link(repo.join("bin/tool")).unwrap(),
        Path::new("../README")
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("LATEST")).unwrap(),
        "v2\n"
    );
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    git(&repo, &["checkout", "-q", "main"]);
    assert!(!repo.join("LATEST").exists());
    std::fs::write(repo.join("README"), "v1, edited in the mount\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "edit in the mount"]);
    git(&repo, &["fsck", "--strict"]);
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");

    settle(&dir);
    let link = stat(&channel, &session, "checkout/bin/tool").await;
    assert_eq!(link.kind(), pb::EntryKind::Symlink);
    assert_eq!(link.symlink_target, "../tool.sh");
    assert_eq!(
        entry(&channel, &session, "checkout", "tool.sh").await.mode,
        0o755
    );
    assert_eq!(
        read(&channel, &session, "checkout/README").await,
        b"v1, edited in the mount\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_shows_api_changes_within_a_second_and_saves_editors_whole() {
    require_fuse();
    let (aether, channel, session) = start().await;
    aether.write("seed/notes.txt", b"from the API\n");
    aether.ok(&["put", "seed", &format!("{session}:docs")]);
    let (_mountpoint, dir) = mount_point();
    let _mount = Mount::start(&aether, &session, &dir, "mount.log");
    assert_eq!(
        std::fs::read(dir.join("docs/notes.txt")).unwrap(),
        b"from the API\n"
    );

    // An editor's save: temp file, fsync, rename over the original.
    let temp = dir.join("docs/.notes.txt.tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temp).unwrap();
        file.write_all(b"saved by an editor\n").unwrap();
        file.sync_all().unwrap();
    }
    std::fs::rename(&temp, dir.join("docs/notes.txt")).unwrap();
    settle(&dir);
    assert_eq!(
        read(&channel, &session, "docs/notes.txt").await,
        b"saved by an editor\n"
    );
    assert_eq!(names(&channel, &session, "docs").await, ["notes.txt"]);

    // Another writer changes the session; the mount shows it within a second.
    aether.write("other.txt", b"changed elsewhere\n");
    let changed_at = Instant::now();
    aether.ok(&[
        "put",
        &aether.path("other.txt").display().to_string(),
        &format!("{session}:docs/notes.txt"),
    ]);
    aether.ok(&[
        "put",
        &aether.path("other.txt").display().to_string(),
        &format!("{session}:docs/new.txt"),
    ]);
    let deadline = Duration::from_millis(1500);
    loop {
        let content = std::fs::read(dir.join("docs/notes.txt")).unwrap_or_default();
        let listed = std::fs::read_dir(dir.join("docs"))
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name() == "new.txt");
        if content == b"changed elsewhere\n" && listed {
            break;
        }
        assert!(
            changed_at.elapsed() < deadline,
            "the mount still shows {:?} (new.txt listed: {listed}) {:?} after the change",
            String::from_utf8_lossy(&content),
            changed_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_killed_mid_copy_leaves_whole_files_and_keeps_what_was_fsynced() {
    require_fuse();
    let (aether, channel, session) = start().await;
    // 400 files of distinct content to copy.
    let source = aether.path("source");
    std::fs::create_dir_all(&source).unwrap();
    for i in 0..400 {
        std::fs::write(
            source.join(format!("f{i:03}")),
            common::test_bytes(2000 + i * 37, i as u64),
        )
        .unwrap();
    }
    let (_mountpoint, dir) = mount_point();
    let mut mount = Mount::start_with(
        &aether,
        &session,
        &dir,
        "mount.log",
        &["--commit-interval-ms", "20"],
    );
    std::fs::write(dir.join("kept.txt"), b"fsynced before the kill\n").unwrap();
    sh(&dir, "sync", &["kept.txt"]);

    let mut copy = Command::new("cp")
        .args(["-r", &source.display().to_string(), "copy"])
        .current_dir(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the mount once some of the copy has been committed.
    let started = Instant::now();
    loop {
        let committed = WorkspaceServiceClient::new(channel.clone())
            .list_tree(pb::ListTreeRequest {
                session_id: session.clone(),
                path: "copy".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().entries.len())
            .unwrap_or(0);
        if committed > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing of the copy was committed:\n{}",
            mount.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sh(&dir, "kill", &["-9", &mount.pid().to_string()]);
    mount.wait();
    let _ = copy.wait();
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&dir)
        .status();

    assert_eq!(
        read(&channel, &session, "kept.txt").await,
        b"fsynced before the kill\n"
    );
    // Whatever reached the session is whole: every file equals its source, except the one
    // cp had open at the kill, which was never closed and so exists empty.
    let copied = names(&channel, &session, "copy").await;
    assert!(!copied.is_empty());
    let mut in_flight = Vec::new();
    for name in &copied {
        let content = read(&channel, &session, &format!("copy/{name}")).await;
        if content.is_empty() {
            in_flight.push(name.clone());
            continue;
        }
        assert!(
            content == std::fs::read(source.join(name)).unwrap(),
            "copy/{name} is not whole ({} bytes)",
            content.len()
        );
    }
    assert!(in_flight.len() <= 1, "files left empty: {in_flight:?}");
}

/// Kills a mount with `kill -9` and clears its mount point.
fn kill_mount(dir: &Path, mount: &mut Mount) {
    sh(dir, "kill", &["-9", &mount.pid().to_string()]);
    mount.wait();
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .status();
}

/// The files of the mount journal directory of `session`.
fn journal_files(aether: &Aether, session: &str) -> Vec<String> {
    let dir = aether.path("mount-cache").join("journal").join(session);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_killed_after_close_loses_nothing_closed_the_next_mount_sends_it() {
    require_fuse();
    let (aether, channel, session) = start().await;
    let (_mountpoint, dir) = mount_point();
    // Nothing is sent by the interval while the test runs: only the journal holds the changes.
    let mut mount = Mount::start_unflushed(&aether, &session, &dir, "mount.log");
    // A file closed, then opened and written again before its batch went: the batch goes
    // first, so what it had at its close is in the session before it changes.
    std::fs::write(dir.join("open.txt"), b"closed once\n").unwrap();
    let open = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("open.txt"))
        .unwrap();
    open.write_all_at(b"never closed", 0).unwrap();
    assert_eq!(names(&channel, &session, "").await, ["open.txt"]);
    assert_eq!(read(&channel, &session, "open.txt").await, b"closed once\n");
    let big = common::test_bytes(3 * 1024 * 1024 + 17, 5);
    std::fs::create_dir(dir.join("d")).unwrap();
    std::fs::write(dir.join("d/a.txt"), b"alpha\n").unwrap();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("d/a.txt", dir.join("link")).unwrap();
    std::fs::write(dir.join("tmp.txt"), b"renamed\n").unwrap();
    std::fs::rename(dir.join("tmp.txt"), dir.join("d/b.txt")).unwrap();
    std::fs::set_permissions(dir.join("d/b.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        names(&channel, &session, "").await,
        ["open.txt"],
        "the changes must not have reached the session before the kill"
    );
    // Killed with open.txt still open: what it had at its last close is all that counts.
    kill_mount(&dir, &mut mount);
    drop(open);
    assert_eq!(names(&channel, &session, "").await, ["open.txt"]);

    // The next mount of the session sends what the killed one had journaled, before serving.
    let mut again = Mount::start_unflushed(&aether, &session, &dir, "again.log");
    assert!(
        again.log().contains("change(s) an earlier mount"),
        "{}",
        again.log()
    );
    assert_eq!(read(&channel, &session, "d/a.txt").await, b"alpha\n");
    assert_eq!(read(&channel, &session, "big.bin").await, big);
    assert_eq!(read(&channel, &session, "d/b.txt").await, b"renamed\n");
    assert_eq!(stat(&channel, &session, "d/b.txt").await.mode, 0o600);
    assert_eq!(read(&channel, &session, "open.txt").await, b"closed once\n");
    let link = stat(&channel, &session, "link").await;
    assert_eq!(link.kind, pb::EntryKind::Symlink as i32);
    assert_eq!(link.symlink_target, "d/a.txt");
    let mut top = names(&channel, &session, "").await;
    top.sort();
    assert_eq!(top, ["big.bin", "d", "link", "open.txt"]);
    // The mount shows them too, and the dead mount's journal is gone: one lock, one segment.
    assert_eq!(std::fs::read(dir.join("d/b.txt")).unwrap(), b"renamed\n");
    let files = journal_files(&aether, &session);
    assert_eq!(files.len(), 2, "{files:?}");
    sh(&dir, "fusermount3", &["-u", &dir.display().to_string()]);
    again.wait();
    assert!(journal_files(&aether, &session).is_empty());
}

/// Mounts `session` again, which recovers the journal of a mount that was killed after its
/// batch (mkdir d, d/f.txt, d moved to e) applied at `version`, and checks nothing applied
/// twice.
async fn recover_once(
    aether: &Aether,
    channel: &tonic::transport::Channel,
    session: &str,
    dir: &Path,
    version: u64,
) {
    let again = Mount::start_unflushed(aether, session, dir, "again.log");
    assert!(
        again.log().contains("change(s) an earlier mount"),
        "{}",
        again.log()
    );
    assert_eq!(names(channel, session, "").await, ["e"]);
    assert_eq!(read(channel, session, "e/f.txt").await, b"first\n");
    assert_eq!(
        common::head_version(channel, session).await,
        version,
        "the recovered batch was applied again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_batch_the_session_already_has_is_not_applied_again() {
    require_fuse();
    let (aether, channel, session) = start().await;
    let (_mountpoint, dir) = mount_point();
    let mut mount = Mount::start_unflushed(&aether, &session, &dir, "mount.log");
    // Applied a second time, these changes leave a directory d beside e (the move finds e).
    std::fs::create_dir(dir.join("d")).unwrap();
    std::fs::write(dir.join("d/f.txt"), b"first\n").unwrap();
    std::fs::rename(dir.join("d"), dir.join("e")).unwrap();
    // Keep the journal as a mount killed right after its batch applied would leave it.
    let journal = aether.path("mount-cache").join("journal").join(&session);
    let kept = aether.path("kept-journal");
    std::fs::create_dir_all(&kept).unwrap();
    for name in journal_files(&aether, &session) {
        std::fs::copy(journal.join(&name), kept.join(&name)).unwrap();
    }
    sh(&dir, "sync", &["e/f.txt"]);
    assert_eq!(read(&channel, &session, "e/f.txt").await, b"first\n");
    let version = common::head_version(&channel, &session).await;
    sh(&dir, "fusermount3", &["-u", &dir.display().to_string()]);
    mount.wait();
    for entry in std::fs::read_dir(&kept).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), journal.join(entry.file_name())).unwrap();
    }

    recover_once(&aether, &channel, &session, &dir, version).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applied_before_the_kill_is_answered_on_recovery_not_applied_again() {
    require_fuse();
    // The session applies the mount's batch but never answers it: the mount is killed with
    // the batch applied and still in its journal.
    let mut aether = Aether::start_with(&["--test-stall-after-commit", "ApplyChanges"]).await;
    let channel = common::connect(&aether.server.endpoint()).await.unwrap();
    let session = aether.ok(&["session", "create"]).trim().to_string();
    let (_mountpoint, dir) = mount_point();
    let mut mount = Mount::start_unflushed(&aether, &session, &dir, "mount.log");
    // Applied a second time, this batch leaves a directory d beside e (the move finds e).
    std::fs::create_dir(dir.join("d")).unwrap();
    std::fs::write(dir.join("d/f.txt"), b"first\n").unwrap();
    std::fs::rename(dir.join("d"), dir.join("e")).unwrap();
    // fsync sends them as one batch; it never returns (the answer never comes).
    let mut syncing = Command::new("sync")
        .arg("e/f.txt")
        .current_dir(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while names(&channel, &session, "").await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the batch was not applied:\n{}",
            mount.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let version = common::head_version(&channel, &session).await;
    kill_mount(&dir, &mut mount);
    let _ = syncing.wait();
    // The stalled call holds the session: a new server process on the same data lets the
    // recovery through.
    aether.server.restart().await.unwrap();
    let channel = common::connect(&aether.server.endpoint()).await.unwrap();

    recover_once(&aether, &channel, &session, &dir, version).await;
}

/// A file closed and written again waits for the batch that carries its closed content only
/// briefly: with the server stopped, the write goes ahead (it would otherwise wait out every
/// retry of the batch), and once the server answers again the session gets the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_of_a_closed_file_does_not_wait_for_a_server_that_is_away() {
    require_fuse();
    let (aether, channel, session) = start().await;
    let (_mountpoint, dir) = mount_point();
    let mut mount = Mount::start_unflushed(&aether, &session, &dir, "mount.log");
    std::fs::write(dir.join("f.txt"), b"closed once\n").unwrap();
    aether.server.pause().unwrap();
    let started = Instant::now();
    let write = {
        let path = dir.join("f.txt");
        tokio::task::spawn_blocking(move || std::fs::write(path, b"written again\n"))
    };
    let written = tokio::time::timeout(Duration::from_secs(20), write).await;
    let waited = started.elapsed();
    aether.server.resume().unwrap();
    written
        .unwrap_or_else(|_| panic!("the write waited on the stopped server:\n{}", mount.log()))
        .unwrap()
        .unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "the write took {waited:?}"
    );
    sh(&dir, "fusermount3", &["-u", &dir.display().to_string()]);
    mount.wait();
    assert_eq!(read(&channel, &session, "f.txt").await, b"written again\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_passes_pjdfstest_for_what_the_model_holds() {
    require_fuse();
    let (aether, _, session) = start().await;
    let (_mountpoint, dir) = mount_point();
    // pjdfstest switches to other users for permission checks: they must reach the mount.
    let _mount = Mount::start_with(&aether, &session, &dir, "mount.log", &["--allow-other"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pjdfstest.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/pjdfstest.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pjdfstest failed on the mount (install it with scripts/install-deps.sh; exclusions \
         with reasons are in scripts/pjdfstest-excluded.txt):\n{stdout}\n{stderr}"
    );
    let summary = stdout
        .lines()
        .chain(stderr.lines())
        .find(|l| l.starts_with("pjdfstest: "))
        .unwrap_or_default()
        .to_string();
    assert!(summary.contains(" 0 failed"), "{summary}");
    let passed: usize = summary
        .trim_start_matches("pjdfstest: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 150,
        "only {passed} pjdfstest tests passed: {summary}"
    );
}
