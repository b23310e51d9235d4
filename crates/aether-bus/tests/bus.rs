//! The bus's promises, in-process: total gap-free order, filters, start positions, lag,
//! persistence across a crash, group commit, retention, store failures, eviction and fencing.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aether_bus::{Bus, BusConfig, BusError, Delivery, Retention, Start};
use aether_proto::{BusMessage, Durability};
use common::*;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use prost::Message;
use tonic::Code;

const S: &str = "session-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_get_one_gap_free_order() {
    // A small tail so replay reads segments too.
    let (bus, objects) = memory_bus(BusConfig {
        max_buffered_messages: 64,
        max_segment_messages: 50,
        ..BusConfig::default()
    });
    let mut live = bus.subscribe(S, Start::Earliest, "").await.unwrap();

    const PUBLISHERS: usize = 8;
    const BATCHES: usize = 40;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut ranges = Vec::new();
            let mut seq = 0;
            for b in 0..BATCHES {
                let size = 1 + (p + b) % 5;
                let messages = (0..size)
                    .map(|_| {
                        seq += 1;
                        message("test.msg", format!("{p}:{seq}"))
                    })
                    .collect();
                let durability = if b % 2 == 0 {
                    Durability::Accepted
                } else {
                    Durability::Persisted
                };
                let (first, last) = bus
                    .publish(S, messages, &format!("p{p}"), durability)
                    .await
                    .unwrap();
                assert_eq!(last - first + 1, size as u64);
                ranges.push((first, last, p));
            }
            ranges
        }));
    }
    let mut ranges = Vec::new();
    for task in tasks {
        ranges.extend(within(task).await.unwrap());
    }
    ranges.sort();
    let mut expected_first = 1;
    for (first, last, _) in &ranges {
        assert_eq!(*first, expected_first, "offsets are gap-free and disjoint");
        expected_first = last + 1;
    }
    let total = expected_first - 1;
    let owner = |offset: u64| {
        ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&offset))
            .unwrap()
            .2
    };

    let check = |messages: &[Arc<BusMessage>]| {
        let mut last_seq: HashMap<usize, u64> = HashMap::new();
        for (i, message) in messages.iter().enumerate() {
            assert_eq!(message.offset, i as u64 + 1);
            let text = payload(message);
            let (p, seq) = text.split_once(':').unwrap();
            let (p, seq): (usize, u64) = (p.parse().unwrap(), seq.parse().unwrap());
            assert_eq!(p, owner(message.offset), "message in its publisher's range");
            assert_eq!(message.publisher, format!("p{p}"));
            let previous = last_seq.insert(p, seq).unwrap_or(0);
            assert_eq!(
                seq,
                previous + 1,
                "each publisher's messages keep their order"
            );
        }
    };
    let live_messages = next_messages(&mut live, total as usize).await;
    check(&live_messages);

    // The same order replayed from segments and the tail, after everything is persisted.
    bus.publish(S, batch("end", 1), "x", Durability::Persisted)
        .await
        .unwrap();
    assert!(segments(&*objects, S).await.len() > 1);
    let mut replay = bus.subscribe(S, Start::Earliest, "").await.unwrap();
    let replayed = next_messages(&mut replay, total as usize).await;
    check(&replayed);
    assert_eq!(replayed, live_messages);
}

