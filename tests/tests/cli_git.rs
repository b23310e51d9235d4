//! `aether git import` and `aether git export` against real git: a session started from a git
//! revision (its base is that revision), changed, committed, annotated, then exported as a
//! commit on a branch: `git fsck --strict` is clean, `git diff` of the branch names what
//! `aether diff` does, the message carries the session's trailers, the executable bit and the
//! symlink survive, and a second export moves the branch forward from its tip.

use crate::cli_support::Aether;

use std::path::Path;
use std::process::Command;

fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .expect("git is installed (apt-get install -y git)");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_from_git_and_back_as_a_reviewed_branch() {
    let aether = Aether::start().await;
    let repo = aether.path("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["config", "user.email", "dev@example.com"]);
    git(&repo, &["config", "user.name", "Dev"]);
    std::fs::write(repo.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(repo.join("README.md"), "# Project\n").unwrap();
    std::fs::write(repo.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(
        repo.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("src/main.rs", repo.join("entry")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "Initial"]);
    let main = git(&repo, &["rev-parse", "main"]);

    let session = aether
        .ok(&[
            "git", "import", "main", "--repo", "repo", "--label", "team=git",
        ])
        .trim()
        .to_string();
    let info = aether.json(&["session", "info", &session]);
    assert_eq!(info["metadata"]["git.commit"], main.as_str());
    assert_eq!(
        aether.json(&["diff", &session])["entries"],
        serde_json::json!([]),
        "the session's base is the git revision"
    );
    assert_eq!(
        aether.ok(&["cat", &format!("{session}:src/main.rs")]),
        "fn main() {}\n"
    );

    // The agent's work in the session.
    aether.write("main.rs", b"fn main() { println!(\"changed\"); }\n");
    aether.ok(&["put", "main.rs", &format!("{session}:src/main.rs")]);
    aether.ok(&["rm", &format!("{session}:README.md")]);
    aether.write("notes.md", b"notes\n");
    aether.ok(&["put", "notes.md", &format!("{session}:docs/notes.md")]);
    aether.ok(&[
        "annotate",
        &format!("{session}:src/main.rs"),
        "--lines",
        "1",
        "-m",
        "prints too much?",
    ]);
    let commit = aether.json(&["commit", &session, "-m", "Print a greeting"])["id"]
        .as_str()
        .unwrap()
        .to_string();

    let exported = aether.json(&[
        "git",
        "export",
        &session,
        "--at",
        &format!("commit:{commit}"),
        "--repo",
        "repo",
        "--branch",
        "agent/greeting",
        "--parent",
        "main",
    ]);
    let sha = exported["commit"].as_str().unwrap().to_string();
    assert_eq!(git(&repo, &["rev-parse", "agent/greeting"]), sha);
    assert_eq!(exported["parent"], main.as_str());
    git(&repo, &["fsck", "--strict", "--no-dangling"]);

    // git diff of the branch names what aether diff names.
    let mut from_git: Vec<String> =
        git(&repo, &["diff", "--name-status", "main", "agent/greeting"])
            .lines()
            .map(|l| l.replace('\t', " "))
            .collect();
    from_git.sort();
    let diff = aether.json(&[
        "diff",
        &session,
        "--from",
        "base",
        "--to",
        &format!("commit:{commit}"),
    ]);
    let mut from_aether: Vec<String> = diff["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["new_kind"] != "directory" && e["old_kind"] != "directory")
        .map(|e| {
            let letter = match e["kind"].as_str().unwrap() {
                "added" => "A",
                "deleted" => "D",
                _ => "M",
            };
            format!("{letter} {}", e["path"].as_str().unwrap())
        })
        .collect();
    from_aether.sort();
    assert_eq!(from_git, from_aether);
    assert_eq!(
        from_git,
        ["A docs/notes.md", "D README.md", "M src/main.rs"]
    );

    // The message, author and trailers; the executable bit and the link as git keeps them.
    let message = git(&repo, &["log", "-1", "--format=%an%n%B", "agent/greeting"]);
    assert!(
        message.starts_with("anonymous\nPrint a greeting\n"),
        "{message}"
    );
    assert!(
        message.contains(&format!("Aether-Session: {session}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("Aether-Revision: commit:{commit}")),
        "{message}"
    );
    assert!(
        message.contains("Aether-Open-Annotation: src/main.rs:1 (anonymous): prints too much?"),
        "{message}"
    );
    let trailers = git(
        &repo,
        &[
            "log",
            "-1",
            "--format=%(trailers:key=Aether-Session,valueonly)",
            "agent/greeting",
        ],
    );
    assert_eq!(trailers, session);
    let tree = git(&repo, &["ls-tree", "-r", "agent/greeting"]);
    assert!(
        tree.lines()
            .any(|l| l.starts_with("100755 blob") && l.ends_with("\trun.sh")),
        "{tree}"
    );
    assert!(
        tree.lines()
            .any(|l| l.starts_with("120000 blob") && l.ends_with("\tentry")),
        "{tree}"
    );

    // A second export (the head) moves the branch forward from its tip.
    aether.write("more.txt", b"more\n");
    aether.ok(&["put", "more.txt", &format!("{session}:more.txt")]);
    let second = aether.json(&[
        "git",
        "export",
        &session,
        "--repo",
        "repo",
        "--branch",
        "agent/greeting",
    ]);
    assert_eq!(second["parent"], sha.as_str());
    assert_eq!(
        git(&repo, &["diff", "--name-status", &sha, "agent/greeting"]),
        "A\tmore.txt"
    );

    // Not a repository: a usage error naming the flag.
    std::fs::create_dir_all(aether.path("plain")).unwrap();
    let stderr = aether.fails(
        &[
            "git", "export", &session, "--repo", "plain", "--branch", "x",
        ],
        2,
    );
    assert!(stderr.contains("--repo"), "{stderr}");
}
