//! Idle sessions expire after their TTL: the state becomes EXPIRED, writes are refused with
//! FAILED_PRECONDITION, the audit trail stays readable; a session without TTL stays.

use crate::common;

use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::session_service_client::SessionServiceClient;
use aether_testkit::ServiceProcess;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_after_their_ttl() {
    let data = tempfile::tempdir().unwrap();
    let dev = ServiceProcess::start(&[
        "dev".into(),
        "--data".into(),
        data.path().display().to_string(),
        "--expiry-interval-secs".into(),
        "1".into(),
    ])
    .await
    .unwrap();
    let channel = connect(&dev.endpoint()).await.unwrap();
    let mut sessions = SessionServiceClient::new(channel.clone());
    let short = sessions
        .create_session(pb::CreateSessionRequest {
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert!(short.expires_at.is_some());
    let kept = create_session(&channel).await.unwrap();
    assert!(kept.expires_at.is_none());

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = sessions
            .get_session(pb::GetSessionRequest {
                session_id: short.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap()
            .state;
        if state == pb::SessionState::Expired as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "session did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = write_file(&channel, &short.id, "late.txt", b"late")
        .await
        .unwrap_err();
    let status = status.downcast::<tonic::Status>().unwrap();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let audit = sessions
        .list_audit_events(pb::ListAuditEventsRequest {
            session_id: short.id.clone(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(audit.last().unwrap().action, "session.expire");
    // The session without TTL is untouched.
    write_file(&channel, &kept.id, "still.txt", b"here")
        .await
        .unwrap();
}