#[tokio::test]
async fn subject_filters_with_wildcards() {
    let (bus, _) = memory_bus(BusConfig::default());
    let subjects = ["a", "a.b", "a.c", "a.b.c", "x.y", "a.y", "b.y.z"];
    let cases: [(&str, &[&str], &str); 7] = [
        ("", &subjects, "z"),
        (">", &subjects, "z"),
        ("a.*", &["a.b", "a.c", "a.y"], "a.end"),
        ("a.>", &["a.b", "a.c", "a.b.c", "a.y"], "a.end"),
        ("*.y", &["x.y", "a.y"], "end.y"),
        ("a", &["a"], "a"),
        ("*.*.*", &["a.b.c", "b.y.z"], "e.n.d"),
    ];
    for (i, (filter, expected, closing)) in cases.into_iter().enumerate() {
        // A session per filter, so each closing message below is the only extra one.
        let session = format!("filters-{i}");
        let messages = subjects.iter().map(|s| message(s, *s)).collect();
        bus.publish(&session, messages, "p", Durability::Accepted)
            .await
            .unwrap();
        let mut subscription = bus
            .subscribe(&session, Start::Earliest, filter)
            .await
            .unwrap();
        let got: Vec<String> = next_messages(&mut subscription, expected.len())
            .await
            .iter()
            .map(|m| m.subject.clone())
            .collect();
        assert_eq!(got, expected, "filter {filter:?}");
        // Nothing else matched before it: the next delivery is a new matching message.
        let (offset, _) = bus
            .publish(
                &session,
                vec![message(closing, "closing")],
                "p",
                Durability::Accepted,
            )
            .await
            .unwrap();
        let next = next_message(&mut subscription).await;
        assert_eq!((next.offset, next.subject.as_str()), (offset, closing));
    }
    for bad in ["a.>.b", "a*", "a..b", "a b"] {
        let error = bus.subscribe(S, Start::Earliest, bad).await.err().unwrap();
        assert!(
            matches!(error, BusError::InvalidFilter(_)),
            "{bad}: {error}"
        );
        assert_eq!(tonic::Status::from(error).code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn subscribe_from_earliest_latest_and_an_offset() {
    let (bus, _) = memory_bus(BusConfig::default());
    assert_eq!(
        offsets(bus.stream_info("never-used").await.unwrap()),
        (1, 0)
    );
    bus.publish(S, batch("m", 10), "p", Durability::Persisted)
        .await
        .unwrap();

    let mut earliest = bus.subscribe(S, Start::Earliest, "").await.unwrap();
    let got = next_messages(&mut earliest, 10).await;
    assert_eq!(
        got.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );

    let mut from_five = bus.subscribe(S, Start::Offset(5), "").await.unwrap();
    assert_eq!(next_message(&mut from_five).await.offset, 5);

    let mut latest = bus.subscribe(S, Start::Latest, "").await.unwrap();
    let mut at_end = bus.subscribe(S, Start::Offset(11), "").await.unwrap();
    bus.publish(S, batch("n", 1), "p", Durability::Accepted)
        .await
        .unwrap();
    assert_eq!(next_message(&mut latest).await.offset, 11);
    assert_eq!(next_message(&mut at_end).await.offset, 11);
    assert_eq!(next_message(&mut earliest).await.offset, 11);

    for (session, offset) in [(S, 0), (S, 13), ("never-used", 2)] {
        let error = bus
            .subscribe(session, Start::Offset(offset), "")
            .await
            .err()
            .unwrap();
        assert!(matches!(error, BusError::OutOfRange { .. }), "{error}");
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(
            status.message().contains("start at an offset from"),
            "{status}"
        );
    }
    // An unknown session's stream is empty, not missing.
    let mut fresh = bus
        .subscribe("never-used", Start::Offset(1), "")
        .await
        .unwrap();
    bus.publish("never-used", batch("f", 1), "p", Durability::Accepted)
        .await
        .unwrap();
    assert_eq!(next_message(&mut fresh).await.offset, 1);
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_lagged_while_publishers_go_on() {
    let (bus, _) = memory_bus(BusConfig {
        subscriber_buffer: 8,
        ..BusConfig::default()
    });
    let mut slow = bus.subscribe(S, Start::Earliest, "").await.unwrap();
    bus.publish(S, batch("a", 3), "p", Durability::Accepted)
        .await
        .unwrap();
    assert_eq!(next_messages(&mut slow, 3).await.last().unwrap().offset, 3);

    // The subscriber reads nothing while 100 more messages go out; no publish waits for it.
    for i in 0..100 {
        within(bus.publish(S, batch(&format!("b{i}"), 1), "p", Durability::Accepted))
            .await
            .unwrap();
    }
    match within(slow.next()).await {
        Some(Ok(Delivery::Lagged { resume_offset })) => assert_eq!(resume_offset, 4),
        other => panic!("expected Lagged, got {other:?}"),
    }
    assert!(slow.next().await.is_none(), "Lagged ends the subscription");

    let mut resumed = bus.subscribe(S, Start::Offset(4), "").await.unwrap();
    let rest = next_messages(&mut resumed, 100).await;
    assert_eq!(
        rest.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (4..=103).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_subscriber_lagging_during_replay_resumes_where_it_stopped() {
    let (bus, _) = memory_bus(BusConfig {
        subscriber_buffer: 4,
        ..BusConfig::default()
    });
    bus.publish(S, batch("old", 20), "p", Durability::Persisted)
        .await
        .unwrap();
    let mut subscription = bus.subscribe(S, Start::Earliest, "").await.unwrap();
    // While it has not read its history, the live feed overflows.
    bus.publish(S, batch("new", 10), "p", Durability::Accepted)
        .await
        .unwrap();
    let history = next_messages(&mut subscription, 20).await;
    assert_eq!(history.last().unwrap().offset, 20);
    match within(subscription.next()).await {
        Some(Ok(Delivery::Lagged { resume_offset })) => assert_eq!(resume_offset, 21),
        other => panic!("expected Lagged, got {other:?}"),
    }
}

/// Publishes on one runtime, kills it without shutdown (nothing is flushed on the way out),
/// then reopens the same directory in a new bus on another runtime.
#[test]
fn persisted_messages_survive_a_crash_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = || -> Arc<dyn ObjectStore> {
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap())
    };

    let crashed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let last = crashed.block_on(async {
        let bus = Bus::new(store(), BusConfig::default());
        for i in 0..5 {
            let (_, last) = bus
                .publish(S, batch(&format!("p{i}"), 7), "p", Durability::Persisted)
                .await
                .unwrap();
            assert_eq!(last, 7 * (i + 1));
        }
        bus.publish(S, batch("accepted", 3), "p", Durability::Accepted)
            .await
            .unwrap();
        // Acknowledged as persisted: it and everything before it is in the store.
        let (_, last) = bus
            .publish(S, batch("final", 2), "p", Durability::Unspecified)
            .await
            .unwrap();
        std::mem::forget(bus); // no graceful anything
        last
    });
    crashed.shutdown_background();
    assert_eq!(last, 5 * 7 + 3 + 2);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let objects = store();
        // Segments are named by their zero-padded first offset and hold a magic, the BLAKE3
        // hash of the body, then length-delimited records (field for field a BusMessage today).
        let firsts = segments(&*objects, S).await;
        assert_eq!(firsts.first(), Some(&1));
        let path = Path::from(format!("streams/{S}/{:020}.seg", firsts[0]));
        let data = objects.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&data[..8], b"\0aebus02");
        let mut body = data.slice(40..);
        assert_eq!(blake3::hash(&body).as_bytes(), &data[8..40]);
        let decoded = BusMessage::decode_length_delimited(&mut body).unwrap();
        assert_eq!((decoded.offset, payload(&decoded).as_str()), (1, "p0-0"));

        let bus = Bus::new(objects, BusConfig::default());
        assert_eq!(offsets(bus.stream_info(S).await.unwrap()), (1, last));
        let mut replay = bus.subscribe(S, Start::Earliest, "").await.unwrap();
        let messages = next_messages(&mut replay, last as usize).await;
        let mut expected: Vec<String> = Vec::new();
        for i in 0..5 {
            expected.extend((0..7).map(|j| format!("p{i}-{j}")));
        }
        expected.extend((0..3).map(|j| format!("accepted-{j}")));
        expected.extend((0..2).map(|j| format!("final-{j}")));
        assert_eq!(
            messages.iter().map(|m| payload(m)).collect::<Vec<_>>(),
            expected
        );
        assert!(messages.iter().zip(1..).all(|(m, o)| m.offset == o));

        // A subscriber resuming from its last offset gets the rest exactly once, then new ones.
        let mut resumed = bus.subscribe(S, Start::Offset(30), "").await.unwrap();
        let (first, _) = bus
            .publish(S, batch("after", 1), "p", Durability::Persisted)
            .await
            .unwrap();
        assert_eq!(first, last + 1, "numbering continues after the crash");
        let rest = next_messages(&mut resumed, (last + 2 - 30) as usize).await;
        assert_eq!(
            rest.iter().map(|m| m.offset).collect::<Vec<_>>(),
            (30..=last + 1).collect::<Vec<_>>()
        );
        assert_eq!(payload(rest.last().unwrap()), "after-0");
        bus.shutdown().await;
    });
}

#[tokio::test]
async fn group_commit_writes_full_segments_at_once_and_shutdown_flushes() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let config = BusConfig {
        flush_interval: Duration::from_secs(3600),
        max_segment_messages: 10,
        ..BusConfig::default()
    };
    let bus = Bus::new(inner.clone(), config.clone());
    // The first write goes out at once; the next must wait for the window, unless full.
    bus.publish(S, batch("one", 1), "p", Durability::Persisted)
        .await
        .unwrap();
    let (_, last) = within(bus.publish(S, batch("full", 10), "p", Durability::Persisted))
        .await
        .unwrap();
    assert_eq!(last, 11);
    assert_eq!(segments(&*inner, S).await, vec![1, 2]);

    // Accepted messages inside the window are written by shutdown.
    bus.publish(S, batch("late", 3), "p", Durability::Accepted)
        .await
        .unwrap();
    assert_eq!(segments(&*inner, S).await, vec![1, 2]);
    within(bus.shutdown()).await;
    assert_eq!(segments(&*inner, S).await, vec![1, 2, 12]);
    let error = bus
        .publish(S, batch("x", 1), "p", Durability::Accepted)
        .await
        .unwrap_err();
    assert_eq!(tonic::Status::from(error).code(), Code::Unavailable);

    let reopened = Bus::new(inner.clone(), config);
    assert_eq!(reopened.stream_info(S).await.unwrap().last_offset, 14);
}

