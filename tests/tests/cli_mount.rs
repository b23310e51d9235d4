//! `aether mount SESSION DIR` through real FUSE, as root: everyday tools (ls, cat, cp, mkdir,
//! mv, rm, an editor's save-by-rename, git, tar) work in the mounted directory, every change is
//! visible through the gRPC API once fsynced (`sync DIR` commits everything the mount queued),
//! and the mount ends with exit 0 on `fusermount3 -u` and on
//! SIGINT. Needs /dev/fuse and fusermount3 (`apt-get install -y fuse3`); fails, never skips,
//! without them.

use crate::cli_support;
use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use cli_support::Aether;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(30);

/// Fails with how to get FUSE when this machine lacks it.
pub(crate) fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing, so `aether mount` cannot be tested: load the module (`modprobe \
         fuse`), or give the container the device (`docker run --device /dev/fuse --cap-add \
         SYS_ADMIN ...`)"
    );
    let found = Command::new("fusermount3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "fusermount3 is missing: `apt-get install -y fuse3` (scripts/install-deps.sh does it)"
    );
}

/// Whether `dir` is a mount point, from /proc/self/mountinfo.
pub(crate) fn is_mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.display().to_string();
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(dir.as_str()))
}

/// A running `aether mount`; unmounts and kills it if the test fails half-way.
pub(crate) struct Mount {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Mount {
    pub(crate) fn start(aether: &Aether, session: &str, dir: &Path, log_name: &str) -> Mount {
        Mount::start_with(aether, session, dir, log_name, &[])
    }

    /// Starts `aether mount` whose commit interval never comes while a test runs: changes
    /// reach the session only through fsync, unmount, or the journal of a later mount.
    pub(crate) fn start_unflushed(
        aether: &Aether,
        session: &str,
        dir: &Path,
        log_name: &str,
    ) -> Mount {
        let slow = ["--commit-interval-ms", "600000"];
        Mount::start_with(aether, session, dir, log_name, &slow)
    }

