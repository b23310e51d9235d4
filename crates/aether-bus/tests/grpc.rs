//! The bus over a real tonic server and client: status codes, principals, PublishStream
//! acknowledgements, Lagged over the wire, and cleanup when a client goes away.

use crate::common;

use std::time::Duration;

use aether_bus::{BusConfig, Retention, MAX_PAYLOAD_BYTES};
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::{
    start_position, subscribe_response, Durability, GetStreamInfoRequest, OutgoingMessage,
    PublishRequest, PublishStreamRequest, StartPosition, SubscribeRequest, SubscribeResponse,
};
use common::*;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const S: &str = "grpc-session";

fn publish_request(
    session_id: &str,
    messages: Vec<OutgoingMessage>,
    durability: Durability,
) -> PublishRequest {
    PublishRequest {
        session_id: session_id.to_string(),
        messages,
        durability: durability as i32,
    }
}

fn subscribe_request(
    session_id: &str,
    position: Option<start_position::Position>,
    filter: &str,
) -> SubscribeRequest {
    SubscribeRequest {
        session_id: session_id.to_string(),
        start: position.map(|position| StartPosition {
            position: Some(position),
        }),
        subject_filter: filter.to_string(),
    }
}

async fn subscribe(
    client: &mut BusServiceClient<Channel>,
    position: Option<start_position::Position>,
    filter: &str,
) -> Streaming<SubscribeResponse> {
    client
        .subscribe(subscribe_request(S, position, filter))
        .await
        .unwrap()
        .into_inner()
}

async fn next_event(stream: &mut Streaming<SubscribeResponse>) -> subscribe_response::Event {
    within(stream.message())
        .await
        .unwrap()
        .expect("stream ended")
        .event
        .unwrap()
}

