//! Several bus nodes share the streams: one holder per stream through etcd leases, any node
//! forwards to it, and after kill -9 of the holder another node takes over; subscribers resume
//! from their last offset without loss or duplicates.

use crate::common;

use std::time::{Duration, Instant};

use aether_coord::Coordination;
use aether_proto as pb;
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_testkit::{Cluster, ClusterSpec};
use bytes::Bytes;
use common::{connect, create_session, write_file};
use tonic::transport::Channel;
use tonic::Code;

async fn publish(
    channel: &Channel,
    session: &str,
    from: u64,
    count: u64,
) -> Result<(u64, u64), tonic::Status> {
    let messages = (from..from + count)
        .map(|i| pb::OutgoingMessage {
            subject: "work.progress".into(),
            payload: Bytes::from(format!("message {i}")),
            headers: Default::default(),
        })
        .collect();
    let response = BusServiceClient::new(channel.clone())
        .publish(pb::PublishRequest {
            session_id: session.to_string(),
            messages,
            durability: pb::Durability::Persisted as i32,
        })
        .await?
        .into_inner();
    Ok((response.first_offset, response.last_offset))
}

/// Reads `count` messages from `offset` and returns their (offset, payload).
async fn read(channel: &Channel, session: &str, offset: u64, count: usize) -> Vec<(u64, String)> {
    let mut stream = BusServiceClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest {
            session_id: session.to_string(),
            start: Some(pb::StartPosition {
                position: Some(pb::start_position::Position::Offset(offset)),
            }),
            subject_filter: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    let collect = async {
        while out.len() < count {
            let response = stream.message().await.unwrap().expect("stream ended early");
            match response.event {
                Some(pb::subscribe_response::Event::Message(m)) => {
                    out.push((m.offset, String::from_utf8(m.payload.to_vec()).unwrap()))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .expect("messages within 30 s");
    out
}

fn expected(from: u64, to: u64) -> Vec<(u64, String)> {
    (from..=to).map(|i| (i, format!("message {i}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_holder_failover_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(ClusterSpec {
        coordinators: 0,
        buses: 2,
        lease_ttl_secs: Some(2),
        ..Default::default()
    })
    .await
    .expect("start cluster");
    let first = connect(&cluster.buses[0].endpoint()).await.unwrap();
    let second = connect(&cluster.buses[1].endpoint()).await.unwrap();
    let session = "bus-failover";
    // The bus serves the streams of sessions that exist: record one as the coordinator would.
    aether_coord::EtcdCoordination::connect(&cluster.etcd.endpoints())
        .await
        .unwrap()
        .txn(
            vec![],
            vec![aether_coord::Op::Put {
                key: "/aether/v1/sessions/bus-failover".into(),
                value: b"{}".to_vec(),
                lease: None,
            }],
        )
        .await
        .unwrap();

    // The first node takes the stream; the second forwards publishes and subscriptions to it.
    assert_eq!(publish(&first, session, 1, 30).await.unwrap(), (1, 30));
    assert_eq!(publish(&second, session, 31, 20).await.unwrap(), (31, 50));
    assert_eq!(read(&second, session, 1, 50).await, expected(1, 50));

    cluster.buses[0].kill().unwrap();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    let offsets = loop {
        match publish(&second, session, 51, 25).await {
            Ok(offsets) => break offsets,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "no bus took the stream over");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!("bus stream takeover after kill -9: {:?}", killed.elapsed());
    assert_eq!(
        offsets,
        (51, 75),
        "numbering continues after the last acknowledged message"
    );
    // A subscriber resuming from its last offset gets the rest exactly once.
    assert_eq!(read(&second, session, 51, 25).await, expected(51, 75));
    assert_eq!(read(&second, session, 1, 75).await, expected(1, 75));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_archives_its_stream_on_every_bus_node() {
    let cluster = Cluster::start(ClusterSpec {
        buses: 2,
        ..Default::default()
    })
    .await
    .expect("start cluster");
    let coordinator = connect(&cluster.coordinators[0].endpoint()).await.unwrap();
    let first = connect(&cluster.buses[0].endpoint()).await.unwrap();
    let second = connect(&cluster.buses[1].endpoint()).await.unwrap();
    let session = create_session(&coordinator).await.unwrap().id;
    write_file(&coordinator, &session, "notes.md", b"draft")
        .await
        .unwrap();

    // Retention is the stream's own, set through either node, seen from both.
    let set = BusServiceClient::new(second.clone())
        .set_retention(pb::SetRetentionRequest {
            session_id: session.clone(),
            retention: Some(pb::Retention {
                max_messages: 1000,
                max_age: Some(prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                }),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.retention.unwrap().max_messages, 1000);
    let info = BusServiceClient::new(first.clone())
        .get_stream_info(pb::GetStreamInfoRequest {
            session_id: session.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.own_retention && info.archive_time.is_none(),
        "{info:?}"
    );
    assert_eq!(info.retention.unwrap().max_messages, 1000);

    let mut events = common::subscribe(&second, &session).await.unwrap();
    SessionServiceClient::new(coordinator.clone())
        .close_session(pb::CloseSessionRequest {
            session_id: session.clone(),
            archive: false,
        })
        .await
        .unwrap();
    // The subscription delivers every event up to session.closed, then ends: the coordinator
    // archived the stream after its last event.
    let mut subjects = Vec::new();
    let drain = async {
        while let Some(response) = events.message().await.unwrap() {
            match response.event {
                Some(pb::subscribe_response::Event::Message(m)) => subjects.push(m.subject),
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("the stream ends within 30 s of closing the session");
    assert_eq!(
        subjects.first().map(String::as_str),
        Some("session.files.changed")
    );
    assert_eq!(subjects.last().map(String::as_str), Some("session.closed"));

    let info = BusServiceClient::new(first.clone())
        .get_stream_info(pb::GetStreamInfoRequest {
            session_id: session.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.archive_time.is_some(), "{info:?}");
    assert_eq!(info.last_offset, subjects.len() as u64);
    let late = publish(&first, &session, 1, 1).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("archived"), "{late:?}");
}
