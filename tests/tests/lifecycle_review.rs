//! Human in the loop, over real gRPC on real etcd and S3: an agent prepares changes, reviewers
//! approve or reject them, and the policy's approvals gate commits and exports. An approval is
//! bound to the exact head it approved; a change after it invalidates it.

use crate::lifecycle_support;

use aether_proto as pb;
use lifecycle_support::*;
use tonic::Code;

fn request(id: &str, action: pb::ApprovalAction, reviewers: &[&str]) -> pb::RequestApprovalRequest {
    pb::RequestApprovalRequest {
        session_id: id.into(),
        action: action as i32,
        reviewers: reviewers.iter().map(|r| r.to_string()).collect(),
        comment: "please review".into(),
    }
}

fn decide(id: &str, approval: &str, decision: pb::Decision) -> pb::DecideApprovalRequest {
    pb::DecideApprovalRequest {
        session_id: id.into(),
        approval_id: approval.into(),
        decision: decision as i32,
        comment: "looked at it".into(),
    }
}

fn commit_request(id: &str, message: &str) -> pb::CommitRequest {
    pb::CommitRequest {
        session_id: id.into(),
        message: message.into(),
        ..Default::default()
    }
}

async fn approvals_in(t: &Trusting, id: &str, states: &[pb::ApprovalState]) -> Vec<pb::Approval> {
    t.review()
        .list_approvals(pb::ListApprovalsRequest {
            session_id: id.into(),
            states: states.iter().map(|s| *s as i32).collect(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .approvals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_human_in_the_loop_approval_gates_commit_and_export() {
    use pb::ApprovalAction::{Commit, Export};
    use pb::ApprovalState::{Approved, Pending, Rejected, Stale, Used};
    use pb::Decision::{Approve, Reject};

    let t = Trusting::start().await.unwrap();
    let policy = pb::Policy {
        bindings: vec![
            binding("user:alice", pb::Role::Reviewer),
            binding("user:bob", pb::Role::Owner),
            binding("user:carol", pb::Role::Viewer),
        ],
        required_commit_approvals: 1,
        required_export_approvals: 1,
    };
    let session = create_session(&t, "agent", Some(policy)).await.unwrap();
    assert_eq!(
        session.owner, "agent",
        "the trusted header names the caller"
    );
    let id = session.id.clone();
    let mut events = subscribe(&t, &id).await.unwrap();
    let (mut review, mut history) = (t.review(), t.history());

    // The agent prepares a change; without approval the commit is refused, saying what is missing.
    write(&t, &id, "src/main.rs", b"fn main() {}\n")
        .await
        .unwrap();
    let refused = status_of(
        history
            .commit(as_user("agent", commit_request(&id, "ship")))
            .await,
    );
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("1 missing"),
        "{}",
        refused.message()
    );

    // The agent asks; the request is bound to the current head.
    let head = get_session(&t, &id).await.unwrap();
    let first = review
        .request_approval(as_user("agent", request(&id, Commit, &[])))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(first.state, Pending as i32);
    assert_eq!(first.requester, "agent");
    assert_eq!(
        (first.head_version, first.head_root.as_str()),
        (head.head_version, head.head_root.as_str())
    );

    // Only reviewers decide, and never on their own request.
    for who in ["agent", "carol", "mallory", "anonymous"] {
        let denied = review
            .decide_approval(as_user(who, decide(&id, &first.id, Approve)))
            .await;
        assert_eq!(code_of(denied), Code::PermissionDenied, "{who}");
    }
    let own = review
        .request_approval(as_user("alice", request(&id, Commit, &[])))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    let self_approval = review
        .decide_approval(as_user("alice", decide(&id, &own.id, Approve)))
        .await;
    assert_eq!(code_of(self_approval), Code::PermissionDenied);
    // Malformed and unknown requests and decisions.
    let unspecified = review
        .decide_approval(as_user(
            "alice",
            decide(&id, &first.id, pb::Decision::Unspecified),
        ))
        .await;
    assert_eq!(code_of(unspecified), Code::InvalidArgument);
    let unknown = review
        .decide_approval(as_user("alice", decide(&id, "apr-999", Approve)))
        .await;
    assert_eq!(code_of(unknown), Code::NotFound);
    let malformed = review
        .decide_approval(as_user("alice", decide(&id, "999", Approve)))
        .await;
    assert_eq!(code_of(malformed), Code::InvalidArgument);
    let no_action = review
        .request_approval(as_user(
            "agent",
            request(&id, pb::ApprovalAction::Unspecified, &[]),
        ))
        .await;
    assert_eq!(code_of(no_action), Code::InvalidArgument);
    let not_a_reviewer = review
        .request_approval(as_user("agent", request(&id, Commit, &["carol"])))
        .await;
    assert_eq!(code_of(not_a_reviewer), Code::InvalidArgument);
    let bad_header = review
        .list_approvals(as_user(
            "two words",
            pb::ListApprovalsRequest {
                session_id: id.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code_of(bad_header), Code::Unauthenticated);

    // Alice approves; deciding twice is refused.
    let approved = review
        .decide_approval(as_user("alice", decide(&id, &first.id, Approve)))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(approved.state, Approved as i32);
    assert_eq!(approved.decisions.len(), 1);
    assert_eq!(approved.decisions[0].reviewer, "alice");
    let twice = review
        .decide_approval(as_user("alice", decide(&id, &first.id, Approve)))
        .await;
    assert_eq!(code_of(twice), Code::FailedPrecondition);

    // A change after the approval invalidates it: stale on read, refused on commit and decide.
    write(&t, &id, "src/late.rs", b"// one more thing\n")
        .await
        .unwrap();
    let stale: Vec<String> = approvals_in(&t, &id, &[Stale])
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(stale, [first.id.clone(), own.id.clone()]);
    let refused = status_of(
        history
            .commit(as_user("agent", commit_request(&id, "ship")))
            .await,
    );
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("stale"), "{}", refused.message());
    let late = review
        .decide_approval(as_user("bob", decide(&id, &first.id, Approve)))
        .await;
    assert_eq!(code_of(late), Code::FailedPrecondition);

    // Asked again and approved by bob (the owner role includes reviewing): the commit goes
    // through, records the approval, and uses it up.
    let second = review
        .request_approval(as_user("agent", request(&id, Commit, &[])))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    review
        .decide_approval(as_user("bob", decide(&id, &second.id, Approve)))
        .await
        .unwrap();
    let commit = history
        .commit(as_user("agent", commit_request(&id, "ship it")))
        .await
        .unwrap()
        .into_inner()
        .commit
        .unwrap();
    assert_eq!(commit.approvals, [second.id.as_str()]);
    assert_eq!(commit.author, "agent");
    let stored = history
        .get_commit(pb::GetCommitRequest {
            session_id: id.clone(),
            commit_id: commit.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .commit
        .unwrap();
    assert_eq!(stored.approvals, [second.id.as_str()]);
    let used: Vec<String> = approvals_in(&t, &id, &[Used])
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(used, [second.id.as_str()]);
    let again = history
        .commit(as_user("agent", commit_request(&id, "again")))
        .await;
    assert_eq!(
        code_of(again),
        Code::FailedPrecondition,
        "a used approval admits nothing more"
    );

    // Reject path: a request naming alice; bob may not decide it; alice rejects; it is over.
    let third = review
        .request_approval(as_user("agent", request(&id, Commit, &["alice"])))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(third.reviewers, ["alice"]);
    let not_named = review
        .decide_approval(as_user("bob", decide(&id, &third.id, Approve)))
        .await;
    assert_eq!(code_of(not_named), Code::PermissionDenied);
    let rejected = review
        .decide_approval(as_user("alice", decide(&id, &third.id, Reject)))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(rejected.state, Rejected as i32);
    assert_eq!(rejected.decisions[0].decision, Reject as i32);
    let after_reject = review
        .decide_approval(as_user("alice", decide(&id, &third.id, Approve)))
        .await;
    assert_eq!(code_of(after_reject), Code::FailedPrecondition);
    let refused = history
        .commit(as_user("agent", commit_request(&id, "sneak")))
        .await;
    assert_eq!(code_of(refused), Code::FailedPrecondition);
    let rejected_ids: Vec<String> = approvals_in(&t, &id, &[Rejected])
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(rejected_ids, [third.id.as_str()]);

    // Export is gated the same way, and an export approval is used by one export.
    let refused = export(&t, "agent", &id).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{}",
        refused.message()
    );
    let for_export = review
        .request_approval(as_user("agent", request(&id, Export, &[])))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    let still_refused = history
        .commit(as_user("agent", commit_request(&id, "x")))
        .await;
    assert_eq!(
        code_of(still_refused),
        Code::FailedPrecondition,
        "export approvals do not admit commits"
    );
    review
        .decide_approval(as_user("alice", decide(&id, &for_export.id, Approve)))
        .await
        .unwrap();
    let tar = export(&t, "agent", &id).await.unwrap();
    assert!(tar.len() >= 1024, "a tar with the files");
    assert!(
        tar.windows(b"src/main.rs".len())
            .any(|w| w == b"src/main.rs"),
        "the export holds the approved head"
    );
    let used: Vec<String> = approvals_in(&t, &id, &[Used])
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(used, [second.id.clone(), for_export.id.clone()]);
    let second_export = export(&t, "agent", &id).await.unwrap_err();
    assert_eq!(second_export.code(), Code::FailedPrecondition);

    // Paging and filtering of the list.
    let all = approvals_in(&t, &id, &[]).await;
    assert_eq!(all.len(), 5);
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = review
            .list_approvals(pb::ListApprovalsRequest {
                session_id: id.clone(),
                states: vec![],
                page: Some(pb::PageRequest {
                    page_size: 2,
                    page_token: token.clone(),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.approvals.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        paged,
        all.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        "oldest first"
    );

    // Every decision is audited with its principal, target and outcome.
    let audit = all_audit(&t, &id).await.unwrap();
    let decided = |who: &str, target: &str, outcome: &str| {
        audit.iter().any(|e| {
            e.action == "review.approval.decide"
                && e.principal == who
                && e.target == target
                && e.outcome == "ok"
                && e.details.get("decision").map(String::as_str) == Some(outcome)
        })
    };
    assert!(decided("alice", &first.id, "approved"));
    assert!(decided("bob", &second.id, "approved"));
    assert!(decided("alice", &third.id, "rejected"));
    assert!(audit.iter().any(|e| e.action == "history.commit"
        && e.principal == "agent"
        && e.details.get("approvals") == Some(&second.id)));
    assert!(audit.iter().any(|e| e.action == "review.approval.use"
        && e.principal == "agent"
        && e.target == for_export.id));
    assert!(audit.iter().any(|e| e.action == "review.approval.request"
        && e.principal == "agent"
        && e.target == first.id));

    // And published on the session's stream.
    await_events(
        &mut events,
        &[
            ("session.approval.requested", &first.id, "commit"),
            ("session.approval.decided", &first.id, "approved"),
            ("session.approval.decided", &third.id, "rejected"),
            ("session.approval.requested", &for_export.id, "export"),
        ],
    )
    .await
    .unwrap();
}

/// The session's owner reviews without binding itself, and closing with an archive is an
/// export: it needs the export approvals the policy requires, and uses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_owner_reviews_and_an_archived_close_needs_export_approval() {
    use pb::ApprovalState::Used;

    let t = Trusting::start().await.unwrap();
    let policy = pb::Policy {
        bindings: vec![binding("user:agent", pb::Role::Editor)],
        required_commit_approvals: 0,
        required_export_approvals: 1,
    };
    let id = create_session(&t, "alice", Some(policy)).await.unwrap().id;
    write(&t, &id, "notes.md", b"# for the archive\n")
        .await
        .unwrap();
    let (mut review, mut sessions) = (t.review(), t.sessions());
    let close = |who: &str| {
        as_user(
            who,
            pb::CloseSessionRequest {
                session_id: id.clone(),
                archive: true,
            },
        )
    };

    let refused = status_of(sessions.close_session(close("alice")).await);
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("1 missing"),
        "{}",
        refused.message()
    );
    let still = get_session(&t, &id).await.unwrap();
    assert_eq!(
        still.state,
        pb::SessionState::Active as i32,
        "nothing closed"
    );

    // The agent may name the owner as its reviewer, and the owner decides.
    let asked = review
        .request_approval(as_user(
            "agent",
            request(&id, pb::ApprovalAction::Export, &["alice"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    review
        .decide_approval(as_user(
            "alice",
            decide(&id, &asked.id, pb::Decision::Approve),
        ))
        .await
        .unwrap();
    let closed = sessions
        .close_session(close("alice"))
        .await
        .unwrap()
        .into_inner();
    assert!(!closed.archive_blob_hash.is_empty());
    let used: Vec<String> = approvals_in(&t, &id, &[Used])
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(used, [asked.id.as_str()]);
    let audit = all_audit(&t, &id).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "session.close"
                && e.details.get("approvals_used") == Some(&asked.id))
    );
}

/// The counts GetSession gives for session `id`.
async fn counts(t: &Trusting, id: &str) -> pb::SessionCounts {
    t.sessions()
        .get_session(as_user(
            "agent",
            pb::GetSessionRequest {
                session_id: id.to_string(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .counts
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_two_required_approvals_need_two_distinct_reviewers() {
    use pb::ApprovalAction::Commit;
    use pb::Decision::Approve;

    let t = Trusting::start().await.unwrap();
    let policy = pb::Policy {
        bindings: vec![
            binding("user:alice", pb::Role::Reviewer),
            binding("user:bob", pb::Role::Reviewer),
        ],
        required_commit_approvals: 2,
        required_export_approvals: 0,
    };
    let id = create_session(&t, "agent", Some(policy)).await.unwrap().id;
    let (mut review, mut history) = (t.review(), t.history());
    write(&t, &id, "README.md", b"# two keys\n").await.unwrap();

    // Export is not gated here: it needs no approval and uses none.
    export(&t, "agent", &id).await.unwrap();

    // Two requests approved by the same reviewer count once.
    let a = review
        .request_approval(as_user("agent", request(&id, Commit, &[])))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    let b = review
        .request_approval(as_user("agent", request(&id, Commit, &[])))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    review
        .add_annotation(as_user(
            "agent",
            pb::AddAnnotationRequest {
                session_id: id.clone(),
                path: "README.md".into(),
                body: "two keys?".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    t.knowledge()
        .put_entry(as_user(
            "agent",
            pb::PutEntryRequest {
                session_id: id.clone(),
                entry: Some(pb::KnowledgeEntry {
                    key: "policy".into(),
                    value: b"two reviewers".to_vec().into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();
    let before = counts(&t, &id).await;
    assert_eq!(
        (
            before.pending_approvals,
            before.annotations,
            before.knowledge_entries,
            before.files
        ),
        (2, 1, 1, 1)
    );
    for approval in [&a, &b] {
        review
            .decide_approval(as_user("alice", decide(&id, &approval.id, Approve)))
            .await
            .unwrap();
    }
    assert_eq!(counts(&t, &id).await.pending_approvals, 0, "decided");
    let refused = status_of(
        history
            .commit(as_user("agent", commit_request(&id, "one key")))
            .await,
    );
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("it has 1, 1 missing"),
        "{}",
        refused.message()
    );

    // A second reviewer on the same request completes it; both requests admit the commit.
    let both = review
        .decide_approval(as_user("bob", decide(&id, &a.id, Approve)))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(both.decisions.len(), 2);
    let commit = history
        .commit(as_user("agent", commit_request(&id, "two keys")))
        .await
        .unwrap()
        .into_inner()
        .commit
        .unwrap();
    assert_eq!(commit.approvals, [a.id.clone(), b.id.clone()]);

    // A reviewer who loses the role no longer counts.
    let c = review
        .request_approval(as_user("agent", request(&id, Commit, &[])))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    for who in ["alice", "bob"] {
        review
            .decide_approval(as_user(who, decide(&id, &c.id, Approve)))
            .await
            .unwrap();
    }
    t.sessions()
        .update_session(as_user(
            "agent",
            pb::UpdateSessionRequest {
                session_id: id.clone(),
                policy: Some(pb::Policy {
                    bindings: vec![binding("user:alice", pb::Role::Reviewer)],
                    required_commit_approvals: 2,
                    required_export_approvals: 0,
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["policy".into()],
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let refused = history
        .commit(as_user("agent", commit_request(&id, "bob left")))
        .await;
    assert_eq!(code_of(refused), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_principal_header_is_ignored_unless_trusted() {
    // The default coordinator does not trust the header: everyone stays anonymous, so nobody
    // can claim a reviewer's name to approve.
    let cluster = aether_testkit::Cluster::start(aether_testkit::ClusterSpec::default())
        .await
        .unwrap();
    let channel = connect(&cluster.coordinator_endpoint()).await.unwrap();
    let mut sessions =
        aether_proto::session_service_client::SessionServiceClient::new(channel.clone());
    let mut review = aether_proto::review_service_client::ReviewServiceClient::new(channel);
    let session = sessions
        .create_session(as_user(
            "alice",
            pb::CreateSessionRequest {
                policy: Some(pb::Policy {
                    bindings: vec![binding("user:alice", pb::Role::Reviewer)],
                    required_commit_approvals: 1,
                    required_export_approvals: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(session.owner, "anonymous");
    let approval = review
        .request_approval(as_user(
            "agent",
            request(&session.id, pb::ApprovalAction::Commit, &[]),
        ))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(approval.requester, "anonymous");
    let claimed = review
        .decide_approval(as_user(
            "alice",
            decide(&session.id, &approval.id, pb::Decision::Approve),
        ))
        .await;
    assert_eq!(code_of(claimed), Code::PermissionDenied);
}
