//! The bus as `aetherd` configures it: every `--bus-*` flag reaches the bus (here the default
//! retention, which GetStreamInfo reports), and a subscription to a session that does not
//! exist is NOT_FOUND at once rather than a stream that waits for the client's deadline.

use crate::common;

use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::bus_service_client::BusServiceClient;
use common::{create_session, start_dev};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_flags_take_effect_and_unknown_sessions_are_not_found() {
    let dev = start_dev(&[
        "--bus-retention-messages",
        "123",
        "--bus-retention-secs",
        "3600",
    ])
    .await;
    let channel = dev.channel.clone();
    let mut bus = BusServiceClient::new(channel.clone());

    let id = create_session(&channel).await.unwrap().id;
    let info = bus
        .get_stream_info(pb::GetStreamInfoRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let retention = info.retention.unwrap();
    assert_eq!(retention.max_messages, 123, "{retention:?}");
    assert_eq!(retention.max_age.unwrap().seconds, 3600, "{retention:?}");
    assert!(!info.own_retention);

    // No such session: refused when the call is made, well before any deadline.
    let started = Instant::now();
    let mut request = tonic::Request::new(pb::SubscribeRequest {
        session_id: "nosuchsession0000000".into(),
        start: None,
        subject_filter: String::new(),
    });
    request.set_timeout(Duration::from_secs(30));
    let status = match bus.subscribe(request).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            stream
                .message()
                .await
                .expect_err("a stream of a missing session")
        }
    };
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("nosuchsession0000000"),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = bus
        .publish(pb::PublishRequest {
            session_id: "nosuchsession0000000".into(),
            ..Default::default()
        })
        .await
        .expect_err("publishing to a missing session");
    assert!(
        matches!(status.code(), Code::NotFound | Code::InvalidArgument),
        "{status:?}"
    );
}