#[tokio::test]
async fn accepted_messages_wait_for_the_long_window_unless_someone_awaits_persistence() {
    let (bus, objects) = memory_bus(BusConfig {
        flush_interval: Duration::from_millis(1),
        accepted_flush_interval: Duration::from_secs(3600),
        ..BusConfig::default()
    });
    // The first write goes out at once.
    bus.publish(S, batch("a", 1), "p", Durability::Accepted)
        .await
        .unwrap();
    within(async {
        while segments(&*objects, S).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Accepted messages then wait for the long window...
    bus.publish(S, batch("b", 2), "p", Durability::Accepted)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(segments(&*objects, S).await, vec![1]);
    // ...until a publisher waits for persistence: then they go out with its message.
    within(bus.publish(S, batch("c", 1), "p", Durability::Persisted))
        .await
        .unwrap();
    assert_eq!(segments(&*objects, S).await, vec![1, 2]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_persisted_publishes_share_segments() {
    let (bus, objects) = memory_bus(BusConfig {
        flush_interval: Duration::from_millis(20),
        ..BusConfig::default()
    });
    let publishes: Vec<_> = (0..100)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.publish(S, batch(&i.to_string(), 1), "p", Durability::Persisted)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for publish in publishes {
        within(publish).await.unwrap();
    }
    let written = segments(&*objects, S).await.len();
    assert!(written < 20, "100 publishes took {written} segments");
}

#[tokio::test]
async fn retention_by_count_deletes_whole_old_segments() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let config = BusConfig {
        max_segment_messages: 5,
        retention: Retention {
            max_messages: 10,
            max_age: None,
        },
        ..BusConfig::default()
    };
    let bus = Bus::new(objects.clone(), config.clone());
    // One persisted publish at a time: one segment each, starting at 1, 6, ..., 31.
    for i in 0..7 {
        bus.publish(S, batch(&i.to_string(), 5), "p", Durability::Persisted)
            .await
            .unwrap();
    }
    // The flusher deleted what the sixth segment expired (segments ending before 21) before it
    // wrote the seventh; the seventh may still be deleting segment 21.
    let left = segments(&*objects, S).await;
    assert!(left == [21, 26, 31] || left == [26, 31], "{left:?}");
    assert_eq!(offsets(bus.stream_info(S).await.unwrap()), (26, 35));
    let mut earliest = bus.subscribe(S, Start::Earliest, "").await.unwrap();
    assert_eq!(next_message(&mut earliest).await.offset, 26);
    let error = bus.subscribe(S, Start::Offset(25), "").await.err().unwrap();
    assert_eq!(tonic::Status::from(error).code(), Code::OutOfRange);
    drop(bus);

    // A restarted bus computes the same range and finishes the deletion.
    let reopened = Bus::new(objects.clone(), config);
    assert_eq!(reopened.stream_info(S).await.unwrap().first_offset, 26);
    let (first, _) = reopened
        .publish(S, batch("next", 1), "p", Durability::Persisted)
        .await
        .unwrap();
    assert_eq!(first, 36);
    assert_eq!(segments(&*objects, S).await, vec![26, 31, 36]);
}

#[tokio::test]
async fn retention_by_age_expires_segments_but_keeps_the_offset_count() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let config = BusConfig {
        retention: Retention {
            max_messages: 0,
            max_age: Some(Duration::from_millis(1)),
        },
        ..BusConfig::default()
    };
    let bus = Bus::new(objects.clone(), config.clone());
    for i in 0..3 {
        bus.publish(S, batch(&i.to_string(), 2), "p", Durability::Persisted)
            .await
            .unwrap();
    }
    bus.shutdown().await;
    // Let the messages grow older than max_age: the passing of time is what is tested here.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let reopened = Bus::new(objects.clone(), config);
    assert_eq!(offsets(reopened.stream_info(S).await.unwrap()), (7, 6));
    let (first, _) = reopened
        .publish(S, batch("new", 1), "p", Durability::Persisted)
        .await
        .unwrap();
    assert_eq!(first, 7, "expired messages still count");
}

#[tokio::test]
async fn a_failing_store_delays_persistence_but_loses_and_reuses_nothing() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let flaky = FlakyStore::new(memory.clone());
    let config = BusConfig {
        persist_timeout: Duration::from_millis(300),
        // At most 1000 messages may wait to be persisted.
        max_buffered_messages: 1000,
        max_segment_messages: 100,
        ..BusConfig::default()
    };
    let bus = Bus::new(flaky.clone(), config.clone());
    let mut subscriber = bus.subscribe(S, Start::Earliest, "").await.unwrap();

    flaky.failing.store(true, Ordering::SeqCst);
    let error = bus
        .publish(S, batch("a", 2), "p", Durability::Persisted)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            BusError::NotPersisted {
                first: 1,
                last: 2,
                ..
            }
        ),
        "{error}"
    );
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("injected failure"), "{status}");
    assert!(flaky.failed_puts.load(Ordering::SeqCst) >= 1);
    // Ordered and visible all the same.
    assert_eq!(next_messages(&mut subscriber, 2).await[1].offset, 2);
    assert_eq!(
        bus.publish(S, batch("b", 1), "p", Durability::Accepted)
            .await
            .unwrap(),
        (3, 3)
    );
    // The backlog is bounded: past it, publishers wait, then are refused with nothing
    // published.
    bus.publish(S, batch("c", 997), "p", Durability::Accepted)
        .await
        .unwrap();
    let error = bus
        .publish(S, batch("d", 1), "p", Durability::Accepted)
        .await
        .unwrap_err();
    assert!(matches!(error, BusError::Backlogged { .. }), "{error}");
    assert_eq!(tonic::Status::from(error).code(), Code::Unavailable);
    assert_eq!(bus.stream_info(S).await.unwrap().last_offset, 1000);

    flaky.failing.store(false, Ordering::SeqCst);
    let (first, last) = within(bus.publish(S, batch("e", 1), "p", Durability::Persisted))
        .await
        .unwrap();
    assert_eq!((first, last), (1001, 1001));
    drop(bus);

    let reopened = Bus::new(memory, config);
    let mut replay = reopened.subscribe(S, Start::Earliest, "").await.unwrap();
    let messages = next_messages(&mut replay, 1001).await;
    assert!(messages.iter().zip(1..).all(|(m, o)| m.offset == o));
    assert_eq!(payload(&messages[0]), "a-0");
    assert_eq!(payload(&messages[2]), "b-0");
    assert_eq!(payload(&messages[1000]), "e-0");
}

