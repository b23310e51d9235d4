//! Hostile input over real gRPC against `aetherd dev`: each case asserts the exact status and
//! that nothing changed (head version and listing).

use crate::common;

use aether_proto as pb;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::ServiceProcess;
use common::{connect, create_session};
use tonic::transport::Channel;
use tonic::Code;

struct Dev {
    _data: tempfile::TempDir,
    _server: ServiceProcess,
    channel: Channel,
}

async fn start() -> Dev {
    let data = tempfile::tempdir().unwrap();
    let server = ServiceProcess::start(&[
        "dev".into(),
        "--data".into(),
        data.path().display().to_string(),
    ])
    .await
    .unwrap();
    let channel = connect(&server.endpoint()).await.unwrap();
    Dev {
        _data: data,
        _server: server,
        channel,
    }
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Head version and the full listing of a session.
async fn snapshot(dev: &Dev, id: &str) -> (u64, Vec<String>) {
    let session = SessionServiceClient::new(dev.channel.clone())
        .get_session(pb::GetSessionRequest {
            session_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let tree = WorkspaceServiceClient::new(dev.channel.clone())
        .list_tree(pb::ListTreeRequest {
            session_id: id.into(),
            recursive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let paths = tree.entries.into_iter().map(|e| e.path).collect();
    (session.head_version, paths)
}

/// Asserts that a session created with `create`'s bad value, and session `id` updated to it
/// (`field` in the mask), are both INVALID_ARGUMENT.
async fn refused_at_create_and_update(
    sessions: &mut SessionServiceClient<Channel>,
    id: &str,
    field: &str,
    case: &str,
    create: pb::CreateSessionRequest,
) {
    let update = pb::UpdateSessionRequest {
        session_id: id.into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec![field.into()],
        }),
        labels: create.labels.clone(),
        metadata: create.metadata.clone(),
        ttl: create.ttl,
        policy: create.policy.clone(),
    };
    let created = sessions.create_session(create).await;
    assert_eq!(code(created), Code::InvalidArgument, "create: {case}");
    let updated = sessions.update_session(update).await;
    assert_eq!(code(updated), Code::InvalidArgument, "update: {case}");
}

fn mkdir(id: &str, path: &str) -> pb::MakeDirectoryRequest {
    pb::MakeDirectoryRequest {
        session_id: id.into(),
        path: path.into(),
        parents: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_invalid_and_change_nothing() {
    let dev = start().await;
    let id = create_session(&dev.channel).await.unwrap().id;
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    workspace.make_directory(mkdir(&id, "src")).await.unwrap();
    let before = snapshot(&dev, &id).await;
    let long_name = "n".repeat(300);
    let long_path = vec!["d"; 3000].join("/");
    for path in [
        "..",
        "../etc",
        "src/../../etc",
        "/abs",
        "src//x",
        "src/a\0b",
        long_name.as_str(),
        long_path.as_str(),
    ] {
        let result = workspace.make_directory(mkdir(&id, path)).await;
        assert_eq!(code(result), Code::InvalidArgument, "path {path:?}");
    }
    assert_eq!(snapshot(&dev, &id).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_and_states_change_nothing() {
    let dev = start().await;
    let mut sessions = SessionServiceClient::new(dev.channel.clone());
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    let mut history = HistoryServiceClient::new(dev.channel.clone());
    let id = create_session(&dev.channel).await.unwrap().id;
    workspace.make_directory(mkdir(&id, "src")).await.unwrap();

    // An unknown (well-formed) session.
    let unknown = "0123456789abcdef0123456789abcdef";
    let result = workspace.make_directory(mkdir(unknown, "src")).await;
    assert_eq!(code(result), Code::NotFound);

    // A checkpoint that does not exist.
    let before = snapshot(&dev, &id).await;
    let result = history
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            session_id: id.clone(),
            name: "never-taken".into(),
            expected_head_version: 0,
        })
        .await;
    assert_eq!(code(result), Code::NotFound);
    assert_eq!(snapshot(&dev, &id).await, before);

    // Session states that do not exist.
    for states in [vec![0], vec![1, 99], vec![-1]] {
        let result = sessions
            .list_sessions(pb::ListSessionsRequest {
                states: states.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(code(result), Code::InvalidArgument, "{states:?}");
    }

    // Selectors past their bounds are refused; a state named a million times is one state.
    let many_terms = vec!["!a"; 100_000].join(",");
    let many_values = format!("k in ({})", vec!["v"; 65].join(","));
    for selector in [many_terms.as_str(), many_values.as_str()] {
        let result = sessions
            .list_sessions(pb::ListSessionsRequest {
                label_selector: selector.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(code(result), Code::InvalidArgument, "{selector:.20}");
    }
    let listed = sessions
        .list_sessions(pb::ListSessionsRequest {
            states: vec![pb::SessionState::Active as i32; 1_000_000],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert!(listed.iter().any(|s| s.id == id));

    // Page tokens no listing returned.
    for token in ["../x", "a b", &"t".repeat(10_000)] {
        let result = history
            .list_checkpoints(pb::ListCheckpointsRequest {
                session_id: id.clone(),
                page: Some(pb::PageRequest {
                    page_size: 10,
                    page_token: token.to_string(),
                }),
            })
            .await;
        assert_eq!(code(result), Code::InvalidArgument, "{token:.20}");
    }

    // Paths through a file: the parent is not a directory, for every kind of change.
    common::write_file(&dev.channel, &id, "plain.txt", b"a file")
        .await
        .unwrap();
    let before = snapshot(&dev, &id).await;
    let delete = workspace
        .delete_path(pb::DeletePathRequest {
            session_id: id.clone(),
            path: "plain.txt/inner".into(),
            ..Default::default()
        })
        .await;
    let into = workspace
        .move_path(pb::MovePathRequest {
            session_id: id.clone(),
            from: "src".into(),
            to: "plain.txt/src".into(),
            ..Default::default()
        })
        .await;
    let under = workspace.make_directory(mkdir(&id, "plain.txt/sub")).await;
    for status in [delete.unwrap_err(), into.unwrap_err(), under.unwrap_err()] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status
                .message()
                .contains("\"plain.txt\" is a file, not a directory"),
            "{status:?}"
        );
    }
    assert_eq!(snapshot(&dev, &id).await, before);

    // Writes to a finalized session.
    sessions
        .finalize_session(pb::FinalizeSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap();
    let before = snapshot(&dev, &id).await;
    let result = workspace.make_directory(mkdir(&id, "late")).await;
    assert_eq!(code(result), Code::FailedPrecondition);
    assert_eq!(snapshot(&dev, &id).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_concurrent_patches_exactly_one_wins() {
    let dev = start().await;
    let id = create_session(&dev.channel).await.unwrap().id;
    let (version, _) = snapshot(&dev, &id).await;
    let attempts = (0..8).map(|i| {
        let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
        let id = id.clone();
        async move {
            workspace
                .apply_changes(pb::ApplyChangesRequest {
                    session_id: id,
                    changes: vec![pb::Change {
                        op: Some(pb::change::Op::MakeDirectory(pb::MakeDirectoryOp {
                            path: format!("dir-{i}"),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    expected_head_version: version,
                })
                .await
        }
    });
    let codes: Vec<Code> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(code)
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == Code::Ok).count(),
        1,
        "{codes:?}"
    );
    assert!(
        codes.iter().all(|c| matches!(c, Code::Ok | Code::Aborted)),
        "{codes:?}"
    );
    let (after, paths) = snapshot(&dev, &id).await;
    assert_eq!(after, version + 1);
    assert_eq!(paths.len(), 1, "{paths:?}");
}

/// A tar of one entry whose name (raw bytes, unchecked), type and link target are given, and
/// whose content is `data`.
fn raw_tar(name: &[u8], kind: tar::EntryType, link: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
    }
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out.extend_from_slice(&[0; 1024]);
    out
}

/// A ~2 KiB tar of one regular entry whose header declares `declared` bytes (base-256 when
/// large), optionally preceded by a PAX record `size=<pax_size>`.
fn sized_tar(declared: u64, pax_size: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(value) = pax_size {
        let mut body = b" size=".to_vec();
        body.extend_from_slice(value);
        body.push(b'\n');
        // The record's length counts its own digits.
        let length = (1..20)
            .map(|digits| body.len() + digits)
            .find(|length| length.to_string().len() + body.len() == *length)
            .unwrap()
            .to_string();
        let mut record = length.into_bytes();
        record.extend_from_slice(&body);
        let mut pax = tar::Header::new_ustar();
        pax.set_path("PaxHeaders/big.bin").unwrap();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_size(record.len() as u64);
        pax.set_cksum();
        out.extend_from_slice(pax.as_bytes());
        out.extend_from_slice(&record);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    let mut header = tar::Header::new_gnu();
    header.set_path("big.bin").unwrap();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(declared);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&[7; 1024]);
    out.extend_from_slice(&[0; 1024]);
    out
}

/// A tar whose first record is an extension of `kind` (GNU long name, PAX records) declaring
/// `declared` bytes and holding `body`, followed by `rest` (whole blocks).
fn extension_tar(kind: tar::EntryType, declared: u64, body: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("././@LongLink").unwrap();
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(declared);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().next_multiple_of(512), 0);
    out.extend_from_slice(rest);
    out
}

/// A PAX header and its `size` record, as `sized_tar` writes them.
fn pax_size_record(value: &[u8]) -> Vec<u8> {
    sized_tar(0, Some(value))[..1024].to_vec()
}

async fn import(
    dev: &Dev,
    id: &str,
    tar: Vec<u8>,
) -> Result<pb::ImportArchiveResponse, tonic::Status> {
    let messages = vec![
        pb::ImportArchiveRequest {
            part: Some(pb::import_archive_request::Part::Header(
                pb::ImportArchiveHeader {
                    session_id: id.into(),
                    path: "in".into(),
                    expected_head_version: 0,
                },
            )),
        },
        pb::ImportArchiveRequest {
            part: Some(pb::import_archive_request::Part::Data(tar.into())),
        },
    ];
    WorkspaceServiceClient::new(dev.channel.clone())
        .import_archive(futures::stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_refused_whole_and_change_nothing() {
    let dev = start().await;
    let id = create_session(&dev.channel).await.unwrap().id;
    WorkspaceServiceClient::new(dev.channel.clone())
        .make_directory(mkdir(&id, "src"))
        .await
        .unwrap();
    let before = snapshot(&dev, &id).await;
    let regular = tar::EntryType::Regular;
    let mut truncated = raw_tar(b"big.bin", regular, None, &[7; 4096]);
    truncated.truncate(512 + 1000);
    let mut bad_checksum = raw_tar(b"ok.txt", regular, None, b"hello");
    bad_checksum[0] = b'X';
    // GNU base-256 with the sign bit set: a negative size.
    let mut negative_size = raw_tar(b"neg.bin", regular, None, b"x");
    negative_size[124..136].fill(0xff);
    let mut header = tar::Header::from_byte_slice(&negative_size[..512]).clone();
    header.set_cksum();
    negative_size[..512].copy_from_slice(header.as_bytes());
    // A header declares 1024 bytes of content; a PAX record says 0, and by it the next
    // header is the one hidden in that content. Readers that disagree see two archives: this
    // one reads the PAX size, finds the hidden entry and refuses its name.
    let hidden = raw_tar(b"../hidden.txt", regular, None, b"");
    let mut carrier = raw_tar(b"carrier.bin", regular, None, &[0; 1024]);
    carrier.truncate(512);
    let smuggled = [
        pax_size_record(b"0"),
        carrier,
        hidden[..512].to_vec(),
        vec![0; 512],
        vec![0; 1024],
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "invalid UTF-8 name",
            raw_tar(b"caf\xe9.txt", regular, None, b"x"),
            "UTF-8",
        ),
        (
            "parent escape",
            raw_tar(b"../escape.txt", regular, None, b"x"),
            "..",
        ),
        (
            "nested escape",
            raw_tar(b"a/../../escape.txt", regular, None, b"x"),
            "..",
        ),
        (
            "absolute path",
            raw_tar(b"/etc/passwd", regular, None, b"x"),
            "",
        ),
        (
            "NUL-free but empty component",
            raw_tar(b"a//b.txt", regular, None, b"x"),
            "",
        ),
        (
            "hard link",
            raw_tar(b"hard", tar::EntryType::Link, Some(b"/etc/shadow"), b""),
            "Link",
        ),
        (
            "device",
            raw_tar(b"dev", tar::EntryType::Char, None, b""),
            "Char",
        ),
        ("truncated entry", truncated, ""),
        (
            "1 TiB declared in base-256",
            sized_tar(1 << 40, None),
            "declares 1099511627776 bytes",
        ),
        (
            "2^63-1 declared in a PAX record",
            sized_tar(16, Some(i64::MAX.to_string().as_bytes())),
            "",
        ),
        (
            "negative size in a PAX record",
            sized_tar(16, Some(b"-5")),
            "",
        ),
        ("bad header checksum", bad_checksum, ""),
        ("not a tar at all", common::test_bytes(3000, 9), ""),
        (
            "negative size in base-256",
            negative_size,
            "declares 18446744073709551615 bytes",
        ),
        (
            "a PAX size larger than the header's, past the end",
            sized_tar(16, Some(b"4096")),
            "truncated",
        ),
        (
            "a PAX size of 0 that reveals a header hidden in the declared content",
            smuggled,
            "..",
        ),
        (
            "a GNU long name of 5000 bytes",
            extension_tar(
                tar::EntryType::GNULongName,
                5001,
                &[b"n".repeat(5000), vec![0]].concat(),
                &raw_tar(b"x", regular, None, b"x"),
            ),
            "GNU long name of 5001 bytes exceeds the limit of 4100 bytes",
        ),
        (
            "a GNU long name declaring 1 TiB",
            extension_tar(tar::EntryType::GNULongName, 1 << 40, b"n", &[0; 1024]),
            "declares 1099511627776 bytes",
        ),
        (
            "PAX records declaring 2 MiB",
            extension_tar(tar::EntryType::XHeader, 2 << 20, b"10 path=x\n", &[0; 1024]),
            "PAX records of 2097152 bytes exceeds the limit",
        ),
        (
            "two long names for one entry",
            [
                extension_tar(tar::EntryType::GNULongName, 2, b"a\0", &[]),
                extension_tar(tar::EntryType::GNULongName, 2, b"b\0", &[]),
                raw_tar(b"x", regular, None, b"x"),
            ]
            .concat(),
            "two extension records",
        ),
        (
            "a long name that describes no entry",
            extension_tar(tar::EntryType::GNULongName, 2, b"a\0", &[0; 1024]),
            "no future member",
        ),
    ];
    for (case, tar, mentions) in cases {
        let status = import(&dev, &id, tar).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().contains("archive rejected") && status.message().contains(mentions),
            "{case}: {status:?}"
        );
        assert_eq!(
            snapshot(&dev, &id).await,
            before,
            "{case} changed the session"
        );
    }
    // The same well-formed archive is accepted: the refusals were for the hostile parts.
    let fine = raw_tar(b"ok.txt", regular, None, b"hello");
    assert_eq!(import(&dev, &id, fine).await.unwrap().files, 1);

    // A symlink whose target climbs out of the root is data, not an escape: it is stored as
    // a link with its target as given (never followed by the service; `aether get` never
    // writes through it).
    let escaping = raw_tar(
        b"link",
        tar::EntryType::Symlink,
        Some(b"../../etc/passwd"),
        b"",
    );
    import(&dev, &id, escaping)
        .await
        .expect("an archive with an escaping symlink is accepted");
    let link = WorkspaceServiceClient::new(dev.channel.clone())
        .stat(pb::StatRequest {
            session_id: id.clone(),
            path: "in/link".into(),
            at: None,
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(link.kind, pb::EntryKind::Symlink as i32, "{link:?}");
    assert_eq!(link.symlink_target, "../../etc/passwd");
    assert_eq!(link.size, "../../etc/passwd".len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_labels_metadata_and_states_change_nothing() {
    let dev = start().await;
    let mut sessions = SessionServiceClient::new(dev.channel.clone());
    let id = create_session(&dev.channel).await.unwrap().id;
    let listed = |sessions: &mut SessionServiceClient<Channel>| {
        let mut sessions = sessions.clone();
        async move {
            sessions
                .list_sessions(pb::ListSessionsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .sessions
                .len()
        }
    };
    let count = listed(&mut sessions).await;
    let label = |k: &str, v: &str| [(k.to_string(), v.to_string())].into();
    let many = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let huge_value = "v".repeat(1 << 20);
    let bad_labels: Vec<(&str, std::collections::HashMap<String, String>)> = vec![
        ("space in key", label("bad key", "v")),
        ("empty key", label("", "v")),
        ("slash only", label("/", "v")),
        ("bad prefix", label("-x.io/name", "v")),
        ("value with space", label("k", "a b")),
        ("overlong value", label("k", &"v".repeat(64))),
        ("control character", label("k\n", "v")),
        ("too many labels", many(65)),
        ("thousands of labels", many(10_000)),
    ];
    for (case, labels) in bad_labels {
        let create = pb::CreateSessionRequest {
            labels,
            ..Default::default()
        };
        refused_at_create_and_update(&mut sessions, &id, "labels", case, create).await;
    }
    let bad_metadata: Vec<(&str, std::collections::HashMap<String, String>)> = vec![
        ("too many entries", many(65)),
        ("huge value", label("k", &huge_value)),
        ("huge key", label(&"k".repeat(300), "v")),
    ];
    for (case, metadata) in bad_metadata {
        let created = sessions
            .create_session(pb::CreateSessionRequest {
                metadata,
                ..Default::default()
            })
            .await;
        assert_eq!(code(created), Code::InvalidArgument, "metadata: {case}");
    }
    let binding = |subject: &str, role: i32| pb::RoleBinding {
        subject: subject.into(),
        role,
    };
    let bindings = |n: usize| (0..n).map(|i| binding(&format!("user:u{i}"), 1)).collect();
    let bad_policies: Vec<(&str, Vec<pb::RoleBinding>)> = vec![
        ("too many bindings", bindings(65)),
        ("a hundred thousand bindings", bindings(100_000)),
        ("no kind", vec![binding("alice", 1)]),
        ("empty name", vec![binding("user:", 1)]),
        (
            "huge name",
            vec![binding(&format!("user:{}", "a".repeat(300)), 1)],
        ),
        ("space in name", vec![binding("group:a b", 1)]),
        ("no role", vec![binding("user:alice", 0)]),
        ("unknown role", vec![binding("user:alice", 99)]),
    ];
    for (case, bindings) in bad_policies {
        let create = pb::CreateSessionRequest {
            policy: Some(pb::Policy {
                bindings,
                ..Default::default()
            }),
            ..Default::default()
        };
        refused_at_create_and_update(&mut sessions, &id, "policy", case, create).await;
    }
    // A mask that names a field many times (each would copy the labels): refused whole.
    for paths in [vec!["labels"; 2], vec!["labels"; 200_000]] {
        let updated = sessions
            .update_session(pb::UpdateSessionRequest {
                session_id: id.clone(),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
                labels: label("suite", "changed"),
                ..Default::default()
            })
            .await;
        assert_eq!(
            code(updated),
            Code::InvalidArgument,
            "{} paths",
            paths.len()
        );
    }

    // TTLs whose expiry time would overflow, and a transfer comment past its limit.
    for seconds in [i64::MAX, 10 * 365 * 24 * 3600 + 1] {
        let create = pb::CreateSessionRequest {
            ttl: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        };
        let case = format!("ttl of {seconds} s");
        refused_at_create_and_update(&mut sessions, &id, "ttl", &case, create).await;
    }
    let transferred = sessions
        .transfer_session(pb::TransferSessionRequest {
            session_id: id.clone(),
            new_owner: "bob".into(),
            comment: "c".repeat(1 << 20),
            ..Default::default()
        })
        .await;
    assert_eq!(code(transferred), Code::InvalidArgument);
    assert_eq!(listed(&mut sessions).await, count, "no session was created");
    let session = sessions
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(session.labels, label("suite", "e2e"), "labels unchanged");
    assert!(
        session.policy.unwrap().bindings.is_empty(),
        "policy unchanged"
    );

    // A commit without the approvals the policy requires.
    let gated = sessions
        .create_session(pb::CreateSessionRequest {
            policy: Some(pb::Policy {
                required_commit_approvals: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .id;
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    workspace
        .make_directory(mkdir(&gated, "src"))
        .await
        .unwrap();
    let before = snapshot(&dev, &gated).await;
    let commit = HistoryServiceClient::new(dev.channel.clone())
        .commit(pb::CommitRequest {
            session_id: gated.clone(),
            message: "unreviewed".into(),
            expected_head_version: 0,
        })
        .await;
    let status = commit.expect_err("a commit without approvals");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("approval"), "{status:?}");
    assert_eq!(snapshot(&dev, &gated).await, before);

    // Writes to a closed session.
    sessions
        .close_session(pb::CloseSessionRequest {
            session_id: gated.clone(),
            archive: false,
        })
        .await
        .unwrap();
    let result = workspace.make_directory(mkdir(&gated, "late")).await;
    assert_eq!(code(result), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bus_offsets_out_of_range_are_refused() {
    let dev = start().await;
    let id = create_session(&dev.channel).await.unwrap().id;
    let mut bus = aether_proto::bus_service_client::BusServiceClient::new(dev.channel.clone());
    let published = bus
        .publish(pb::PublishRequest {
            session_id: id.clone(),
            messages: vec![pb::OutgoingMessage {
                subject: "agent.note".into(),
                payload: "x".into(),
                headers: Default::default(),
            }],
            durability: pb::Durability::Persisted as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let next = published.last_offset + 1;
    for offset in [0, next + 1, u64::MAX] {
        let status = bus
            .subscribe(pb::SubscribeRequest {
                session_id: id.clone(),
                start: Some(pb::StartPosition {
                    position: Some(pb::start_position::Position::Offset(offset)),
                }),
                subject_filter: String::new(),
            })
            .await
            .map(|_| ())
            .expect_err("out of range");
        assert_eq!(
            status.code(),
            Code::OutOfRange,
            "offset {offset}: {status:?}"
        );
        assert!(
            status.message().contains(&format!("to {next}")),
            "{status:?}"
        );
    }
    let info = bus
        .get_stream_info(pb::GetStreamInfoRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.last_offset, published.last_offset, "nothing changed");
}

/// The last offset of a bus stream.
async fn last_offset(
    bus: &mut aether_proto::bus_service_client::BusServiceClient<tonic::transport::Channel>,
    stream: &str,
) -> u64 {
    bus.get_stream_info(pb::GetStreamInfoRequest {
        session_id: stream.to_string(),
    })
    .await
    .unwrap()
    .into_inner()
    .last_offset
}

/// A status and the limit its message must name.
fn assert_exhausted(status: tonic::Status, limit: usize, case: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{case}: {status:?}");
    assert!(
        status
            .message()
            .contains(&format!("the limit is: {limit} bytes")),
        "{case}: the message names the limit: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_oversized_messages_are_resource_exhausted_and_change_nothing() {
    // The servers' message limits: WorkspaceService's, tonic's default (the other coordinator
    // services), and the bus's (aether_bus::MAX_GRPC_MESSAGE_BYTES).
    const WORKSPACE_LIMIT: usize = 8 * 1024 * 1024;
    const DEFAULT_LIMIT: usize = 4 * 1024 * 1024;
    const BUS_LIMIT: usize = 4 * 1024 * 1024 + 64 * 1024;
    const MIB: usize = 1024 * 1024;
    let dev = start().await;
    let id = create_session(&dev.channel).await.unwrap().id;
    // tonic clients send any size by default; said here so the requests surely leave.
    let mut workspace =
        WorkspaceServiceClient::new(dev.channel.clone()).max_encoding_message_size(usize::MAX);
    let mut sessions =
        SessionServiceClient::new(dev.channel.clone()).max_encoding_message_size(usize::MAX);
    let mut bus = aether_proto::bus_service_client::BusServiceClient::new(dev.channel.clone())
        .max_encoding_message_size(usize::MAX);
    workspace.make_directory(mkdir(&id, "src")).await.unwrap();
    let before = snapshot(&dev, &id).await;

    // WriteFile: a fine header, then one data message over the limit. The handler gets the
    // error from its second `message()` and ends the call with it.
    let messages = vec![
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Header(pb::WriteFileHeader {
                session_id: id.clone(),
                path: "src/big.bin".into(),
                ..Default::default()
            })),
        },
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Data(
                common::test_bytes(9 * MIB, 1).into(),
            )),
        },
    ];
    let status = workspace
        .write_file(futures::stream::iter(messages))
        .await
        .expect_err("a 9 MiB WriteFile message");
    assert_exhausted(status, WORKSPACE_LIMIT, "WriteFile data");
    assert_eq!(snapshot(&dev, &id).await, before, "WriteFile changed it");

    // ApplyChanges: nine inline writes of 1 MiB each, one unary request over the limit.
    let changes = (0..9)
        .map(|i| pb::Change {
            op: Some(pb::change::Op::Write(pb::WriteOp {
                path: format!("src/f{i}"),
                content: common::test_bytes(MIB, i + 2).into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    let status = workspace
        .apply_changes(pb::ApplyChangesRequest {
            session_id: id.clone(),
            changes,
            expected_head_version: 0,
        })
        .await
        .expect_err("a 9 MiB ApplyChanges");
    assert_exhausted(status, WORKSPACE_LIMIT, "ApplyChanges");
    assert_eq!(snapshot(&dev, &id).await, before, "ApplyChanges changed it");

    // CreateSession under tonic's default limit: 5 MiB of metadata.
    let count = sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions
        .len();
    let status = sessions
        .create_session(pb::CreateSessionRequest {
            metadata: [("k".to_string(), "v".repeat(5 * MIB))].into(),
            ..Default::default()
        })
        .await
        .expect_err("a 5 MiB CreateSession");
    assert_exhausted(status, DEFAULT_LIMIT, "CreateSession");
    let after = sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions
        .len();
    assert_eq!(after, count, "no session was created");

    // Bus Publish: five 1 MiB messages (each within the payload limit), the batch over the
    // service's message limit. On the stream of a session of its own, which nothing changes:
    // the coordinator publishes a session's events in the background, which would move its
    // stream's offsets (and the bus refuses streams of sessions that do not exist).
    let stream = create_session(&dev.channel).await.unwrap().id;
    let publish = |messages: Vec<pb::OutgoingMessage>| pb::PublishRequest {
        session_id: stream.clone(),
        messages,
        durability: pb::Durability::Persisted as i32,
    };
    let note = |payload: Vec<u8>| pb::OutgoingMessage {
        subject: "agent.note".into(),
        payload: payload.into(),
        headers: Default::default(),
    };
    let last = bus
        .publish(publish(vec![note(b"small".to_vec())]))
        .await
        .unwrap()
        .into_inner()
        .last_offset;
    let big = (0..5)
        .map(|i| note(common::test_bytes(MIB, i + 20)))
        .collect();
    let status = bus
        .publish(publish(big))
        .await
        .expect_err("a 5 MiB Publish");
    assert_exhausted(status, BUS_LIMIT, "Publish");
    assert_eq!(
        last_offset(&mut bus, &stream).await,
        last,
        "nothing was published"
    );

    // PublishStream: a small batch, then one over the limit. The first is acknowledged; the
    // call then ends with the limit's status, after its response headers (in the trailers).
    let batch = |batch_id: u64, messages: Vec<pb::OutgoingMessage>| pb::PublishStreamRequest {
        session_id: stream.clone(),
        messages,
        durability: pb::Durability::Persisted as i32,
        batch_id,
    };
    let big = (0..5)
        .map(|i| note(common::test_bytes(MIB, i + 30)))
        .collect();
    let batches = vec![batch(1, vec![note(b"fits".to_vec())]), batch(2, big)];
    let mut acks = bus
        .publish_stream(futures::stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let first = acks
        .message()
        .await
        .unwrap()
        .expect("the first batch's ack");
    assert_eq!((first.batch_id, first.first_offset), (1, last + 1));
    let status = acks
        .message()
        .await
        .expect_err("a 5 MiB PublishStream batch");
    assert_exhausted(status, BUS_LIMIT, "PublishStream");
    assert_eq!(
        last_offset(&mut bus, &stream).await,
        last + 1,
        "only the batch within the limit"
    );

    // The same calls within the limits still work: the refusals were for the sizes.
    let written = common::write_file(&dev.channel, &id, "src/ok.bin", &[7; 1000])
        .await
        .unwrap();
    assert_eq!(written.head_version, before.0 + 1);
}

/// A chain of directories, each holding two copies of the one before (`levels` of them: 2^levels
/// paths below the last, from O(levels) objects), its one file written with `mtime_ns`.
fn doubling_chain(id: &str, levels: usize, mtime_ns: i64) -> pb::ApplyChangesRequest {
    use pb::change::Op;
    let mut ops = vec![Op::Write(pb::WriteOp {
        path: "d0/f".into(),
        content: b"same bytes".to_vec().into(),
        mtime_ns,
        ..Default::default()
    })];
    for k in 1..=levels {
        ops.push(Op::MakeDirectory(pb::MakeDirectoryOp {
            path: format!("d{k}"),
            parents: false,
        }));
        for copy in ["a", "b"] {
            ops.push(Op::Copy(pb::CopyOp {
                from: format!("d{}", k - 1),
                to: format!("d{k}/{copy}"),
                overwrite: false,
            }));
        }
    }
    pb::ApplyChangesRequest {
        session_id: id.into(),
        changes: ops
            .into_iter()
            .map(|op| pb::Change {
                op: Some(op),
                precondition: None,
            })
            .collect(),
        expected_head_version: 0,
    }
}

/// Builds, in session `id`, the chain of [`doubling_chain`] with its file at one time,
/// checkpoints it as "before", and builds it again with the file at another: two trees that
/// differ at every one of 2^levels leaves, by time alone.
async fn time_only_differences(dev: &Dev, id: &str, levels: usize) {
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    workspace
        .apply_changes(doubling_chain(id, levels, 1_000_000_000))
        .await
        .unwrap();
    HistoryServiceClient::new(dev.channel.clone())
        .create_checkpoint(pb::CreateCheckpointRequest {
            session_id: id.into(),
            name: "before".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    let mut rebuilt = doubling_chain(id, levels, 2_000_000_000);
    let deletes = (0..=levels).map(|k| pb::Change {
        op: Some(pb::change::Op::Delete(pb::DeleteOp {
            path: format!("d{k}"),
            recursive: true,
        })),
        precondition: None,
    });
    rebuilt.changes.splice(0..0, deletes);
    workspace.apply_changes(rebuilt).await.unwrap();
}

/// One Diff page from checkpoint "before" to the head (failing after 60 s).
async fn diff_page(dev: &Dev, id: &str, token: String) -> pb::DiffResponse {
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    let call = workspace.diff(pb::DiffRequest {
        session_id: id.into(),
        from: Some(pb::Revision {
            kind: pb::RevisionKind::Checkpoint as i32,
            name: "before".into(),
        }),
        page: Some(pb::PageRequest {
            page_size: 1000,
            page_token: token,
        }),
        ..Default::default()
    });
    tokio::time::timeout(std::time::Duration::from_secs(60), call)
        .await
        .expect("a Diff page took over 60 s")
        .unwrap()
        .into_inner()
}

/// Two trees that differ in more paths than the store holds objects (copies of copies, each
/// leaf's time changed): a Diff page stops at its bound with a token instead of walking them
/// all, and paging through finds exactly the real difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_diffs_of_shared_subtrees_are_bounded_per_page() {
    let dev = start().await;
    // 2^17 leaves that differ only in time, and one real change after them all.
    let id = create_session(&dev.channel).await.unwrap().id;
    time_only_differences(&dev, &id, 17).await;
    common::write_file(&dev.channel, &id, "zz.txt", b"a real change")
        .await
        .unwrap();
    let (mut found, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = diff_page(&dev, &id, token).await;
        pages += 1;
        found.extend(page.entries.into_iter().map(|e| e.path));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(found, ["zz.txt"]);
    assert!(pages >= 2, "{pages} page(s): the walk was not bounded");

    // 2^60 leaves: each page still answers, and moves on.
    let id = create_session(&dev.channel).await.unwrap().id;
    time_only_differences(&dev, &id, 60).await;
    let first = diff_page(&dev, &id, String::new()).await;
    assert!(first.entries.is_empty() && !first.next_page_token.is_empty());
    let second = diff_page(&dev, &id, first.next_page_token.clone()).await;
    assert!(!second.next_page_token.is_empty());
    assert_ne!(second.next_page_token, first.next_page_token);
}

/// Chunk lists that would make the coordinator read far more than they declare: refused
/// before anything is read, with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chunk_lists_are_refused_before_anything_is_read() {
    let dev = start().await;
    let mut workspace = WorkspaceServiceClient::new(dev.channel.clone());
    let id = create_session(&dev.channel).await.unwrap().id;
    let bytes = vec![7u8; 1000];
    common::write_file(&dev.channel, &id, "stored.bin", &bytes)
        .await
        .unwrap();
    let entry = workspace
        .list_tree(pb::ListTreeRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .remove(0);
    let chunk = |size: u64| pb::ChunkRef {
        hash: entry.hash.clone(),
        size,
    };
    let write = |path: &str, chunks: Vec<pb::ChunkRef>| pb::Change {
        op: Some(pb::change::Op::Write(pb::WriteOp {
            path: path.into(),
            chunks,
            ..Default::default()
        })),
        precondition: None,
    };
    let batch = |changes: Vec<pb::Change>| pb::ApplyChangesRequest {
        session_id: id.clone(),
        changes,
        expected_head_version: 0,
    };
    let before = snapshot(&dev, &id).await;
    let four_gib = 4u64 << 30;
    let cases: Vec<(&str, pb::ApplyChangesRequest)> = vec![
        (
            "a size other than the stored one",
            batch(vec![write("a", vec![chunk(999)])]),
        ),
        (
            "too many chunks",
            batch(vec![write("a", vec![chunk(1000); 65_537])]),
        ),
        (
            "more than a file holds",
            batch(vec![write("a", vec![chunk(four_gib), chunk(1000)])]),
        ),
        (
            "a precondition hash that is no hash",
            batch(vec![pb::Change {
                precondition: Some(pb::PathPrecondition {
                    condition: Some(pb::path_precondition::Condition::ContentHash(
                        "not a hash ".repeat(100_000),
                    )),
                }),
                ..write("stored.bin", vec![chunk(1000)])
            }]),
        ),
        (
            "more than a batch assembles",
            batch(
                (0..5)
                    .map(|i| write(&format!("f{i}"), vec![chunk(four_gib)]))
                    .collect(),
            ),
        ),
    ];
    for (case, request) in cases {
        let status = workspace.apply_changes(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        assert!(
            status.message().len() < 4096,
            "{case}: a message of {} bytes",
            status.message().len()
        );
    }
    assert_eq!(snapshot(&dev, &id).await, before);

    // The same chunk named three times, with its size: a file of the three.
    workspace
        .apply_changes(batch(vec![write("thrice.bin", vec![chunk(1000); 3])]))
        .await
        .unwrap();
    let read = common::read_file(&dev.channel, &id, "thrice.bin")
        .await
        .unwrap();
    assert_eq!(read, [bytes.clone(), bytes.clone(), bytes].concat());
}
