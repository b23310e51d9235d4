//! Session events on the bus: every change's event arrives, in each session's commit order,
//! also when many sessions change at once (the coordinator batches each session's queued
//! events into one publish); an event of a change that touched more paths than an event lists
//! says it left some out, instead of being refused by the bus for its size.

use std::collections::BTreeMap;
use std::time::Duration;

use aether_proto as pb;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{Cluster, ClusterSpec};
use prost::Message;

use crate::common::{connect, create_session, subscribe};

fn writes(session: &str, paths: impl Iterator<Item = String>) -> pb::ApplyChangesRequest {
    pb::ApplyChangesRequest {
        session_id: session.to_string(),
        changes: paths
            .map(|path| pb::Change {
                op: Some(pb::change::Op::Write(pb::WriteOp {
                    content: path.clone().into_bytes().into(),
                    path,
                    ..Default::default()
                })),
                precondition: None,
            })
            .collect(),
        expected_head_version: 0,
    }
}

/// The next `count` files-changed events of `stream` (failing after 30 s).
async fn files_changed(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    count: usize,
) -> Vec<(u64, pb::FilesChanged)> {
    let mut events = Vec::new();
    let wait = async {
        while events.len() < count {
            let response = stream.message().await.unwrap().expect("stream ended");
            let Some(pb::subscribe_response::Event::Message(message)) = response.event else {
                panic!("the subscription fell behind");
            };
            let event = pb::SessionEvent::decode(message.payload).unwrap();
            if let Some(pb::session_event::Event::FilesChanged(changed)) = event.event {
                events.push((event.head_version, changed));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("{} of {count} events within 30 s", events.len()));
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_in_order_and_a_huge_change_says_its_list_is_cut() {
    let cluster = Cluster::start(ClusterSpec {
        coordinators: 1,
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let channel = connect(&cluster.coordinators[0].endpoint()).await.unwrap();
    let bus = connect(&cluster.buses[0].endpoint()).await.unwrap();

    // A batch of 1,001 writes with long paths: more than an event lists (the unit tests of
    // `events` check that a listed event stays within the bus's 1 MiB payload limit).
    let big = create_session(&channel).await.unwrap().id;
    let mut stream = subscribe(&bus, &big).await.unwrap();
    let long = "d".repeat(250);
    WorkspaceServiceClient::new(channel.clone())
        .apply_changes(writes(
            &big,
            (0..1001).map(|i| format!("{long}/{i:05}.txt")),
        ))
        .await
        .unwrap();
    let (_, changed) = files_changed(&mut stream, 1).await.remove(0);
    assert!(changed.truncated, "{} paths listed", changed.paths.len());
    assert!(!changed.paths.is_empty() && changed.paths.len() <= 1000);
    assert!(changed.paths.iter().all(|p| p.starts_with(&long)));

    // Many sessions changing at once, two writers each (so a session often has several
    // events waiting at once): each session's events all arrive, in commit order, each with
    // the path its change wrote.
    const SESSIONS: usize = 8;
    const CHANGES: usize = 20;
    let mut streams = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..SESSIONS {
        let id = create_session(&channel).await.unwrap().id;
        streams.push((id.clone(), subscribe(&bus, &id).await.unwrap()));
        for writer in 0..2 {
            let mut workspace = WorkspaceServiceClient::new(channel.clone());
            let id = id.clone();
            writers.push(tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..CHANGES / 2 {
                    let path = format!("w{writer}-{i}.txt");
                    let request = writes(&id, std::iter::once(path.clone()));
                    let response = workspace.apply_changes(request).await.unwrap();
                    written.push((id.clone(), response.into_inner().head_version, path));
                }
                written
            }));
        }
    }
    let mut committed: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for writer in writers {
        for (id, version, path) in writer.await.unwrap() {
            committed.entry(id).or_default().insert(version, path);
        }
    }
    for (id, stream) in &mut streams {
        let events = files_changed(stream, CHANGES).await;
        let arrived: Vec<(u64, String)> = events
            .into_iter()
            .map(|(version, changed)| (version, changed.paths.join(",")))
            .collect();
        let expected: Vec<(u64, String)> = committed[id.as_str()].clone().into_iter().collect();
        assert_eq!(arrived, expected, "session {id}");
    }
}
