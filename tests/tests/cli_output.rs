//! The `aether` binary's contract with scripts: JSON output that parses, exit codes (2 usage,
//! 3 not found, 1 server error), dedup on re-upload, help with examples, and the bus verbs.

use crate::cli_support;

use cli_support::{make_tree, Aether};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reupload_sends_no_chunks() {
    let aether = Aether::start().await;
    let s = aether.create_session(&["suite=cli"]);
    make_tree(&aether, "project");

    let first = aether.json(&["put", "project", &format!("{s}:p")]);
    assert_eq!(first["files"], 5, "{first}");
    assert!(first["chunks"].as_u64().unwrap() >= 4, "{first}");
    let sent = first["bytes_uploaded"].as_u64().unwrap() + first["inline_bytes"].as_u64().unwrap();
    assert_eq!(
        sent,
        first["bytes"].as_u64().unwrap(),
        "all content was new: {first}"
    );
    assert!(first["chunks_uploaded"].as_u64().unwrap() >= 1, "{first}");

    let again = aether.json(&["put", "project", &format!("{s}:p")]);
    assert_eq!(again["chunks_uploaded"], 0, "{again}");
    assert_eq!(again["bytes_uploaded"], 0, "{again}");
    assert_eq!(again["inline_bytes"], 0, "{again}");
    assert_eq!(again["chunks"], first["chunks"]);

    // The same tree elsewhere in the session, or in another session, is free too.
    let elsewhere = aether.json(&["put", "project", &format!("{s}:copy")]);
    assert_eq!(elsewhere["chunks_uploaded"], 0, "{elsewhere}");
    let t = aether.create_session(&["suite=cli"]);
    let other = aether.json(&["put", "project", &t]);
    assert_eq!(other["chunks_uploaded"], 0, "{other}");
    assert_eq!(other["inline_bytes"], 0, "{other}");

    // --verbose says so on stderr; stdout keeps the summary.
    let run = aether.run(&["put", "project", &format!("{s}:p"), "--verbose"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("0 sent"), "{}", run.stderr);
    assert!(run.stdout.contains("uploaded"), "{}", run.stdout);

    // stdin uploads.
    let mut child = aether
        .command()
        .args(["put", "-", &format!("{s}:from-stdin.txt")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        aether.ok(&["cat", &format!("{s}:from-stdin.txt")]),
        "piped\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_json_output_parses_everywhere() {
    let aether = Aether::start().await;
    let created = aether.json(&[
        "session",
        "create",
        "--label",
        "suite=json",
        "--meta",
        "k=v",
    ]);
    let s = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["metadata"]["k"], "v");
    aether.write("notes/a.txt", b"alpha\n");
    aether.json(&["put", "notes", &format!("{s}:notes")]);

    let array = |value: &Value| {
        value
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("{value}"))
    };
    assert!(!array(&aether.json(&["session", "ls"])).is_empty());
    assert_eq!(aether.json(&["session", "info", &s])["counts"]["files"], 1);
    let ls = aether.json(&["ls", &format!("{s}:notes")]);
    assert_eq!(ls[0]["path"], "notes/a.txt");
    assert_eq!(ls[0]["size"], 6);
    assert_eq!(array(&aether.json(&["tree", &s])).len(), 2);
    assert_eq!(
        aether.json(&["stat", &format!("{s}:notes")])["kind"],
        "directory"
    );
    assert_eq!(aether.json(&["checkpoint", &s, "c1"])["name"], "c1");
    assert_eq!(array(&aether.json(&["checkpoints", &s])).len(), 1);
    assert!(aether.json(&["mkdir", &format!("{s}:d")])["head_version"].is_u64());
    let diff = aether.json(&["diff", &s]);
    assert_eq!(diff["entries"][0]["kind"], "added");
    let restored = aether.json(&["restore", &s, "c1"]);
    assert!(restored["head_version"].is_u64());
    let commit = aether.json(&["commit", &s, "-m", "json"]);
    assert_eq!(commit["message"], "json");
    assert_eq!(aether.json(&["log", &s])[0]["id"], commit["id"]);
    let got = aether.json(&["get", &format!("{s}:notes"), "out"]);
    assert_eq!(got["files"], 1);
    let exported = aether.json(&["export", &s, "s.tar"]);
    assert!(exported["bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        aether.json(&["import", &format!("{s}:again"), "s.tar"])["files"],
        1
    );
    let forked = aether.json(&["session", "fork", &s, "--label", "variant=b"]);
    assert_eq!(forked["labels"]["variant"], "b");
    assert_ne!(forked["id"], s.as_str());
    let transferred = aether.json(&[
        "session",
        "transfer",
        &s,
        "--to",
        "user:bob",
        "--keep-role",
        "editor",
    ]);
    assert_eq!(transferred["owner"], "user:bob");
    assert!(!array(&aether.json(&["audit", &s])).is_empty());

    // The bus: publish, then watch from the start; one JSON document per line.
    assert!(
        aether.json(&["publish", &s, "agent.note", "hello"])["offset"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let watch = aether.ok(&[
        "watch",
        &s,
        "--subject",
        "agent.>",
        "--count",
        "1",
        "-o",
        "json",
    ]);
    let message: Value = serde_json::from_str(watch.trim()).unwrap();
    assert_eq!(message["subject"], "agent.note");
    assert_eq!(message["payload"], "hello");
    let events = aether.ok(&[
        "watch",
        &s,
        "--subject",
        "session.>",
        "--count",
        "3",
        "-o",
        "json",
    ]);
    let lines: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["event"]["type"], "files_changed");
    let stream = aether.json(&["stream", &s, "--max-messages", "500", "--max-age", "7d"]);
    assert_eq!(stream["retention"]["max_messages"], 500);
    assert_eq!(stream["retention"]["max_age_seconds"], 7 * 86_400);
    assert_eq!(stream["retention"]["own"], true);
    assert!(stream["last_offset"].as_u64().unwrap() >= 4, "{stream}");
    assert!(stream["archived_at"].is_null());
    // One axis alone keeps the other.
    let stream = aether.json(&["stream", &s, "--max-messages", "0"]);
    assert_eq!(stream["retention"]["max_messages"], 0);
    assert_eq!(stream["retention"]["max_age_seconds"], 7 * 86_400);
    let text = aether.ok(&["stream", &s]);
    assert!(text.contains("max age      604800s"), "{text}");
    let table = aether.ok(&["watch", &s, "--subject", "agent.>", "--count", "1"]);
    assert!(
        table.contains("agent.note") && table.contains("hello"),
        "{table}"
    );

    // Review and knowledge may not be served yet: then the server's status is reported
    // (exit 1, with its code); once served, the output is JSON.
    for args in [
        vec![
            "annotate",
            &format!("{s}:notes/a.txt") as &str,
            "-m",
            "check this",
        ],
        vec!["annotations", &s],
        vec!["approval", "ls", &s],
        vec!["kv", "put", &s, "build.status", "green"],
        vec!["kv", "ls", &s],
    ] {
        let mut all = args.clone();
        all.extend(["-o", "json"]);
        let run = aether.run(&all);
        match run.code {
            0 => {
                serde_json::from_str::<Value>(&run.stdout)
                    .unwrap_or_else(|e| panic!("aether {all:?}: {e}\n{}", run.stdout));
            }
            1 => assert!(
                run.stderr.starts_with("aether: ") && run.stderr.contains("UNIMPLEMENTED"),
                "aether {all:?}: {}",
                run.stderr
            ),
            other => panic!("aether {all:?} exited {other}: {}", run.stderr),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes_tell_usage_from_not_found_from_refusal() {
    let aether = Aether::start().await;
    let s = aether.create_session(&["suite=codes"]);

    // 2: usage errors, before anything is sent.
    for args in [
        vec![],
        vec!["ls"],
        vec!["frobnicate"],
        vec!["ls", "./not/a/remote"],
        vec!["log", "abc:path"],
        vec!["session", "create", "--label", "novalue"],
        vec!["session", "create", "--ttl", "soon"],
        vec!["diff", &s, "--from", "yesterday"],
        vec!["watch", &s, "--from", "nowhere"],
        vec!["-o", "yaml", "session", "ls"],
        vec!["commit", &s],
        vec!["mv", &format!("{s}:a"), "other:b"],
        vec!["--endpoint", "127.0.0.1:7600", "session", "ls"],
    ] {
        let stderr = aether.fails(&args, 2);
        assert!(!stderr.is_empty(), "{args:?} says why");
    }

    // 3: not found, on the server or locally.
    let stderr = aether.fails(&["cat", &format!("{s}:missing.txt")], 3);
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");
    aether.fails(&["session", "info", "0000deadbeef0000beef"], 3);
    aether.fails(&["restore", &s, "no-such-checkpoint"], 3);
    aether.fails(&["put", "no-such-local-dir", &format!("{s}:x")], 3);
    aether.fails(&["get", &format!("{s}:missing"), "out"], 3);

    // 1: the server refused; its code and message are printed.
    let stderr = aether.fails(&["checkpoint", &s, "bad name!"], 1);
    assert!(stderr.starts_with("aether: INVALID_ARGUMENT: "), "{stderr}");
    aether.ok(&["checkpoint", &s, "twice"]);
    let stderr = aether.fails(&["checkpoint", &s, "twice"], 1);
    assert!(stderr.contains("ALREADY_EXISTS"), "{stderr}");
    let stderr = aether.fails(
        &[
            "--endpoint",
            "http://127.0.0.1:1",
            "--retries",
            "0",
            "session",
            "ls",
        ],
        1,
    );
    assert!(stderr.contains("UNAVAILABLE"), "{stderr}");
}

#[test]
fn cli_every_verb_has_help_with_an_example() {
    let bin = aether_testkit::aether_cli_path().expect("aether built");
    let verbs: &[&[&str]] = &[
        &["dev"],
        &["session", "create"],
        &["session", "ls"],
        &["session", "info"],
        &["session", "fork"],
        &["session", "transfer"],
        &["session", "finalize"],
        &["session", "close"],
        &["ls"],
        &["tree"],
        &["stat"],
        &["cat"],
        &["get"],
        &["put"],
        &["rm"],
        &["mv"],
        &["cp"],
        &["mkdir"],
        &["diff"],
        &["checkpoint"],
        &["checkpoints"],
        &["restore"],
        &["commit"],
        &["log"],
        &["annotate"],
        &["annotations"],
        &["resolve"],
        &["kv", "put"],
        &["kv", "get"],
        &["kv", "ls"],
        &["kv", "rm"],
        &["approval", "request"],
        &["approval", "approve"],
        &["approval", "reject"],
        &["approval", "ls"],
        &["export"],
        &["import"],
        &["publish"],
        &["watch"],
        &["audit"],
    ];
    for verb in verbs {
        let output = std::process::Command::new(&bin)
            .args(*verb)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "aether {verb:?} --help");
        assert!(
            help.contains("Example"),
            "aether {verb:?} --help lacks an example:\n{help}"
        );
        let mut spelled = vec!["aether"];
        spelled.extend(verb.iter());
        assert!(
            help.contains(&spelled.join(" ")),
            "aether {verb:?} --help example does not use the verb:\n{help}"
        );
    }
}
