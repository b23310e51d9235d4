//! The whole session lifecycle through the real `aether` binary against `aetherd dev`:
//! create with labels → put a tree → ls/tree/cat → checkpoint → change → diff → restore →
//! commit → log → get the tree back → export/import → finalize → refused write → close.

use crate::cli_support;

use cli_support::{make_tree, snapshot, Aether};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lifecycle_walk() {
    let aether = Aether::start().await;

    // Create, with labels.
    let s = aether.create_session(&["team=qa", "stage=draft"]);
    let info = aether.json(&["session", "info", &s]);
    assert_eq!(info["id"], s.as_str());
    assert_eq!(info["state"], "active");
    assert_eq!(info["labels"]["team"], "qa");
    assert_eq!(info["labels"]["stage"], "draft");
    let listed = aether.json(&["session", "ls", "--selector", "team=qa,stage=draft"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == s.as_str()),
        "{listed}"
    );

    // Put a directory tree.
    make_tree(&aether, "project");
    let put = aether.ok(&["put", "project", &format!("{s}:proj")]);
    assert!(put.contains("uploaded"), "{put}");

    // Inspect it.
    let ls = aether.ok(&["ls", &format!("{s}:proj")]);
    for name in ["src/", "docs/", "data/", "empty/", "run.sh"] {
        assert!(ls.contains(name), "ls lacks {name}:\n{ls}");
    }
    let tree = aether.ok(&["tree", &s]);
    for name in [
        "proj/", "main.rs", "util.rs", "guide.md", "big.bin", "empty/",
    ] {
        assert!(tree.contains(name), "tree lacks {name}:\n{tree}");
    }
    let original_main = std::fs::read(aether.path("project/src/main.rs")).unwrap();
    let cat = aether.run(&["cat", &format!("{s}:proj/src/main.rs")]);
    assert_eq!(cat.code, 0, "{}", cat.stderr);
    assert_eq!(cat.raw_stdout, original_main);
    let stat = aether.json(&["stat", &format!("{s}:proj/run.sh")]);
    assert_eq!(stat["kind"], "file");
    assert_eq!(stat["mode"], "0755");

    // Checkpoint.
    let checkpoint = aether.ok(&["checkpoint", &s, "v1", "-m", "first upload"]);
    assert!(checkpoint.contains("v1"), "{checkpoint}");
    let checkpoints = aether.json(&["checkpoints", &s]);
    assert_eq!(checkpoints[0]["name"], "v1");
    assert_eq!(checkpoints[0]["description"], "first upload");

    // Change: write, delete, mkdir, copy, move.
    aether.write(
        "main-v2.rs",
        b"fn main() {\n    println!(\"hello, world\");\n}\n",
    );
    aether.ok(&["put", "main-v2.rs", &format!("{s}:proj/src/main.rs")]);
    aether.ok(&["rm", &format!("{s}:proj/docs/guide.md")]);
    aether.ok(&["mkdir", "-p", &format!("{s}:proj/new/dir")]);
    aether.ok(&[
        "cp",
        &format!("{s}:proj/src/lib"),
        &format!("{s}:proj/lib-copy"),
    ]);
    aether.ok(&["mv", &format!("{s}:proj/run.sh"), &format!("{s}:proj/new/")]);
    let moved = aether.json(&["stat", &format!("{s}:proj/new/run.sh")]);
    assert_eq!(moved["mode"], "0755");

    // Diff against the checkpoint.
    let diff = aether.json(&["diff", &s, "--from", "ckpt:v1"]);
    let mut changes: Vec<(String, String)> = diff["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    changes.sort();
    let expected: Vec<(String, String)> = [
        ("proj/docs/guide.md", "deleted"),
        ("proj/lib-copy/util.rs", "added"),
        ("proj/new/run.sh", "added"),
        ("proj/run.sh", "deleted"),
        ("proj/src/main.rs", "modified"),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), k.to_string()))
    .collect();
    assert_eq!(changes, expected);
    let diff_text = aether.ok(&["diff", &s, "--from", "ckpt:v1"]);
    assert!(diff_text.contains("M  proj/src/main.rs"), "{diff_text}");

    // Restore the checkpoint: the change is gone.
    aether.ok(&["restore", &s, "v1"]);
    let cat = aether.run(&["cat", &format!("{s}:proj/src/main.rs")]);
    assert_eq!(cat.raw_stdout, original_main);
    assert_eq!(
        aether.ok(&["diff", &s, "--from", "ckpt:v1"]),
        "",
        "head equals the checkpoint again"
    );

    // Commit and log.
    let commit = aether.ok(&["commit", &s, "-m", "Import the project"]);
    let commit = commit.trim().to_string();
    assert_eq!(commit.len(), 64, "{commit}");
    let log = aether.ok(&["log", &s]);
    assert!(
        log.contains(&commit) && log.contains("Import the project"),
        "{log}"
    );
    let log = aether.json(&["log", &s]);
    assert_eq!(log[0]["id"], commit.as_str());
    let at_commit = aether.run(&[
        "cat",
        &format!("{s}:proj/src/main.rs"),
        "--at",
        &format!("commit:{commit}"),
    ]);
    assert_eq!(at_commit.raw_stdout, original_main);

    // Get the tree back: identical bytes and modes, empty directory included.
    let got = aether.ok(&["get", &format!("{s}:proj"), "copy"]);
    assert!(got.contains("downloaded"), "{got}");
    assert_eq!(
        snapshot(&aether.path("copy")),
        snapshot(&aether.path("project"))
    );
    let single = aether.run(&["get", &format!("{s}:proj/src/main.rs"), "-"]);
    assert_eq!(single.raw_stdout, original_main);
    aether.ok(&["get", &format!("{s}:proj/data/big.bin"), "."]);
    assert_eq!(
        std::fs::read(aether.path("big.bin")).unwrap(),
        std::fs::read(aether.path("project/data/big.bin")).unwrap()
    );

    // Export and import into a second session.
    aether.ok(&["export", &s, "proj.tar"]);
    assert!(std::fs::metadata(aether.path("proj.tar")).unwrap().len() > 3 * 1024 * 1024);
    let t = aether.create_session(&["team=qa", "stage=review"]);
    let imported = aether.json(&["import", &format!("{t}:restored"), "proj.tar"]);
    assert_eq!(imported["files"], 5, "{imported}");
    aether.ok(&["get", &format!("{t}:restored/proj"), "from-archive"]);
    assert_eq!(
        snapshot(&aether.path("from-archive")),
        snapshot(&aether.path("project"))
    );

    // Finalize: writes are refused with FAILED_PRECONDITION and exit status 1.
    let finalized = aether.ok(&["session", "finalize", &s]);
    assert!(finalized.contains("finalized"), "{finalized}");
    let refused = aether.fails(&["put", "main-v2.rs", &format!("{s}:proj/src/main.rs")], 1);
    assert!(refused.contains("FAILED_PRECONDITION"), "{refused}");
    let refused = aether.fails(&["rm", &format!("{s}:proj/run.sh")], 1);
    assert!(refused.contains("FAILED_PRECONDITION"), "{refused}");
    // Reads still work.
    aether.ok(&["cat", &format!("{s}:proj/src/main.rs")]);

    // Close: the record and the audit trail remain.
    aether.ok(&["session", "close", &s]);
    let info = aether.json(&["session", "info", &s]);
    assert_eq!(info["state"], "closed");
    let audit = aether.json(&["audit", &s]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.len() >= 8, "{actions:?}");
    let audit_table = aether.ok(&["audit", &s]);
    assert!(audit_table.starts_with("SEQ"), "{audit_table}");
}