#[tokio::test]
async fn idle_streams_are_evicted_and_reload_where_they_left_off() {
    let (bus, _) = memory_bus(BusConfig {
        stream_idle_timeout: Duration::from_millis(1),
        ..BusConfig::default()
    });
    let mut evictions = bus.evictions();
    bus.publish(S, batch("a", 3), "p", Durability::Persisted)
        .await
        .unwrap();
    within(evictions.wait_for(|n| *n >= 1)).await.unwrap();
    assert_eq!(
        bus.publish(S, batch("b", 1), "p", Durability::Accepted)
            .await
            .unwrap(),
        (4, 4)
    );
    within(evictions.wait_for(|n| *n >= 2)).await.unwrap();
    let mut replay = bus.subscribe(S, Start::Earliest, "").await.unwrap();
    let messages = next_messages(&mut replay, 4).await;
    assert_eq!(payload(&messages[3]), "b-0");
}

#[tokio::test]
async fn a_second_writer_is_fenced_by_create_only_segments() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let first_bus = Bus::new(objects.clone(), BusConfig::default());
    let second_bus = Bus::new(objects.clone(), BusConfig::default());
    first_bus
        .publish(S, batch("a", 1), "p", Durability::Persisted)
        .await
        .unwrap();
    second_bus
        .publish(S, batch("b", 1), "p", Durability::Persisted)
        .await
        .unwrap();
    // The first bus still believes offset 2 is free; its segment 2 cannot be created.
    let error = within(first_bus.publish(S, batch("c", 1), "p", Durability::Persisted))
        .await
        .unwrap_err();
    assert!(
        matches!(error, BusError::NotPersisted { first: 2, .. }),
        "{error}"
    );
    // It reloads the stream and continues after what the other wrote.
    assert_eq!(
        first_bus
            .publish(S, batch("d", 1), "p", Durability::Persisted)
            .await
            .unwrap(),
        (3, 3)
    );
    let mut replay = first_bus.subscribe(S, Start::Earliest, "").await.unwrap();
    let payloads: Vec<String> = next_messages(&mut replay, 3)
        .await
        .iter()
        .map(|m| payload(m))
        .collect();
    assert_eq!(payloads, ["a-0", "b-0", "d-0"]);
}

