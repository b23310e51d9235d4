//! Symlinks, modes and modification times end to end through the real `aether` binary against
//! `aetherd dev`: put then get, export then GNU tar, GNU tar then import, diff of mode, kind
//! and time changes, and the rule that `aether get` never writes through a symlink.

use crate::cli_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cli_support::Aether;
use serde_json::Value;

/// One local entry as the tests compare it: everything a round trip must keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Local {
    pub(crate) path: String,
    kind: &'static str,
    /// Permission bits with set-ID and sticky; 0 for a symlink (Linux ignores them).
    mode: u32,
    mtime_ns: i64,
    /// A file's bytes.
    content: Vec<u8>,
    /// A symlink's target.
    target: Option<String>,
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// Every entry below `root`, sorted, never following a symlink.
pub(crate) fn describe(root: &Path) -> Vec<Local> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Local>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kind = meta.file_type();
            let (kind, mode, content, target) = if kind.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                ("symlink", 0, Vec::new(), Some(target.display().to_string()))
            } else if kind.is_dir() {
                ("directory", meta.mode() & 0o7777, Vec::new(), None)
            } else {
                (
                    "file",
                    meta.mode() & 0o7777,
                    std::fs::read(&path).unwrap(),
                    None,
                )
            };
            out.push(Local {
                path: rel,
                kind,
                mode,
                mtime_ns: mtime_ns(&meta),
                content,
                target,
            });
            if kind == "directory" {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// A directory's own mode and modification time.
fn own(dir: &Path) -> (u32, i64) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    (meta.mode() & 0o7777, mtime_ns(&meta))
}