    /// Starts `aether mount` with extra flags; content is cached in the test's directory.
    pub(crate) fn start_with(
        aether: &Aether,
        session: &str,
        dir: &Path,
        log_name: &str,
        flags: &[&str],
    ) -> Mount {
        let log = aether.path(log_name);
        let stderr = std::fs::File::create(&log).unwrap();
        let cache = aether.path("mount-cache").display().to_string();
        let child = aether
            .command()
            .args([
                "mount",
                session,
                &dir.display().to_string(),
                "--cache-dir",
                &cache,
            ])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn aether mount");
        let mut mount = Mount {
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
        };
        let start = Instant::now();
        while !is_mounted(dir) {
            if let Some(status) = mount.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "aether mount exited ({status}) before mounting:\n{}",
                    mount.log()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} was not mounted within {DEADLINE:?}:\n{}",
                dir.display(),
                mount.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        mount
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for the mount process to end; returns its status.
    pub(crate) fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "aether mount did not exit within {DEADLINE:?} of the unmount:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Commits everything the mount at `dir` has queued: fsync of the mount's root directory
/// (coreutils `sync DIR`) returns once all of it is in the session.
pub(crate) fn settle(dir: &Path) {
    sh(dir, "sync", &["."]);
}

/// Runs a command in `dir`; it must succeed. Returns stdout.
pub(crate) fn sh(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} in {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The names directly in `path`, through ListTree.
pub(crate) async fn names(channel: &Channel, session: &str, path: &str) -> Vec<String> {
    let response = WorkspaceServiceClient::new(channel.clone())
        .list_tree(pb::ListTreeRequest {
            session_id: session.to_string(),
            path: path.to_string(),
            recursive: false,
            at: None,
            page: Some(pb::PageRequest {
                page_size: 1000,
                page_token: String::new(),
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("ListTree {path:?}: {e}"))
        .into_inner();
    response
        .entries
        .iter()
        .map(|e| e.path.rsplit('/').next().unwrap().to_string())
        .collect()
}

/// The entry `name` in directory `path`, through ListTree.
pub(crate) async fn entry(channel: &Channel, session: &str, path: &str, name: &str) -> pb::Entry {
    let response = WorkspaceServiceClient::new(channel.clone())
        .list_tree(pb::ListTreeRequest {
            session_id: session.to_string(),
            path: path.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("ListTree {path:?}: {e}"))
        .into_inner();
    response
        .entries
        .into_iter()
        .find(|e| e.path.rsplit('/').next() == Some(name))
        .unwrap_or_else(|| panic!("{path}/{name} is not listed"))
}

pub(crate) async fn read(channel: &Channel, session: &str, path: &str) -> Vec<u8> {
    common::read_file(channel, session, path)
        .await
        .unwrap_or_else(|e| panic!("ReadFile {path:?}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_mount_serves_everyday_tools_and_unmounts_cleanly() {
    require_fuse();
    let aether = Aether::start().await;
    let channel = common::connect(&aether.server.endpoint()).await.unwrap();
    let session = aether.ok(&["session", "create"]).trim().to_string();
    aether.write("seed/notes/hello.txt", b"hello from the API\n");
    aether.ok(&["put", "seed", &format!("{session}:project")]);

    let mountpoint = tempfile::tempdir().unwrap();
    let dir = mountpoint.path().canonicalize().unwrap();
    let mut mount = Mount::start(&aether, &session, &dir, "mount.log");

    // ls and cat see what the API wrote.
    let listing = sh(&dir, "ls", &["-la", "project/notes"]);
    assert!(listing.contains("hello.txt"), "{listing}");
    assert_eq!(
        sh(&dir, "cat", &["project/notes/hello.txt"]),
        "hello from the API\n"
    );

    // cp a file in (bigger than one FUSE write, with every byte value).
    let big = common::test_bytes(300_000, 7);
    aether.write("local.bin", &big);
    sh(
        &dir,
        "cp",
        &[
            &aether.path("local.bin").display().to_string(),
            "project/data.bin",
        ],
    );
    settle(&dir);
    assert_eq!(read(&channel, &session, "project/data.bin").await, big);
    assert_eq!(std::fs::read(dir.join("project/data.bin")).unwrap(), big);

    // mkdir, mv, rm.
    sh(&dir, "mkdir", &["-p", "project/docs/drafts"]);
    settle(&dir);
    assert_eq!(names(&channel, &session, "project/docs").await, ["drafts"]);
    sh(&dir, "mv", &["project/data.bin", "project/docs/data.bin"]);
    settle(&dir);
    assert_eq!(read(&channel, &session, "project/docs/data.bin").await, big);
    let top = names(&channel, &session, "project").await;
    assert!(!top.contains(&"data.bin".to_string()), "{top:?}");
    sh(&dir, "rm", &["project/docs/data.bin"]);
    settle(&dir);
    assert_eq!(names(&channel, &session, "project/docs").await, ["drafts"]);
    sh(&dir, "rmdir", &["project/docs/drafts"]);
    settle(&dir);
    assert!(names(&channel, &session, "project/docs").await.is_empty());

    // An editor's save: write a temporary file, then rename it over the original.
    let note = dir.join("project/notes/hello.txt");
    let temp = dir.join("project/notes/.hello.txt.swp");
    std::fs::write(&temp, b"edited in place\n").unwrap();
    std::fs::rename(&temp, &note).unwrap();
    settle(&dir);
    assert_eq!(
        read(&channel, &session, "project/notes/hello.txt").await,
        b"edited in place\n"
    );
    assert_eq!(
        names(&channel, &session, "project/notes").await,
        ["hello.txt"]
    );
    assert_eq!(std::fs::read(&note).unwrap(), b"edited in place\n");
    // Appending and truncating through the mount.
    sh(&dir, "sh", &["-c", "echo more >> project/notes/hello.txt"]);
    settle(&dir);
    assert_eq!(
        read(&channel, &session, "project/notes/hello.txt").await,
        b"edited in place\nmore\n"
    );
    sh(&dir, "truncate", &["-s", "6", "project/notes/hello.txt"]);
    settle(&dir);
    assert_eq!(
        read(&channel, &session, "project/notes/hello.txt").await,
        b"edited"
    );

    // chmod +x is stored, and the script runs from the mount.
    std::fs::write(
        dir.join("project/run.sh"),
        b"#!/bin/sh\necho ran from the mount\n",
    )
    .unwrap();
    sh(&dir, "chmod", &["+x", "project/run.sh"]);
    settle(&dir);
    assert_eq!(
        sh(&dir.join("project"), "./run.sh", &[]),
        "ran from the mount\n"
    );
    assert_eq!(
        entry(&channel, &session, "project", "run.sh").await.mode,
        0o755
    );

    // A real tool: git init, add, commit, and read the history back.
    let git = |args: &[&str]| {
        let mut all = vec![
            "-c",
            "user.name=Mount Test",
            "-c",
            "user.email=mount@example.com",
            "-c",
            "init.defaultBranch=main",
        ];
        all.extend_from_slice(args);
        sh(&dir.join("project"), "git", &all)
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "through the mount"]);
    assert!(git(&["log", "--oneline"]).contains("through the mount"));
    assert_eq!(git(&["status", "--porcelain"]), "");
    settle(&dir);
    assert_eq!(
        read(&channel, &session, "project/.git/HEAD").await,
        b"ref: refs/heads/main\n"
    );
    let main_ref =
        String::from_utf8(read(&channel, &session, "project/.git/refs/heads/main").await).unwrap();
    assert_eq!(main_ref.trim().len(), 40, "{main_ref:?}");
    assert_eq!(git(&["rev-parse", "HEAD"]).trim(), main_ref.trim());

    // Another: tar a directory up and unpack it elsewhere in the mount.
    sh(
        &dir,
        "tar",
        &["-cf", "project.tar", "--exclude=.git", "project"],
    );
    sh(&dir, "mkdir", &["unpacked"]);
    sh(&dir, "tar", &["-xf", "project.tar", "-C", "unpacked"]);
    settle(&dir);
    sh(
        &dir,
        "diff",
        &["-r", "--exclude=.git", "project", "unpacked/project"],
    );
    assert_eq!(
        read(&channel, &session, "unpacked/project/notes/hello.txt").await,
        b"edited"
    );
    let mut root = names(&channel, &session, "").await;
    root.sort();
    assert_eq!(root, ["project", "project.tar", "unpacked"]);

    // fusermount3 -u ends the mount; the command exits 0.
    sh(
        &aether.path(""),
        "fusermount3",
        &["-u", &dir.display().to_string()],
    );
    let status = mount.wait();
    assert!(
        status.success(),
        "exit {status} after fusermount3 -u:\n{}",
        mount.log()
    );
    assert!(!is_mounted(&dir));

    // Ctrl-C (SIGINT) unmounts too, and the files are all still there.
    let mut mount = Mount::start(&aether, &session, &dir, "mount2.log");
    assert_eq!(
        std::fs::read(dir.join("project/notes/hello.txt")).unwrap(),
        b"edited"
    );
    sh(
        &aether.path(""),
        "kill",
        &["-INT", &mount.pid().to_string()],
    );
    let status = mount.wait();
    assert!(
        status.success(),
        "exit {status} after SIGINT:\n{}",
        mount.log()
    );
    assert!(!is_mounted(&dir), "SIGINT left {} mounted", dir.display());
    assert!(mount.log().contains("unmounted"), "{}", mount.log());
}

/// The content cache is shared by mounts and outlives them, without an fsync per file: a
/// cached file cut short (as a machine crash can leave one) is never served; the mount fetches
/// the content again and the cache is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_mount_refetches_a_cached_file_cut_short() {
    require_fuse();
    let aether = Aether::start().await;
    let channel = common::connect(&aether.server.endpoint()).await.unwrap();
    let session = aether.ok(&["session", "create"]).trim().to_string();
    let content = common::test_bytes(100_000, 11);
    aether.write("seed.bin", &content);
    aether.ok(&["put", "seed.bin", &format!("{session}:data.bin")]);
    let hash = entry(&channel, &session, "", "data.bin").await.hash;
    let cache = aether.path("mount-cache").join("content");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join(&hash), &content[..4096]).unwrap();

    let mountpoint = tempfile::tempdir().unwrap();
    let dir = mountpoint.path().canonicalize().unwrap();
    let mut mount = Mount::start(&aether, &session, &dir, "mount.log");
    let served = std::fs::read(dir.join("data.bin")).unwrap();
    assert!(
        served == content,
        "served {} bytes, not the content",
        served.len()
    );
    let cached = std::fs::read(cache.join(&hash)).unwrap();
    assert!(
        cached == content,
        "cached {} bytes, not the content",
        cached.len()
    );
    sh(
        Path::new("/"),
        "fusermount3",
        &["-u", &dir.display().to_string()],
    );
    assert!(mount.wait().success(), "{}", mount.log());
}
