//! A coordinator watches etcd's database size (issue 15): past 80% of the quota it warns in
//! its log, naming what to do, before etcd refuses every write.

use std::time::{Duration, Instant};

use aether_testkit::{Cluster, ClusterSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_warns_as_etcd_nears_its_quota() {
    let cluster = Cluster::start(ClusterSpec {
        coordinators: 0,
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    // A quota smaller than any etcd database: the first reading is past 80% of it.
    let coordinator =
        crate::common::start_coordinator(&cluster, &["--etcd-quota-bytes", "4096"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = coordinator.stderr_tail(200);
        if log.contains("etcd database at") {
            assert!(log.contains("4096"), "{log}");
            assert!(log.contains("defrag"), "{log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no warning about etcd's quota:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keys in etcd that name `session`.
async fn keys_of(coord: &aether_coord::EtcdCoordination, session: &str) -> Vec<String> {
    use aether_coord::Coordination;
    let all = coord.range("/aether/v1/", None, 100_000).await.unwrap();
    all.into_iter()
        .map(|kv| kv.key)
        .filter(|k| k.contains(session))
        .collect()
}

/// What lives in etcd per session does not grow with its history: the audit trail is in the
/// content store but for a tail of at most 32 events (issue 15), read back in order and in
/// pages, also after the session closed (which moves the tail too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_etcd_keys_do_not_grow_with_its_history() {
    use aether_proto as pb;
    use aether_proto::session_service_client::SessionServiceClient;
    use aether_proto::workspace_service_client::WorkspaceServiceClient;

    let cluster = Cluster::start(ClusterSpec {
        coordinators: 1,
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let channel = crate::common::connect(&cluster.coordinators[0].endpoint())
        .await
        .unwrap();
    let coord = aether_coord::EtcdCoordination::connect(&cluster.etcd.endpoints())
        .await
        .unwrap();
    let session = crate::common::create_session(&channel).await.unwrap().id;
    let workspace = WorkspaceServiceClient::new(channel.clone());
    let write = |i: usize| {
        let request = pb::ApplyChangesRequest {
            session_id: session.clone(),
            changes: vec![pb::Change {
                op: Some(pb::change::Op::Write(pb::WriteOp {
                    path: format!("f{i}.txt"),
                    content: format!("{i}").into_bytes().into(),
                    ..Default::default()
                })),
                precondition: None,
            }],
            expected_head_version: 0,
        };
        let mut workspace = workspace.clone();
        async move { workspace.apply_changes(request).await.unwrap() }
    };
    // Audit events wait as etcd keys until 32 of them move to the store together: the other
    // keys never change, the audit keys never pass 32.
    let split = |keys: Vec<String>| -> (Vec<String>, usize) {
        let audit = keys.iter().filter(|k| k.contains("/audit/")).count();
        (
            keys.into_iter()
                .filter(|k| !k.contains("/audit/"))
                .collect(),
            audit,
        )
    };
    for i in 0..10 {
        write(i).await;
    }
    let (early, _) = split(keys_of(&coord, &session).await);
    let mut most_audit_keys = 0;
    for i in 10..80 {
        write(i).await;
        let (late, audit) = split(keys_of(&coord, &session).await);
        assert_eq!(
            early, late,
            "etcd keys of the session changed with its history"
        );
        most_audit_keys = most_audit_keys.max(audit);
    }
    assert!(
        (1..=32).contains(&most_audit_keys),
        "{most_audit_keys} audit keys in etcd at once"
    );

    let mut sessions = SessionServiceClient::new(channel.clone());
    sessions
        .close_session(pb::CloseSessionRequest {
            session_id: session.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut sequences = Vec::new();
    let mut token = String::new();
    loop {
        let page = sessions
            .list_audit_events(pb::ListAuditEventsRequest {
                session_id: session.clone(),
                page: Some(pb::PageRequest {
                    page_size: 25,
                    page_token: token.clone(),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        sequences.extend(page.events.iter().map(|e| e.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // create + 80 writes + close, in pages of 25, in order.
    assert_eq!(sequences, (1..=82).collect::<Vec<u64>>());
    let (_, audit) = split(keys_of(&coord, &session).await);
    assert_eq!(audit, 0, "a closed session keeps audit keys in etcd");
}