fn run(program: &str, args: &[&str], cwd: &Path) -> std::process::Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Sets the modification time of `path` itself (a link, not its target) with GNU touch.
fn touch(path: &Path, seconds: i64, nanos: u32) {
    let stamp = format!("@{seconds}.{nanos:09}");
    let path = path.display().to_string();
    run("touch", &["-h", "-d", &stamp, &path], Path::new("/"));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with nested directories, an executable, a 0600 file, a 0700 directory, a relative,
/// a dangling and an absolute symlink, and a distinct time (most with nanoseconds, one before
/// 1970, one whole second) on every entry, the directories' set last, deepest first.
pub(crate) fn make_rich_tree(root: &Path) {
    let dirs = ["src", "src/nested", "src/nested/deep", "private", "empty"];
    for dir in dirs {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let files: [(&str, &[u8], u32); 6] = [
        ("run.sh", b"#!/bin/sh\necho run\n", 0o755),
        ("secret.txt", b"only me\n", 0o600),
        ("src/main.rs", b"fn main() {}\n", 0o644),
        ("src/nested/deep/data.bin", &[7u8; 70_000], 0o644),
        ("private/key", b"k", 0o400),
        ("empty-file", b"", 0o644),
    ];
    for (path, data, mode) in files {
        std::fs::write(root.join(path), data).unwrap();
        chmod(&root.join(path), mode);
    }
    let links = [
        ("src/link-to-main", "main.rs"),
        ("src/nested/up", "../../run.sh"),
        ("dangling", "does/not/exist"),
        ("absolute", "/etc/passwd"),
    ];
    for (path, target) in links {
        std::os::unix::fs::symlink(target, root.join(path)).unwrap();
    }
    chmod(&root.join("private"), 0o700);
    chmod(&root.join("src/nested"), 0o750);
    let mut leaves: Vec<&str> = files.iter().map(|f| f.0).collect();
    leaves.extend(links.iter().map(|l| l.0));
    let base = 1_600_000_000i64;
    for (i, path) in leaves.iter().enumerate() {
        let i = i as i64;
        touch(
            &root.join(path),
            base + i * 1000,
            (i as u32 + 1) * 111_111_111 % 1_000_000_000,
        );
    }
    // One whole second, one before 1970.
    touch(&root.join("secret.txt"), base + 77, 0);
    touch(&root.join("empty-file"), -1_000, 250_000_000);
    let mut dirs: Vec<&str> = dirs.to_vec();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for (i, dir) in dirs.iter().enumerate() {
        touch(
            &root.join(dir),
            base + 500_000 + i as i64,
            987_654_321 - i as u32,
        );
    }
    touch(root, base + 900_000, 123_456_789);
}

fn assert_same_tree(copy: &Path, original: &Path) {
    let (got, want) = (describe(copy), describe(original));
    assert_eq!(got.len(), want.len(), "{got:#?}\n{want:#?}");
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(got, want);
    }
    let copy_arg = copy.display().to_string();
    let original_arg = original.display().to_string();
    run(
        "diff",
        &["-r", "--no-dereference", &original_arg, &copy_arg],
        Path::new("/"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_put_and_get_keep_links_modes_and_times() {
    let aether = Aether::start().await;
    let s = aether.create_session(&["suite=attributes"]);
    let tree = aether.path("tree");
    make_rich_tree(&tree);

    let put = aether.json(&["put", "tree", &format!("{s}:t")]);
    assert_eq!(put["files"], 6, "{put}");
    assert_eq!(put["symlinks"], 4, "{put}");

    // The session holds the links as links, with their own times.
    let link = aether.json(&["stat", &format!("{s}:t/src/link-to-main")]);
    assert_eq!(link["kind"], "symlink", "{link}");
    assert_eq!(link["symlink_target"], "main.rs");
    let local_link = std::fs::symlink_metadata(tree.join("src/link-to-main")).unwrap();
    assert_eq!(link["mtime_ns"], mtime_ns(&local_link));
    let text = aether.ok(&["stat", &format!("{s}:t/absolute")]);
    assert!(text.contains("target: /etc/passwd"), "{text}");
    let private = aether.json(&["stat", &format!("{s}:t/private")]);
    assert_eq!(private["mode"], "0700");
    assert_eq!(private["mtime_ns"], own(&tree.join("private")).1);
    let ls = aether.ok(&["ls", &format!("{s}:t/src")]);
    assert!(ls.contains("link-to-main -> main.rs"), "{ls}");
    assert!(ls.contains("MODIFIED"), "{ls}");
    let ls = aether.json(&["ls", &format!("{s}:t")]);
    let dangling = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "t/dangling")
        .unwrap();
    assert_eq!(dangling["symlink_target"], "does/not/exist", "{dangling}");
    let tree_text = aether.ok(&["tree", &format!("{s}:t")]);
    assert!(tree_text.contains("up -> ../../run.sh"), "{tree_text}");

    // Down again: every entry equal in kind, mode, time, bytes and target, the top included.
    let got = aether.json(&["get", &format!("{s}:t"), "copy"]);
    assert_eq!(got["symlinks"], 4, "{got}");
    assert_eq!(got["files"], 6, "{got}");
    assert_same_tree(&aether.path("copy"), &tree);
    assert_eq!(own(&aether.path("copy")), own(&tree));

    // Uploading the same tree again changes nothing: the directories' times were set after
    // their children, so creating those does not move them.
    let head = aether.json(&["session", "info", &s])["head_root"].clone();
    let again = aether.json(&["put", "tree", &format!("{s}:t")]);
    assert_eq!(again["chunks_uploaded"], 0, "{again}");
    assert_eq!(again["head_root"], head, "{again}");

    // Getting into the same directory again overwrites in place, links included.
    aether.ok(&["get", &format!("{s}:t"), "copy"]);
    assert_same_tree(&aether.path("copy"), &tree);

    // A single file and a single link.
    aether.ok(&["get", &format!("{s}:t/secret.txt"), "one.txt"]);
    let one = std::fs::metadata(aether.path("one.txt")).unwrap();
    assert_eq!(one.mode() & 0o7777, 0o600);
    assert_eq!(
        mtime_ns(&one),
        mtime_ns(&std::fs::metadata(tree.join("secret.txt")).unwrap())
    );
    aether.ok(&["get", &format!("{s}:t/src/nested/up"), "up-link"]);
    assert_eq!(
        std::fs::read_link(aether.path("up-link")).unwrap(),
        PathBuf::from("../../run.sh")
    );
    assert_eq!(
        mtime_ns(&std::fs::symlink_metadata(aether.path("up-link")).unwrap()),
        mtime_ns(&std::fs::symlink_metadata(tree.join("src/nested/up")).unwrap())
    );

    // Sockets are skipped and named.
    let _socket = std::os::unix::net::UnixListener::bind(tree.join("sock")).unwrap();
    let run = aether.run(&["put", "tree", &format!("{s}:t2")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("skipped") && run.stderr.contains("sock"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_archives_keep_links_modes_and_times_with_gnu_tar() {
    let aether = Aether::start().await;
    let s = aether.create_session(&["suite=attributes"]);
    let tree = aether.path("tree");
    make_rich_tree(&tree);
    aether.ok(&["put", "tree", &format!("{s}:t")]);

    // Export, then extract with GNU tar.
    aether.ok(&["export", &s, "t.tar", "--path", "t"]);
    let extracted = aether.path("extracted");
    std::fs::create_dir(&extracted).unwrap();
    run(
        "tar",
        &["-xf", "t.tar", "-C", "extracted"],
        aether.work.path(),
    );
    assert_same_tree(&extracted, &tree);

    // A POSIX archive made by GNU tar (nanosecond times in PAX records), imported and
    // downloaded.
    run(
        "tar",
        &["--format=posix", "-cf", "gnu.tar", "tree"],
        aether.work.path(),
    );
    let t = aether.create_session(&["suite=attributes"]);
    let imported = aether.json(&["import", &format!("{t}:imp"), "gnu.tar"]);
    assert!(imported["files"].as_u64().unwrap() >= 6, "{imported}");
    let link = aether.json(&["stat", &format!("{t}:imp/tree/dangling")]);
    assert_eq!(link["kind"], "symlink");
    assert_eq!(link["symlink_target"], "does/not/exist");
    aether.ok(&["get", &format!("{t}:imp/tree"), "from-gnu"]);
    assert_same_tree(&aether.path("from-gnu"), &tree);
    assert_eq!(own(&aether.path("from-gnu")), own(&tree));

    // And what the import holds exports to the same archive contents again.
    aether.ok(&["export", &t, "again.tar", "--path", "imp/tree"]);
    let again = aether.path("again");
    std::fs::create_dir(&again).unwrap();
    run(
        "tar",
        &["-xf", "again.tar", "-C", "again"],
        aether.work.path(),
    );
    assert_same_tree(&again, &tree);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_get_never_writes_through_a_symlink() {
    let aether = Aether::start().await;
    // The directory a hostile session aims at, outside the CLI's scratch directory.
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = outside_dir.path().to_path_buf();
    std::fs::write(outside.join("marker"), b"untouched\n").unwrap();
    chmod(&outside.join("marker"), 0o644);
    touch(&outside.join("marker"), 1_500_000_000, 0);
    touch(&outside, 1_500_000_000, 0);
    let untouched = || {
        assert_eq!(
            describe(&outside),
            vec![Local {
                path: "marker".into(),
                kind: "file",
                mode: 0o644,
                mtime_ns: 1_500_000_000_000_000_000,
                content: b"untouched\n".to_vec(),
                target: None,
            }]
        );
        assert_eq!(
            own(&outside).1,
            1_500_000_000_000_000_000,
            "outside dir touched"
        );
    };
    let outside_arg = outside.display().to_string();

    // A session whose links point outside, absolutely and by climbing.
    let s = aether.create_session(&["suite=escape"]);
    let evil = aether.path("evil-src");
    std::fs::create_dir(&evil).unwrap();
    std::os::unix::fs::symlink(&outside, evil.join("evil")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../..", evil.join("climb")).unwrap();
    std::os::unix::fs::symlink(outside.join("marker"), evil.join("marker")).unwrap();
    std::fs::write(evil.join("ok.txt"), b"fine\n").unwrap();
    aether.ok(&["put", "evil-src", &format!("{s}:d")]);

    // Into a fresh directory: the links are made as links, nothing outside changes.
    aether.ok(&["get", &format!("{s}:d"), "fresh"]);
    assert_eq!(
        std::fs::read_link(aether.path("fresh/evil")).unwrap(),
        outside
    );
    assert_eq!(
        std::fs::read(aether.path("fresh/ok.txt")).unwrap(),
        b"fine\n"
    );
    untouched();

    // A second session where those names are a directory and a file: getting it into the
    // same directory would write through the links left there. It is refused.
    let t = aether.create_session(&["suite=escape"]);
    aether.write("plain-src/evil/marker", b"pwned\n");
    aether.write("plain-src/evil/new.txt", b"pwned\n");
    aether.write("plain-src/marker", b"pwned\n");
    aether.ok(&["put", "plain-src", &format!("{t}:d")]);
    let refused = aether.fails(&["get", &format!("{t}:d"), "fresh"], 1);
    assert!(
        refused.contains("refusing to write") && refused.contains("symbolic link"),
        "{refused}"
    );
    untouched();

    // The same with a link the user left: a directory component, and a file's own name.
    let planted = aether.path("planted");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::symlink(&outside, planted.join("evil")).unwrap();
    let refused = aether.fails(&["get", &format!("{t}:d"), "planted"], 1);
    assert!(refused.contains("symbolic link"), "{refused}");
    untouched();
    let planted_file = aether.path("planted-file");
    std::fs::create_dir(&planted_file).unwrap();
    std::os::unix::fs::symlink(outside.join("marker"), planted_file.join("marker")).unwrap();
    let u = aether.create_session(&["suite=escape"]);
    aether.write("only-marker/marker", b"pwned\n");
    aether.ok(&["put", "only-marker", &format!("{u}:d")]);
    let refused = aether.fails(&["get", &format!("{u}:d"), "planted-file"], 1);
    assert!(refused.contains("symbolic link"), "{refused}");
    untouched();

    // An archive that makes a link and then writes below it is refused whole by import; a
    // link alone is accepted and is only data.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder
        .append_link(&mut header, "evil", &outside_arg)
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(6);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "evil/marker", &b"pwned\n"[..])
        .unwrap();
    std::fs::write(aether.path("through.tar"), builder.into_inner().unwrap()).unwrap();
    let v = aether.create_session(&["suite=escape"]);
    let refused = aether.fails(&["import", &format!("{v}:x"), "through.tar"], 1);
    assert!(refused.contains("symlink"), "{refused}");
    assert_eq!(aether.json(&["tree", &v]).as_array().unwrap().len(), 0);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder
        .append_link(&mut header, "evil", "../../outside")
        .unwrap();
    std::fs::write(aether.path("link.tar"), builder.into_inner().unwrap()).unwrap();
    aether.ok(&["import", &format!("{v}:x"), "link.tar"]);
    aether.ok(&["get", &format!("{v}:x"), "from-archive"]);
    assert_eq!(
        std::fs::read_link(aether.path("from-archive/evil")).unwrap(),
        PathBuf::from("../../outside")
    );
    untouched();
}

/// The entries of `aether diff -o json`, by path.
fn diff_entries(aether: &Aether, args: &[&str]) -> std::collections::BTreeMap<String, Value> {
    aether.json(args)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_diff_tells_content_mode_kind_target_and_time_apart() {
    let aether = Aether::start().await;
    let s = aether.create_session(&["suite=diff"]);
    for name in ["touched.txt", "chmodded.txt", "replaced.txt", "edited.txt"] {
        aether.write(&format!("d/{name}"), name.as_bytes());
    }
    std::fs::create_dir(aether.path("d/sub")).unwrap();
    std::os::unix::fs::symlink("touched.txt", aether.path("d/link")).unwrap();
    aether.ok(&["put", "d", &format!("{s}:d")]);
    aether.ok(&["checkpoint", &s, "v1"]);

    let d = aether.path("d");
    touch(&d.join("touched.txt"), 1_700_000_000, 5);
    chmod(&d.join("chmodded.txt"), 0o600);
    std::fs::remove_file(d.join("replaced.txt")).unwrap();
    std::os::unix::fs::symlink("edited.txt", d.join("replaced.txt")).unwrap();
    std::fs::write(d.join("edited.txt"), b"new content").unwrap();
    std::fs::remove_file(d.join("link")).unwrap();
    std::os::unix::fs::symlink("chmodded.txt", d.join("link")).unwrap();
    chmod(&d.join("sub"), 0o700);
    aether.ok(&["put", "d", &format!("{s}:d")]);

    let entries = diff_entries(&aether, &["diff", &s, "--from", "ckpt:v1"]);
    let paths: Vec<&str> = entries.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        vec![
            "d/chmodded.txt",
            "d/edited.txt",
            "d/link",
            "d/replaced.txt",
            "d/sub"
        ],
        "a touch alone is not reported by default: {entries:#?}"
    );
    let chmodded = &entries["d/chmodded.txt"];
    assert_eq!(
        chmodded["changes"],
        serde_json::json!(["mode"]),
        "{chmodded}"
    );
    assert_eq!(chmodded["old_mode"], "0644");
    assert_eq!(chmodded["new_mode"], "0600");
    assert_eq!(chmodded["content_changed"], false);
    let edited = &entries["d/edited.txt"];
    assert_eq!(edited["content_changed"], true, "{edited}");
    assert_eq!(edited["mode_changed"], false, "{edited}");
    let replaced = &entries["d/replaced.txt"];
    assert_eq!(replaced["kind_changed"], true, "{replaced}");
    assert_eq!(replaced["old_kind"], "file");
    assert_eq!(replaced["new_kind"], "symlink");
    assert_eq!(replaced["new_symlink_target"], "edited.txt");
    assert!(replaced["old_symlink_target"].is_null());
    let link = &entries["d/link"];
    assert_eq!(link["changes"][0], "target", "{link}");
    assert_eq!(link["old_symlink_target"], "touched.txt");
    assert_eq!(link["new_symlink_target"], "chmodded.txt");
    let sub = &entries["d/sub"];
    assert_eq!(sub["mode_changed"], true, "{sub}");
    assert_eq!(sub["new_kind"], "directory");
    assert_eq!(sub["new_mode"], "0700");

    let text = aether.ok(&["diff", &s, "--from", "ckpt:v1"]);
    for line in [
        "M  d/chmodded.txt  mode 0644 -> 0600",
        "M  d/edited.txt  content (10 B -> 11 B)",
        "M  d/link  target touched.txt -> chmodded.txt",
        "M  d/replaced.txt  kind file (12 B) => symlink -> edited.txt",
        "M  d/sub/  mode 0755 -> 0700",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert!(!text.contains("touched.txt  "), "{text}");

    // With --include-time-only the touch shows, as a time change alone.
    let entries = diff_entries(
        &aether,
        &["diff", &s, "--from", "ckpt:v1", "--include-time-only"],
    );
    let touched = &entries["d/touched.txt"];
    assert_eq!(
        touched["changes"],
        serde_json::json!(["mtime"]),
        "{touched}"
    );
    assert_eq!(touched["content_changed"], false);
    assert_eq!(touched["new_mtime_ns"], 1_700_000_000_000_000_005i64);
    assert_eq!(touched["new_mtime"], "2023-11-14T22:13:20.000000005Z");
    // The directory whose names changed: its own time, not its subtree, is what it reports.
    assert_eq!(
        entries["d"]["changes"],
        serde_json::json!(["mtime"]),
        "{entries:#?}"
    );
    let text = aether.ok(&["diff", &s, "--from", "ckpt:v1", "--include-time-only"]);
    assert!(
        text.contains("M  d/touched.txt  mtime ")
            && text.contains("-> 2023-11-14T22:13:20.000000005Z"),
        "{text}"
    );
    assert!(text.contains("M  d/  mtime "), "{text}");
}
