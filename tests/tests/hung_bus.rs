//! A hung bus never blocks file mutations (design promise 8): with the bus process stopped
//! (SIGSTOP: its TCP connections stay open, nothing answers), mutations keep completing at
//! their usual pace past the coordinator's whole event queue; events beyond the queue are
//! dropped and counted, and once the bus resumes new events flow again.

use crate::common::{connect, create_session};

use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{Cluster, ClusterSpec};

/// Events the coordinator under test holds while the bus is away.
const QUEUE_DEPTH: usize = 8;

fn write(session: &str, path: &str, content: &[u8]) -> pb::ApplyChangesRequest {
    pb::ApplyChangesRequest {
        session_id: session.to_string(),
        changes: vec![pb::Change {
            op: Some(pb::change::Op::Write(pb::WriteOp {
                path: path.to_string(),
                content: content.to_vec().into(),
                ..Default::default()
            })),
            precondition: None,
        }],
        expected_head_version: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_bus_never_blocks_file_mutations() {
    let cluster = Cluster::start(ClusterSpec {
        coordinators: 0,
        ..ClusterSpec::default()
    })
    .await
    .unwrap();
    let coordinator = crate::common::start_coordinator(
        &cluster,
        &[
            "--bus-endpoint",
            &cluster.buses[0].endpoint(),
            "--event-queue-depth",
            &QUEUE_DEPTH.to_string(),
        ],
    )
    .await;
    let channel = connect(&coordinator.endpoint()).await.unwrap();
    let bus_channel = connect(&cluster.buses[0].endpoint()).await.unwrap();
    let session = create_session(&channel).await.unwrap().id;
    let mut workspace = WorkspaceServiceClient::new(channel.clone());
    // Warm up: an event reaches the bus.
    workspace
        .apply_changes(write(&session, "warm.txt", b"warm"))
        .await
        .unwrap();

    cluster.buses[0].pause().unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..QUEUE_DEPTH * 4 {
        let call = Instant::now();
        let request = write(&session, &format!("f{i}.txt"), format!("{i}").as_bytes());
        tokio::time::timeout(Duration::from_secs(10), workspace.apply_changes(request))
            .await
            .unwrap_or_else(|_| panic!("mutation {i} waited on the stopped bus"))
            .unwrap();
        slowest = slowest.max(call.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a mutation took {slowest:?} with the bus stopped ({:?} for all)",
        started.elapsed()
    );
    cluster.buses[0].resume().unwrap();

    // The bus answers again and a new change's event is delivered (queued ones first).
    let mut bus = BusServiceClient::new(bus_channel);
    let mut stream = bus
        .subscribe(pb::SubscribeRequest {
            session_id: session.clone(),
            start: Some(pb::StartPosition {
                position: Some(pb::start_position::Position::Latest(true)),
            }),
            subject_filter: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    workspace
        .apply_changes(write(&session, "after.txt", b"after"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .expect("no event after the bus resumed")
            .unwrap()
            .expect("stream ended");
        let Some(pb::subscribe_response::Event::Message(message)) = message.event else {
            continue;
        };
        let event = <pb::SessionEvent as prost::Message>::decode(message.payload.as_ref()).unwrap();
        if let Some(pb::session_event::Event::FilesChanged(changed)) = event.event {
            if changed.paths.iter().any(|p| p == "after.txt") {
                break;
            }
        }
    }
    let log = coordinator.stderr_tail(200);
    assert!(log.contains("event is dropped"), "{log}");
}
