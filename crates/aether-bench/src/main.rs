//! `aether-bench`: why move agents' workspaces from git or a plain directory to AetherFS, in
//! numbers measured side by side in one run on this machine.
//!
//! For each workspace size (two sizes, 10x apart) it measures, with the same tree on both sides:
//! - checkpoint after editing 10 files vs `git add -A && git commit`;
//! - fork vs `git worktree add`;
//! - diff vs `git diff --stat`;
//! - small-file ingest (4 KiB files, batched) vs writing the same files to local disk;
//!
//! on the embedded default (`aetherd dev`) and, for ingest, on a cluster (etcd + S3 server).
//! Each figure is the median of several runs with the spread (min..max). Nothing is asserted.
//!
//! `cargo run --release -p aether-bench -- [--sizes 1000,10000] [--runs 5]`
//! (needs `aetherd` built in the same profile: `cargo build --release -p aether-server`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{Cluster, ClusterSpec, ServiceProcess};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "AetherFS vs git and local disk, side by side")]
struct Args {
    /// Workspace sizes in files (two sizes 10x apart show how costs grow).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000])]
    sizes: Vec<usize>,
    /// Runs per figure.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip the etcd + S3 cluster ingest figure.
    #[arg(long)]
    no_cluster: bool,
}

/// Median and spread of a set of timings.
struct Timing(Vec<Duration>);

impl Timing {
    fn median(&self) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted[sorted.len() / 2]
    }
    fn show(&self) -> String {
        let min = self.0.iter().min().unwrap();
        let max = self.0.iter().max().unwrap();
        format!("{:>9.2?} ({:.2?}..{:.2?})", self.median(), min, max)
    }
}

fn content(i: usize, round: usize, len: usize) -> Bytes {
    let line = format!("file {i} round {round}\n");
    Bytes::from(line.repeat(len / line.len() + 1)[..len].to_string())
}

fn path_of(i: usize) -> String {
    format!("dir{:03}/file{i:06}.txt", i / 100)
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .context("running git (is it installed?)")?;
    if !status.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    Ok(())
}

fn write_tree(dir: &Path, files: usize, round: usize, only: Option<usize>) -> Result<()> {
    for i in 0..only.unwrap_or(files) {
        let path = dir.join(path_of(i));
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(path, content(i, round, 4096))?;
    }
    Ok(())
}

async fn apply(
    channel: &Channel,
    session: &str,
    files: std::ops::Range<usize>,
    round: usize,
) -> Result<()> {
    let indices: Vec<usize> = files.collect();
    for batch in indices.chunks(1000) {
        let changes = batch
            .iter()
            .map(|&i| pb::Change {
                op: Some(pb::change::Op::Write(pb::WriteOp {
                    path: path_of(i),
                    content: content(i, round, 4096),
                    ..Default::default()
                })),
                precondition: None,
            })
            .collect();
        WorkspaceServiceClient::new(channel.clone())
            .max_encoding_message_size(64 << 20)
            .apply_changes(pb::ApplyChangesRequest {
                session_id: session.into(),
                changes,
                expected_head_version: 0,
            })
            .await?;
    }
    Ok(())
}

async fn new_session(channel: &Channel) -> Result<String> {
    Ok(SessionServiceClient::new(channel.clone())
        .create_session(pb::CreateSessionRequest::default())
        .await?
        .into_inner()
        .session
        .context("no session")?
        .id)
}

struct Row {
    what: String,
    ours: Timing,
    theirs: Timing,
    unit_count: Option<usize>,
}

