//! `aether clone/status/pull/push`: a plain directory kept in step with a session path through
//! the public API, against `aetherd dev` with the real binary: round trip of symlinks, modes
//! and times; changes on both sides; conflicts kept and settled with --theirs / --ours; a push
//! refused whole when the session moved; a push interrupted (killed, or its record lost after
//! it applied) recovered by the next command; a no-op status on 10k files reads no file.

use crate::cli_attributes::{describe, make_rich_tree};
use crate::cli_support::Aether;

fn status(aether: &Aether, dir: &str) -> serde_json::Value {
    aether.json(&["status", dir])
}

fn paths(value: &serde_json::Value, side: &str) -> Vec<(String, String)> {
    value[side]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(path: &str, change: &str) -> (String, String) {
    (path.to_string(), change.to_string())
}

fn in_step(value: &serde_json::Value) -> bool {
    paths(value, "local").is_empty()
        && paths(value, "remote").is_empty()
        && value["conflicts"].as_array().unwrap().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_pull_push_keep_a_directory_in_step_and_never_lose_a_side() {
    let aether = Aether::start().await;
    let session = aether.create_session(&[]);
    let tree = aether.path("tree");
    make_rich_tree(&tree);
    aether.ok(&["put", "tree", &format!("{session}:work")]);

    // Clone: the same entries, modes, times and links as the tree that was put.
    aether.ok(&["clone", &format!("{session}:work"), "w"]);
    let clone = aether.path("w");
    let mut cloned = describe(&clone);
    cloned.retain(|l| !l.path.starts_with(".aether"));
    assert_eq!(cloned, describe(&tree));
    assert!(in_step(&status(&aether, "w")));
    aether.fails(&["clone", &format!("{session}:work"), "w"], 2);

    // Changes on both sides, then status, pull, push.
    std::fs::write(clone.join("src/main.rs"), b"fn main() { edited(); }\n").unwrap();
    std::fs::write(clone.join("added-here.txt"), b"local\n").unwrap();
    std::fs::remove_file(clone.join("secret.txt")).unwrap();
    std::os::unix::fs::symlink("run.sh", clone.join("new-link")).unwrap();
    std::fs::set_permissions(
        clone.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    aether.write("there.txt", b"from the session\n");
    aether.ok(&[
        "put",
        "there.txt",
        &format!("{session}:work/added-there.txt"),
    ]);
    aether.ok(&["rm", &format!("{session}:work/empty-file")]);
    let value = status(&aether, "w");
    assert_eq!(
        paths(&value, "local"),
        [
            pair("added-here.txt", "added"),
            pair("new-link", "added"),
            pair("run.sh", "modified"),
            pair("secret.txt", "deleted"),
            pair("src/main.rs", "modified"),
        ]
    );
    assert_eq!(
        paths(&value, "remote"),
        [
            pair("added-there.txt", "added"),
            pair("empty-file", "deleted")
        ]
    );
    aether.ok(&["pull", "w"]);
    assert_eq!(
        std::fs::read(clone.join("added-there.txt")).unwrap(),
        b"from the session\n"
    );
    assert!(!clone.join("empty-file").exists());
    let pushed = aether.ok(&["push", "w"]);
    assert!(pushed.contains("in one batch"), "{pushed}");
    assert!(in_step(&status(&aether, "w")));
    assert_eq!(
        aether.ok(&["cat", &format!("{session}:work/src/main.rs")]),
        "fn main() { edited(); }\n"
    );
    let listed = aether.json(&["ls", &format!("{session}:work")]);
    let entry = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"].as_str().unwrap().ends_with(name))
            .cloned()
    };
    assert!(entry("secret.txt").is_none());
    assert_eq!(entry("run.sh").unwrap()["mode"], "0700");
    assert_eq!(entry("new-link").unwrap()["kind"], "symlink");

    // A conflict: kept locally, named, exit 1; then settled each way.
    std::fs::write(clone.join("src/main.rs"), b"mine\n").unwrap();
    aether.write("theirs.rs", b"theirs\n");
    aether.ok(&["put", "theirs.rs", &format!("{session}:work/src/main.rs")]);
    assert_eq!(
        status(&aether, "w")["conflicts"],
        serde_json::json!(["src/main.rs"])
    );
    let refused = aether.fails(&["push", "w"], 1);
    assert!(refused.contains("aether pull"), "{refused}");
    let stderr = aether.fails(&["pull", "w"], 1);
    assert!(stderr.contains("conflict: src/main.rs"), "{stderr}");
    assert_eq!(std::fs::read(clone.join("src/main.rs")).unwrap(), b"mine\n");
    aether.ok(&["pull", "--ours", "w"]);
    aether.ok(&["push", "w"]);
    assert_eq!(
        aether.ok(&["cat", &format!("{session}:work/src/main.rs")]),
        "mine\n"
    );
    std::fs::write(clone.join("src/main.rs"), b"mine again\n").unwrap();
    aether.ok(&["put", "theirs.rs", &format!("{session}:work/src/main.rs")]);
    aether.ok(&["pull", "--theirs", "w"]);
    assert_eq!(
        std::fs::read(clone.join("src/main.rs")).unwrap(),
        b"theirs\n"
    );
    assert!(in_step(&status(&aether, "w")));

    // The session moves between status and push: nothing is applied, pull then push works.
    std::fs::write(clone.join("run.sh"), b"#!/bin/sh\necho local\n").unwrap();
    std::fs::write(clone.join("added-here.txt"), b"local 2\n").unwrap();
    let before = aether.json(&["session", "info", &session])["head_version"].clone();
    aether.ok(&[
        "put",
        "theirs.rs",
        &format!("{session}:work/added-here.txt"),
    ]);
    let after = aether.json(&["session", "info", &session])["head_version"].clone();
    assert_ne!(before, after);
    aether.fails(&["push", "w"], 1);
    assert_eq!(
        aether.json(&["session", "info", &session])["head_version"],
        after,
        "a refused push changed the session"
    );
    assert_eq!(
        aether.ok(&["cat", &format!("{session}:work/run.sh")]),
        "#!/bin/sh\necho run\n"
    );
    aether.ok(&["pull", "--ours", "w"]);
    aether.ok(&["push", "w"]);
    assert_eq!(
        aether.ok(&["cat", &format!("{session}:work/run.sh")]),
        "#!/bin/sh\necho local\n"
    );

    // A push whose record was lost after it applied (killed between the two): the next
    // status sees both sides equal, and push only records it.
    let record = clone.join(".aether/sync.json");
    let saved = std::fs::read(&record).unwrap();
    std::fs::write(clone.join("late.txt"), b"late\n").unwrap();
    aether.ok(&["push", "w"]);
    std::fs::write(&record, &saved).unwrap();
    let value = status(&aether, "w");
    assert!(in_step(&value), "{value}");
    let version = aether.json(&["session", "info", &session])["head_version"].clone();
    aether.ok(&["push", "w"]);
    assert_eq!(
        aether.json(&["session", "info", &session])["head_version"],
        version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_push_changes_all_or_nothing_and_large_trees_sync_by_listing() {
    let aether = Aether::start().await;
    let session = aether.create_session(&[]);
    // 10k files in 100 directories.
    for d in 0..100 {
        for f in 0..100 {
            aether.write(
                &format!("big/d{d:03}/f{f:03}.txt"),
                format!("{d} {f}\n").as_bytes(),
            );
        }
    }
    aether.ok(&["put", "big", &format!("{session}:big")]);
    aether.ok(&["clone", &format!("{session}:big"), "w"]);
    let clone = aether.path("w");
    // In step after the clone; a few edits among 10k files are exactly what status lists.
    assert!(in_step(&status(&aether, "w")));
    std::fs::write(clone.join("d007/f001.txt"), b"edited\n").unwrap();
    std::fs::remove_file(clone.join("d099/f099.txt")).unwrap();
    std::fs::set_permissions(
        clone.join("d050/f050.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(
        paths(&status(&aether, "w"), "local"),
        [
            pair("d007/f001.txt", "modified"),
            pair("d050/f050.txt", "modified"),
            pair("d099/f099.txt", "deleted"),
        ]
    );
    aether.ok(&["push", "w"]);
    assert!(in_step(&status(&aether, "w")));

    // A push of 2,000 new files, killed while it uploads: the session is unchanged, and the
    // next push sends everything in one batch.
    for i in 0..2000 {
        std::fs::write(
            clone.join(format!("d000/new{i:04}.txt")),
            format!("new {i}\n"),
        )
        .unwrap();
    }
    let version = aether.json(&["session", "info", &session])["head_version"].clone();
    let mut child = aether
        .command()
        .args(["push", "w"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let now = aether.json(&["session", "info", &session])["head_version"].clone();
    let listed = aether.json(&["ls", &format!("{session}:big/d000")]);
    let count = listed.as_array().unwrap().len();
    if now == version {
        assert_eq!(count, 100, "an unapplied push left files");
    } else {
        assert_eq!(count, 2100, "a push applied part of its batch");
    }
    aether.ok(&["push", "w"]);
    let listed = aether.json(&["ls", &format!("{session}:big/d000")]);
    assert_eq!(listed.as_array().unwrap().len(), 2100);
    assert!(in_step(&status(&aether, "w")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_handles_large_pushes_removed_directories_and_links_in_the_way() {
    let aether = Aether::start().await;
    let session = aether.create_session(&[]);
    aether.write("seed/d/keep.txt", b"keep\n");
    aether.write("seed/d/other.txt", b"other\n");
    aether.write("seed/e/x.txt", b"x\n");
    aether.ok(&["put", "seed", &format!("{session}:s")]);
    aether.ok(&["clone", &format!("{session}:s"), "w"]);
    let clone = aether.path("w");

    // 12 MiB of new files the store lacks: more than one message carries inline.
    for i in 0..12u64 {
        let data = crate::cli_support::test_bytes(1024 * 1024, 900 + i);
        std::fs::write(clone.join(format!("big{i:02}.bin")), data).unwrap();
    }
    aether.ok(&["push", "w"]);
    assert!(in_step(&status(&aether, "w")));
    let listed = aether.json(&["ls", &format!("{session}:s")]);
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["path"].as_str().unwrap().ends_with(".bin"))
            .count(),
        12
    );

    // The session removes a directory that holds local work: a conflict on the directory,
    // the local work kept, the rest of the pull applied.
    std::fs::write(clone.join("d/keep.txt"), b"edited here\n").unwrap();
    aether.ok(&["rm", "-r", &format!("{session}:s/d")]);
    aether.write("fresh.txt", b"fresh\n");
    aether.ok(&["put", "fresh.txt", &format!("{session}:s/fresh.txt")]);
    let stderr = aether.fails(&["pull", "w"], 1);
    assert!(stderr.contains("conflict"), "{stderr}");
    assert_eq!(
        std::fs::read(clone.join("d/keep.txt")).unwrap(),
        b"edited here\n"
    );
    assert_eq!(std::fs::read(clone.join("fresh.txt")).unwrap(), b"fresh\n");

    // A local symlink where the session has a directory: nothing is written through it.
    let outside = aether.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::remove_dir_all(clone.join("e")).unwrap();
    std::os::unix::fs::symlink(&outside, clone.join("e")).unwrap();
    aether.write("y.txt", b"y\n");
    aether.ok(&["put", "y.txt", &format!("{session}:s/e/y.txt")]);
    aether.ok(&["put", "y.txt", &format!("{session}:s/e/deeper/z.txt")]);
    aether.run(&["pull", "--theirs", "w"]);
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "a pull wrote through a local symlink"
    );
}

/// The bytes `aether ARGS` read through read(2) (files and sockets alike), from the io
/// accounting a shell inherits from the child it waited for.
fn bytes_read(aether: &Aether, args: &str) -> u64 {
    let script = format!(
        "\"{}\" {args} >/dev/null || exit 9; grep '^rchar:' /proc/$$/io",
        aether.bin().display()
    );
    let output = aether
        .command_for("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .trim_start_matches("rchar:")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_op_status_reads_no_file_content() {
    let aether = Aether::start().await;
    let session = aether.create_session(&[]);
    // 24 MiB in files last changed an hour ago.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for i in 0..24u64 {
        let path = format!("data/f{i:02}.bin");
        aether.write(&path, &crate::cli_support::test_bytes(1024 * 1024, 500 + i));
        std::fs::File::options()
            .write(true)
            .open(aether.path(&path))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    aether.ok(&["put", "data", &format!("{session}:data")]);
    aether.ok(&["clone", &format!("{session}:data"), "w"]);
    let idle = bytes_read(&aether, "status w");
    assert!(idle < 4 * 1024 * 1024, "a no-op status read {idle} bytes");
    // A changed file is read (and only then).
    std::fs::write(aether.path("w/f03.bin"), b"changed").unwrap();
    let value = status(&aether, "w");
    assert_eq!(paths(&value, "local"), [pair("f03.bin", "modified")]);
}