#[tokio::test]
async fn invalid_publishes_change_nothing() {
    let (bus, _) = memory_bus(BusConfig::default());
    let long = "s".repeat(129);
    let cases: Vec<(&str, Vec<aether_proto::OutgoingMessage>)> = vec![
        ("", batch("a", 1)),
        ("a/b", batch("a", 1)),
        (&long, batch("a", 1)),
        (S, vec![]),
        (S, batch("a", 1001)),
        (S, vec![message("a.*", "x")]),
        (
            S,
            vec![message("a", vec![0; aether_bus::MAX_PAYLOAD_BYTES + 1])],
        ),
    ];
    for (session, messages) in cases {
        let error = bus
            .publish(session, messages, "p", Durability::Accepted)
            .await
            .unwrap_err();
        assert_eq!(
            tonic::Status::from(error).code(),
            Code::InvalidArgument,
            "{session}"
        );
    }
    assert_eq!(bus.stream_info(S).await.unwrap().last_offset, 0);
}

#[tokio::test]
async fn each_stream_keeps_its_own_retention_across_restarts() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let config = BusConfig {
        max_segment_messages: 5,
        ..BusConfig::default()
    };
    let bus = Bus::new(objects.clone(), config.clone());
    let own = Retention {
        max_messages: 10,
        max_age: None,
    };
    let info = bus.set_retention("short", own).await.unwrap();
    assert!(info.own_retention);
    assert_eq!(info.retention, own);
    for session in ["short", "long"] {
        for i in 0..6 {
            bus.publish(
                session,
                batch(&i.to_string(), 5),
                "p",
                Durability::Persisted,
            )
            .await
            .unwrap();
        }
    }
    assert_eq!(offsets(bus.stream_info("short").await.unwrap()), (21, 30));
    let long = bus.stream_info("long").await.unwrap();
    assert_eq!(offsets(long), (1, 30), "the other stream keeps everything");
    assert!(!long.own_retention);
    assert_eq!(long.retention, Retention::default());
    drop(bus);

    let reopened = Bus::new(objects.clone(), config);
    let info = reopened.stream_info("short").await.unwrap();
    assert_eq!((offsets(info), info.retention), ((21, 30), own));
    // Lowering it deletes at once what it no longer keeps.
    let info = reopened
        .set_retention(
            "short",
            Retention {
                max_messages: 5,
                max_age: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(offsets(info), (26, 30));
    assert_eq!(segments(&*objects, "short").await, vec![26]);
    assert_eq!(segments(&*objects, "long").await.len(), 6);

    let error = reopened
        .set_retention(
            "short",
            Retention {
                max_messages: 0,
                max_age: Some(Duration::from_millis(10)),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(tonic::Status::from(error).code(), Code::InvalidArgument);
}

#[tokio::test]
async fn an_archived_stream_takes_no_more_messages_and_subscriptions_end_after_the_last() {
    let objects: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let bus = Bus::new(objects.clone(), BusConfig::default());
    let mut live = bus.subscribe(S, Start::Earliest, "").await.unwrap();
    // Accepted only: archiving must persist them before it seals the stream.
    bus.publish(S, batch("m", 10), "p", Durability::Accepted)
        .await
        .unwrap();
    let archived = within(bus.archive(S)).await.unwrap();
    assert_eq!(offsets(archived), (1, 10));
    let archived_at = archived.archived_at.expect("archive time");
    assert_eq!(
        next_messages(&mut live, 10).await.last().unwrap().offset,
        10
    );
    assert!(
        within(live.next()).await.is_none(),
        "the live subscription ends"
    );

    let error = bus
        .publish(S, batch("late", 1), "p", Durability::Accepted)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            BusError::Archived {
                last_offset: 10,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(tonic::Status::from(error).code(), Code::FailedPrecondition);
    // Archiving again reports the same archive.
    assert_eq!(bus.archive(S).await.unwrap().archived_at, Some(archived_at));
    drop(bus);

    // Restarted: still archived, everything readable, then the end.
    let reopened = Bus::new(objects.clone(), BusConfig::default());
    let info = reopened.stream_info(S).await.unwrap();
    assert_eq!(
        (offsets(info), info.archived_at),
        ((1, 10), Some(archived_at))
    );
    let mut replay = reopened.subscribe(S, Start::Offset(4), "").await.unwrap();
    assert_eq!(next_messages(&mut replay, 7).await[0].offset, 4);
    assert!(within(replay.next()).await.is_none());
    let mut latest = reopened.subscribe(S, Start::Latest, "").await.unwrap();
    assert!(within(latest.next()).await.is_none());
    assert!(reopened
        .publish(S, batch("late", 1), "p", Durability::Persisted)
        .await
        .is_err());

    // An empty stream archives too.
    let empty = reopened.archive("never-used").await.unwrap();
    assert_eq!(offsets(empty), (1, 0));
    assert!(empty.archived_at.is_some());
}