async fn next_offset(stream: &mut Streaming<SubscribeResponse>) -> u64 {
    match next_event(stream).await {
        subscribe_response::Event::Message(message) => message.offset,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_and_subscribe_carry_the_principal_and_time() {
    let (bus, _) = memory_bus(BusConfig::default());
    let mut alice = client(serve(&bus, Some("alice")).await).await;
    let mut anonymous = client(serve(&bus, None).await).await;

    let mut subscription = subscribe(&mut anonymous, None, "").await;
    let response = alice
        .publish(publish_request(
            S,
            vec![message("build.started", "go")],
            Durability::Unspecified,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.first_offset, response.last_offset), (1, 1));
    anonymous
        .publish(publish_request(
            S,
            vec![message("build.done", "ok")],
            Durability::Accepted,
        ))
        .await
        .unwrap();

    for (offset, publisher, subject) in [
        (1, "alice", "build.started"),
        (2, "anonymous", "build.done"),
    ] {
        match next_event(&mut subscription).await {
            subscribe_response::Event::Message(message) => {
                assert_eq!(message.offset, offset);
                assert_eq!(message.publisher, publisher);
                assert_eq!(message.subject, subject);
                assert!(message.publish_time.is_some());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_requests_get_precise_status_codes() {
    let (bus, _) = memory_bus(BusConfig {
        retention: Retention {
            max_messages: 100,
            max_age: Some(Duration::from_secs(3600)),
        },
        ..BusConfig::default()
    });
    let mut client = client(serve(&bus, None).await).await;
    let ok = || vec![message("a.b", "x")];
    let many_headers = OutgoingMessage {
        headers: (0..33).map(|i| (format!("h{i}"), String::new())).collect(),
        ..message("a", "x")
    };
    let long_session = "s".repeat(129);
    let cases: Vec<(&str, PublishRequest)> = vec![
        (
            "empty session",
            publish_request("", ok(), Durability::Accepted),
        ),
        (
            "bad session",
            publish_request("a/../b", ok(), Durability::Accepted),
        ),
        (
            "long session",
            publish_request(&long_session, ok(), Durability::Accepted),
        ),
        (
            "no messages",
            publish_request(S, vec![], Durability::Accepted),
        ),
        (
            "1001 messages",
            publish_request(S, batch("m", 1001), Durability::Accepted),
        ),
        (
            "bad subject",
            publish_request(S, vec![message("a..b", "x")], Durability::Accepted),
        ),
        (
            "wildcard subject",
            publish_request(S, vec![message("a.>", "x")], Durability::Accepted),
        ),
        (
            "payload too large",
            publish_request(
                S,
                vec![message("a", vec![1; MAX_PAYLOAD_BYTES + 1])],
                Durability::Accepted,
            ),
        ),
        (
            "33 headers",
            publish_request(S, vec![many_headers], Durability::Accepted),
        ),
        (
            "unknown durability",
            PublishRequest {
                durability: 9,
                ..publish_request(S, ok(), Durability::Accepted)
            },
        ),
    ];
    for (case, request) in cases {
        let status = client.publish(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(!status.message().is_empty(), "{case}");
    }

    for (case, session, filter) in [("bad filter", S, "a.>.b"), ("bad session", "", "")] {
        let status = client
            .subscribe(subscribe_request(session, None, filter))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    }
    let status = client
        .get_stream_info(GetStreamInfoRequest {
            session_id: "no/such".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Nothing above published anything; an unknown session is an empty stream, not NOT_FOUND.
    let info = client
        .get_stream_info(GetStreamInfoRequest {
            session_id: S.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.first_offset, info.last_offset), (1, 0));
    let retention = info.retention.unwrap();
    assert_eq!(retention.max_messages, 100);
    assert_eq!(retention.max_age.unwrap().seconds, 3600);

    client
        .publish(publish_request(S, batch("m", 3), Durability::Persisted))
        .await
        .unwrap();
    for offset in [0, 5] {
        let status = client
            .subscribe(subscribe_request(
                S,
                Some(start_position::Position::Offset(offset)),
                "",
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{offset}");
        assert!(
            status
                .message()
                .contains("from 1 (first retained) to 4 (last + 1)"),
            "{status:?}"
        );
    }
    let mut at_end = subscribe(&mut client, Some(start_position::Position::Offset(4)), "").await;
    let mut from_two = subscribe(&mut client, Some(start_position::Position::Offset(2)), "").await;
    let mut earliest = subscribe(
        &mut client,
        Some(start_position::Position::Earliest(true)),
        "",
    )
    .await;
    let mut latest = subscribe(
        &mut client,
        Some(start_position::Position::Latest(true)),
        "",
    )
    .await;
    client
        .publish(publish_request(S, batch("n", 1), Durability::Accepted))
        .await
        .unwrap();
    assert_eq!(next_offset(&mut at_end).await, 4);
    assert_eq!(next_offset(&mut from_two).await, 2);
    assert_eq!(next_offset(&mut earliest).await, 1);
    assert_eq!(next_offset(&mut latest).await, 4);
}

#[tokio::test]
async fn publish_stream_acknowledges_batches_in_order() {
    let (bus, _) = memory_bus(BusConfig::default());
    let mut client = client(serve(&bus, Some("streamer")).await).await;

    let batches: Vec<PublishStreamRequest> = (0..200)
        .map(|i| PublishStreamRequest {
            session_id: S.into(),
            messages: batch(&format!("b{i}"), 1 + i % 7),
            durability: if i % 3 == 0 {
                Durability::Persisted
            } else {
                Durability::Accepted
            } as i32,
            batch_id: 1000 + i as u64,
        })
        .collect();
    let sizes: Vec<u64> = batches.iter().map(|b| b.messages.len() as u64).collect();
    let mut acks = client
        .publish_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut next = 1;
    for (i, size) in sizes.iter().enumerate() {
        let ack = within(acks.message())
            .await
            .unwrap()
            .expect("an ack per batch");
        assert_eq!(ack.batch_id, 1000 + i as u64);
        assert_eq!((ack.first_offset, ack.last_offset), (next, next + size - 1));
        next += size;
    }
    assert!(
        within(acks.message()).await.unwrap().is_none(),
        "ends after the last ack"
    );

    // Another session in the same stream: earlier batches are acknowledged, then the error.
    let mixed = vec![
        PublishStreamRequest {
            session_id: "first".into(),
            messages: batch("x", 2),
            durability: Durability::Persisted as i32,
            batch_id: 1,
        },
        PublishStreamRequest {
            session_id: "first".into(),
            messages: batch("y", 1),
            durability: Durability::Accepted as i32,
            batch_id: 2,
        },
        PublishStreamRequest {
            session_id: "second".into(),
            messages: batch("z", 1),
            durability: Durability::Accepted as i32,
            batch_id: 3,
        },
    ];
    let mut acks = client
        .publish_stream(tokio_stream::iter(mixed))
        .await
        .unwrap()
        .into_inner();
    let first = within(acks.message()).await.unwrap().unwrap();
    assert_eq!(
        (first.batch_id, first.first_offset, first.last_offset),
        (1, 1, 2)
    );
    let second = within(acks.message()).await.unwrap().unwrap();
    assert_eq!((second.batch_id, second.first_offset), (2, 3));
    let status = within(acks.message()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("same session"), "{status:?}");
    assert_eq!(bus.stream_info("second").await.unwrap().last_offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_told_it_lagged() {
    let (bus, _) = memory_bus(BusConfig {
        subscriber_buffer: 16,
        ..BusConfig::default()
    });
    let addr = serve(&bus, None).await;
    // Its own connection: a stalled stream must not stall the publisher's connection window.
    let mut slow_client = client(addr).await;
    let mut client = client(addr).await;
    let mut slow = subscribe(
        &mut slow_client,
        Some(start_position::Position::Earliest(true)),
        "",
    )
    .await;

    // Far more than HTTP/2 and socket buffers hold; every publish completes although the
    // subscriber reads nothing.
    const COUNT: u64 = 400;
    let payload = vec![7u8; 64 * 1024];
    for i in 0..COUNT {
        let response = within(client.publish(publish_request(
            S,
            vec![message("bulk.data", payload.clone())],
            Durability::Accepted,
        )))
        .await
        .unwrap()
        .into_inner();
        assert_eq!(response.first_offset, i + 1);
    }

    let mut expected = 1;
    let resume_offset = loop {
        match next_event(&mut slow).await {
            subscribe_response::Event::Message(message) => {
                assert_eq!(message.offset, expected, "no gaps before the lag");
                expected += 1;
            }
            subscribe_response::Event::Lagged(lagged) => break lagged.resume_offset,
        }
    };
    assert_eq!(
        resume_offset, expected,
        "resume at the first offset not received"
    );
    assert!(resume_offset < COUNT, "the subscriber lagged");
    assert!(
        within(slow.message()).await.unwrap().is_none(),
        "Lagged ends the stream"
    );

    let mut resumed = subscribe(
        &mut client,
        Some(start_position::Position::Offset(resume_offset)),
        "",
    )
    .await;
    for offset in resume_offset..=COUNT {
        assert_eq!(next_offset(&mut resumed).await, offset);
    }
}

#[tokio::test]
async fn a_subscription_stops_when_its_client_goes_away() {
    let (bus, _) = memory_bus(BusConfig {
        stream_idle_timeout: Duration::from_millis(10),
        ..BusConfig::default()
    });
    let mut evictions = bus.evictions();
    let mut client = client(serve(&bus, None).await).await;
    let mut subscription = subscribe(&mut client, None, "a.>").await;
    client
        .publish(publish_request(
            S,
            vec![message("a.b", "x")],
            Durability::Persisted,
        ))
        .await
        .unwrap();
    assert_eq!(next_offset(&mut subscription).await, 1);
    // A stream is dropped from memory only once no subscriber holds it: the eviction proves
    // the server let go of the subscription when the client did.
    assert_eq!(*evictions.borrow_and_update(), 0);
    drop(subscription);
    within(evictions.wait_for(|n| *n >= 1)).await.unwrap();
}