async fn workspace_figures(channel: &Channel, files: usize, runs: usize) -> Result<Vec<Row>> {
    let scratch = tempfile::tempdir()?;
    // The same tree on both sides.
    let repo = scratch.path().join("repo");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q"])?;
    write_tree(&repo, files, 0, None)?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "initial"])?;
    let session = new_session(channel).await?;
    apply(channel, &session, 0..files, 0).await?;
    let mut history = HistoryServiceClient::new(channel.clone());
    history
        .create_checkpoint(pb::CreateCheckpointRequest {
            session_id: session.clone(),
            name: "initial".into(),
            description: String::new(),
        })
        .await?;

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=runs {
        let start = Instant::now();
        apply(channel, &session, 0..10, round).await?;
        history
            .create_checkpoint(pb::CreateCheckpointRequest {
                session_id: session.clone(),
                name: format!("r{round}"),
                description: String::new(),
            })
            .await?;
        ours.push(start.elapsed());
        let start = Instant::now();
        write_tree(&repo, files, round, Some(10))?;
        git(&repo, &["add", "-A"])?;
        git(&repo, &["commit", "-q", "-m", "edit"])?;
        theirs.push(start.elapsed());
    }
    let checkpoint = Row {
        what: format!("edit 10 files + checkpoint / git add -A && git commit ({files} files)"),
        ours: Timing(ours),
        theirs: Timing(theirs),
        unit_count: None,
    };

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..runs {
        let start = Instant::now();
        SessionServiceClient::new(channel.clone())
            .fork_session(pb::ForkSessionRequest {
                session_id: session.clone(),
                ..Default::default()
            })
            .await?;
        ours.push(start.elapsed());
        let tree = scratch.path().join(format!("worktree{round}"));
        let start = Instant::now();
        git(&repo, &["worktree", "add", "-q", tree.to_str().unwrap()])?;
        theirs.push(start.elapsed());
    }
    let fork = Row {
        what: format!("fork / git worktree add ({files} files)"),
        ours: Timing(ours),
        theirs: Timing(theirs),
        unit_count: None,
    };

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        WorkspaceServiceClient::new(channel.clone())
            .diff(pb::DiffRequest {
                session_id: session.clone(),
                from: Some(pb::Revision {
                    kind: pb::RevisionKind::Checkpoint as i32,
                    name: "initial".into(),
                }),
                ..Default::default()
            })
            .await?;
        ours.push(start.elapsed());
        let start = Instant::now();
        git(&repo, &["diff", "--stat", "HEAD~1"])?;
        theirs.push(start.elapsed());
    }
    let diff = Row {
        what: format!("diff vs first state / git diff --stat ({files} files)"),
        ours: Timing(ours),
        theirs: Timing(theirs),
        unit_count: None,
    };
    Ok(vec![checkpoint, fork, diff])
}

async fn ingest(channel: &Channel, files: usize, runs: usize, label: &str) -> Result<Row> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..runs {
        let session = new_session(channel).await?;
        let start = Instant::now();
        apply(channel, &session, 0..files, round).await?;
        ours.push(start.elapsed());
        let dir = tempfile::tempdir()?;
        let start = Instant::now();
        write_tree(dir.path(), files, round, None)?;
        theirs.push(start.elapsed());
    }
    Ok(Row {
        what: format!("ingest {files} x 4 KiB, batches of 1000, {label} / local disk"),
        ours: Timing(ours),
        theirs: Timing(theirs),
        unit_count: Some(files),
    })
}

fn print(rows: &[Row]) {
    println!(
        "{:<78} {:>36} {:>36} {:>9}",
        "measure (AetherFS / baseline)",
        "AetherFS median (min..max)",
        "baseline median (min..max)",
        "speed-up"
    );
    for row in rows {
        let ratio = row.theirs.median().as_secs_f64() / row.ours.median().as_secs_f64();
        println!(
            "{:<78} {:>36} {:>36} {:>8.2}x",
            row.what,
            row.ours.show(),
            row.theirs.show(),
            ratio
        );
        if let Some(n) = row.unit_count {
            println!(
                "{:<78} {:>27.0} files/s {:>27.0} files/s",
                "",
                n as f64 / row.ours.median().as_secs_f64(),
                n as f64 / row.theirs.median().as_secs_f64()
            );
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let data = tempfile::tempdir()?;
    let dev = ServiceProcess::start(&[
        "dev".into(),
        "--data".into(),
        data.path().display().to_string(),
    ])
    .await
    .context("starting aetherd dev (build it in the same profile first)")?;
    let channel = tonic::transport::Endpoint::from_shared(dev.endpoint())?
        .connect()
        .await?;
    println!("Setup: aetherd dev (embedded coordination fsynced per change, local-filesystem store) over gRPC on loopback;");
    println!(
        "git {} on the same disk; files of 4 KiB in directories of 100; {} runs per figure.\n",
        git_version(),
        args.runs
    );
    let mut rows = Vec::new();
    for &files in &args.sizes {
        rows.extend(workspace_figures(&channel, files, args.runs).await?);
        rows.push(ingest(&channel, files, args.runs, "embedded").await?);
    }
    if !args.no_cluster {
        let cluster = Cluster::start(ClusterSpec::default())
            .await
            .context("starting etcd + S3 cluster")?;
        let channel = tonic::transport::Endpoint::from_shared(cluster.coordinator_endpoint())?
            .connect()
            .await?;
        for &files in &args.sizes {
            rows.push(ingest(&channel, files, args.runs.min(3), "etcd + S3 (moto)").await?);
        }
    }
    print(&rows);
    println!("\nLarge blobs vs raw object_store: cargo bench -p aether-store --bench store_vs_raw");
    println!("Bus vs nats-server:             cargo bench -p aether-bus --bench bus_vs_nats");
    println!(
        "Fork/checkpoint/restore O(1):   cargo bench -p aether-coordinator --bench lifecycle_o1"
    );
    Ok(())
}

fn git_version() -> String {
    Command::new("git")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace("git version ", "")
        })
        .unwrap_or_else(|_| "?".into())
}
