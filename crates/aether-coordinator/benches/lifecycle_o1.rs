//! Fork, checkpoint and restore are O(1): their latency at 1k and 100k files, side by side.
//!
//! Runs the coordinator in-process on the embedded default (embedded coordination persisted
//! to a file, local-filesystem content store) behind a real gRPC server on loopback, fills a
//! session with N small files in batches, then times each operation many times and prints
//! p50/p99 per size and the ratio between sizes.
//!
//! `cargo bench -p aether-coordinator --bench lifecycle_o1`

mod support;

use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use support::{filled_session, serve};
use tonic::transport::Channel;

const ITERATIONS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Figures {
    p50: Duration,
    p99: Duration,
}

async fn time<F, Fut>(mut op: F) -> Figures
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..10 {
        op(usize::MAX - i).await; // warm-up
    }
    let mut samples = Vec::with_capacity(ITERATIONS);
    for i in 0..ITERATIONS {
        let start = Instant::now();
        op(i).await;
        samples.push(start.elapsed());
    }
    samples.sort();
    Figures {
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
    }
}

async fn measure(channel: &Channel, files: usize) -> Vec<(&'static str, Figures)> {
    let id = filled_session(channel, files).await;
    let mut sessions = SessionServiceClient::new(channel.clone());
    let history = HistoryServiceClient::new(channel.clone());
    create_checkpoint(history.clone(), id.clone(), "base".into()).await;
    let fork = time(|_| fork_session(sessions.clone(), id.clone())).await;
    let checkpoint =
        time(|i| create_checkpoint(history.clone(), id.clone(), format!("c{i}"))).await;
    let restore = time(|_| restore_base(history.clone(), id.clone())).await;
    // The forks share the parent's tree: check one to be sure the work was real.
    let last = sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert!(!last.is_empty());
    vec![
        ("fork", fork),
        ("checkpoint", checkpoint),
        ("restore", restore),
    ]
}

/// Forks session `id`.
async fn fork_session(mut sessions: SessionServiceClient<Channel>, id: String) {
    sessions
        .fork_session(pb::ForkSessionRequest {
            session_id: id,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Creates checkpoint `name` of session `id`.
async fn create_checkpoint(mut history: HistoryServiceClient<Channel>, id: String, name: String) {
    history
        .create_checkpoint(pb::CreateCheckpointRequest {
            session_id: id,
            name,
            description: String::new(),
        })
        .await
        .unwrap();
}

/// Restores session `id` to its checkpoint "base".
async fn restore_base(mut history: HistoryServiceClient<Channel>, id: String) {
    history
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            session_id: id,
            name: "base".into(),
            expected_head_version: 0,
        })
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let channel = serve(dir.path()).await;
    println!("Fork / checkpoint / restore latency over gRPC on loopback, embedded default");
    println!("(embedded coordination fsynced per change, local filesystem store), {ITERATIONS} runs each.\n");
    let small = measure(&channel, 1_000).await;
    let large = measure(&channel, 100_000).await;
    println!(
        "{:<11} {:>12} {:>12} {:>13} {:>13} {:>10}",
        "operation", "1k p50", "1k p99", "100k p50", "100k p99", "p50 ratio"
    );
    for ((name, a), (_, b)) in small.iter().zip(large.iter()) {
        println!(
            "{:<11} {:>12.3?} {:>12.3?} {:>13.3?} {:>13.3?} {:>9.2}x",
            name,
            a.p50,
            a.p99,
            b.p50,
            b.p99,
            b.p50.as_secs_f64() / a.p50.as_secs_f64()
        );
    }
}
