//! Fork and review, over real gRPC on real etcd and S3: a session with files, knowledge and
//! annotations is forked; the fork carries all three, and the two diverge independently.

use crate::lifecycle_support;

use aether_proto as pb;
use lifecycle_support::*;
use tonic::Code;

fn annotate(
    id: &str,
    path: &str,
    lines: Option<(u32, u32)>,
    body: &str,
) -> pb::AddAnnotationRequest {
    pb::AddAnnotationRequest {
        session_id: id.into(),
        path: path.into(),
        lines: lines.map(|(first_line, last_line)| pb::LineRange {
            first_line,
            last_line,
        }),
        body: body.into(),
    }
}

fn ids(annotations: &[pb::Annotation]) -> Vec<&str> {
    annotations.iter().map(|a| a.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_fork_carries_files_knowledge_and_annotations() {
    let t = Trusting::start().await.unwrap();
    let parent = create_session(&t, "agent", None).await.unwrap().id;
    let mut events = subscribe(&t, &parent).await.unwrap();
    let mut review = t.review();

    write(&t, &parent, "README.md", b"# plan\n").await.unwrap();
    write(
        &t,
        &parent,
        "src/lib.rs",
        b"line 1\nline 2\nline 3\nline 4\nline 5\n",
    )
    .await
    .unwrap();
    put_entry(&t, &parent, "plan", b"refactor the parser", &["todo"])
        .await
        .unwrap();
    put_entry(&t, &parent, "notes/empty", b"", &[])
        .await
        .unwrap();

    // Annotations: on lines, on a whole file, on a path that does not exist, on the session.
    let on_lines = review
        .add_annotation(as_user(
            "alice",
            annotate(&parent, "src/lib.rs", Some((3, 5)), "tighten this"),
        ))
        .await
        .unwrap()
        .into_inner()
        .annotation
        .unwrap();
    assert_eq!(on_lines.author, "alice");
    assert_eq!(
        on_lines.lines,
        Some(pb::LineRange {
            first_line: 3,
            last_line: 5
        })
    );
    assert!(!on_lines.resolved);
    let on_file = review
        .add_annotation(as_user("bob", annotate(&parent, "README.md", None, "typo")))
        .await
        .unwrap()
        .into_inner()
        .annotation
        .unwrap();
    let on_missing = review
        .add_annotation(as_user(
            "bob",
            annotate(&parent, "docs/design.md", None, "write this"),
        ))
        .await
        .unwrap()
        .into_inner()
        .annotation
        .unwrap();
    let on_session = review
        .add_annotation(as_user(
            "alice",
            annotate(&parent, "", None, "overall fine"),
        ))
        .await
        .unwrap()
        .into_inner()
        .annotation
        .unwrap();
    let resolved = review
        .resolve_annotation(as_user(
            "agent",
            pb::ResolveAnnotationRequest {
                session_id: parent.clone(),
                annotation_id: on_file.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .annotation
        .unwrap();
    assert!(resolved.resolved);
    assert_eq!(resolved.resolved_by, "agent");
    assert!(resolved.resolved_at.is_some());

    // Bad input changes nothing and says what is wrong.
    let cases = [
        ("../escape", None, "x"),
        ("/absolute", None, "x"),
        ("src//double", None, "x"),
        ("src/lib.rs", Some((0, 2)), "lines count from 1"),
        ("src/lib.rs", Some((5, 3)), "last before first"),
        ("src/lib.rs", None, ""),
    ];
    for (path, lines, body) in cases {
        let refused = review
            .add_annotation(annotate(&parent, path, lines, body))
            .await;
        assert_eq!(
            code_of(refused),
            Code::InvalidArgument,
            "{path} {lines:?} {body:?}"
        );
    }
    let too_long = "x".repeat(64 * 1024 + 1);
    let refused = review
        .add_annotation(annotate(&parent, "a", None, &too_long))
        .await;
    assert_eq!(code_of(refused), Code::InvalidArgument);
    let longest = review
        .add_annotation(annotate(&parent, "a", None, &"y".repeat(64 * 1024)))
        .await
        .unwrap()
        .into_inner()
        .annotation
        .unwrap();
    for (annotation_id, code) in [("ann-999", Code::NotFound), ("999", Code::InvalidArgument)] {
        let refused = review
            .resolve_annotation(pb::ResolveAnnotationRequest {
                session_id: parent.clone(),
                annotation_id: annotation_id.into(),
            })
            .await;
        assert_eq!(code_of(refused), code, "{annotation_id}");
    }

    // Listing: oldest first, resolved ones on request, by path prefix (whole names), paged.
    let open = all_annotations(&t, &parent, "", false, 100).await.unwrap();
    assert_eq!(
        ids(&open),
        [&on_lines.id, &on_missing.id, &on_session.id, &longest.id]
    );
    let everything = all_annotations(&t, &parent, "", true, 2).await.unwrap();
    assert_eq!(
        ids(&everything),
        [
            &on_lines.id,
            &on_file.id,
            &on_missing.id,
            &on_session.id,
            &longest.id
        ]
    );
    let under_src = all_annotations(&t, &parent, "src", true, 100)
        .await
        .unwrap();
    assert_eq!(ids(&under_src), [&on_lines.id]);
    assert!(all_annotations(&t, &parent, "sr", true, 100)
        .await
        .unwrap()
        .is_empty());

    // Fork: files, knowledge and annotations (with their ids) come along.
    let fork = t
        .sessions()
        .fork_session(as_user(
            "reviewer-bot",
            pb::ForkSessionRequest {
                session_id: parent.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(fork.owner, "reviewer-bot");
    let fid = fork.id.clone();
    assert_eq!(
        read(&t, &fid, "src/lib.rs").await.unwrap(),
        b"line 1\nline 2\nline 3\nline 4\nline 5\n"
    );
    assert_eq!(read(&t, &fid, "README.md").await.unwrap(), b"# plan\n");
    let plan = get_entry(&t, &fid, "plan").await.unwrap();
    assert_eq!(&plan.value[..], b"refactor the parser");
    assert_eq!(plan.tags, ["todo"]);
    assert_eq!(plan.author, "anonymous");
    assert!(get_entry(&t, &fid, "notes/empty")
        .await
        .unwrap()
        .value
        .is_empty());
    let forked = all_annotations(&t, &fid, "", true, 100).await.unwrap();
    assert_eq!(
        forked, everything,
        "the fork carries every annotation as it was"
    );

    // They diverge: changes in the fork stay in the fork, and the other way round.
    write(&t, &fid, "src/lib.rs", b"rewritten\n").await.unwrap();
    put_entry(&t, &fid, "plan", b"parser done", &["done"])
        .await
        .unwrap();
    put_entry(&t, &fid, "fork-only", b"1", &[]).await.unwrap();
    let in_fork = review
        .add_annotation(as_user(
            "alice",
            annotate(&fid, "src/lib.rs", Some((1, 1)), "better"),
        ))
        .await
        .unwrap()
        .into_inner()
        .annotation
        .unwrap();
    review
        .resolve_annotation(pb::ResolveAnnotationRequest {
            session_id: fid.clone(),
            annotation_id: on_lines.id.clone(),
        })
        .await
        .unwrap();
    put_entry(&t, &parent, "parent-only", b"2", &[])
        .await
        .unwrap();

    assert_eq!(read(&t, &parent, "src/lib.rs").await.unwrap().len(), 35);
    assert_eq!(
        &get_entry(&t, &parent, "plan").await.unwrap().value[..],
        b"refactor the parser"
    );
    assert_eq!(
        code_of_entry(get_entry(&t, &parent, "fork-only").await),
        Code::NotFound
    );
    assert_eq!(
        code_of_entry(get_entry(&t, &fid, "parent-only").await),
        Code::NotFound
    );
    let parent_open = all_annotations(&t, &parent, "", false, 100).await.unwrap();
    assert_eq!(
        ids(&parent_open),
        [&on_lines.id, &on_missing.id, &on_session.id, &longest.id]
    );
    let fork_open = all_annotations(&t, &fid, "", false, 100).await.unwrap();
    assert_eq!(
        ids(&fork_open),
        [&on_missing.id, &on_session.id, &longest.id, &in_fork.id]
    );
    let keys: Vec<String> = all_entries(&t, &fid, "", "", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["fork-only", "notes/empty", "plan"]);

    // Annotations are published and audited.
    await_events(
        &mut events,
        &[
            ("session.annotation", &on_lines.id, "added"),
            ("session.annotation", &on_file.id, "resolved"),
        ],
    )
    .await
    .unwrap();
    let audit = all_audit(&t, &parent).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "review.annotation.add"
        && e.principal == "alice"
        && e.target == on_lines.id
        && e.details.get("path").map(String::as_str) == Some("src/lib.rs")));
    assert!(audit.iter().any(|e| e.action == "review.annotation.resolve"
        && e.principal == "agent"
        && e.target == on_file.id));
    assert!(audit
        .iter()
        .any(|e| e.action == "knowledge.put" && e.target == "plan"));
}

fn code_of_entry(result: Result<pb::KnowledgeEntry, tonic::Status>) -> Code {
    match result {
        Ok(entry) => panic!("expected a failure, got {entry:?}"),
        Err(status) => status.code(),
    }
}
