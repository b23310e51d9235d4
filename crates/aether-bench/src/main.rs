//! `aether-bench`: why move agents' workspaces from git or a plain directory to AetherFS, in
//! numbers measured side by side in one run on this machine.
//!
//! For each workspace size (two sizes, 10x apart) it measures, with the same tree on both sides:
//! - checkpoint after editing 10 files vs `git add -A && git commit`;
//! - fork vs `git worktree add`;
//! - diff vs `git diff --stat`;
//! - small-file ingest (4 KiB files, batched) vs writing the same files to local disk;
//!
//! on the embedded default (`aetherd dev`) and, for ingest, on clusters of etcd + an S3 server:
//! moto (Python, in memory, what the tests use), s3s-fs (Rust) with its files on tmpfs, and
//! s3s-fs with its files on disk. Below each cluster figure is the ceiling its S3 server sets:
//! raw `object_store` 4 KiB conditional creates (what the store sends for each new blob) with
//! as many in flight as the coordinator keeps, from a client configured by the same flags as
//! `aetherd`, in the same rounds. Each figure is the median of several runs with the spread
//! (min..max). Nothing is asserted. Every run writes content no earlier run wrote, and nothing
//! is deleted before the end (see [`Scratch`]).
//!
//! `cargo run --release -p aether-bench -- [--sizes 1000,10000] [--runs 5]
//! [--s3 moto,s3s-fs-tmpfs,s3s-fs] [--no-embedded] [--no-cluster]`
//! (needs `aetherd` built in the same profile: `cargo build --release -p aether-server`; the
//! s3s-fs figures need `cargo install s3s-fs@0.14.1 --locked --features binary` and are skipped
//! with a note without it).

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_store::backend::BackendArgs;
use aether_store::blobs::chunk_path;
use aether_store::Hash;
use aether_testkit::{Cluster, ClusterSpec, S3Kind, S3Server, ServiceProcess};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, PutMode, PutOptions};
use tonic::transport::Channel;

/// Content uploads the coordinator keeps in flight while applying a batch (`STORE_CONCURRENCY`
/// in aether-coordinator's workspace service): the raw S3 ceiling uses as many.
const STORE_CONCURRENCY: usize = 32;

#[derive(Parser)]
#[command(about = "AetherFS vs git and local disk, side by side")]
struct Args {
    /// Workspace sizes in files (two sizes 10x apart show how costs grow).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000])]
    sizes: Vec<usize>,
    /// Runs per figure.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip the etcd + S3 cluster ingest figures.
    #[arg(long)]
    no_cluster: bool,
    /// Skip the `aetherd dev` figures (to profile the cluster alone).
    #[arg(long)]
    no_embedded: bool,
    /// S3 servers to run the cluster ingest on.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_values_t = [S3Choice::Moto, S3Choice::S3sFsTmpfs, S3Choice::S3sFs]
    )]
    s3: Vec<S3Choice>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum S3Choice {
    /// moto: Python, in memory, one request at a time (what the tests use).
    Moto,
    /// s3s-fs with its files on tmpfs: what reaches the S3 server, without a disk under it.
    S3sFsTmpfs,
    /// s3s-fs with its files under $TMPDIR: three files created per object.
    S3sFs,
}

impl S3Choice {
    fn kind(self) -> S3Kind {
        match self {
            S3Choice::Moto => S3Kind::Moto,
            S3Choice::S3sFsTmpfs => S3Kind::S3sFsTmpfs,
            S3Choice::S3sFs => S3Kind::S3sFs,
        }
    }
}

/// Temp dirs kept until everything is measured. Deleting thousands of files makes file
/// creation slower for a while afterwards (ext4 skips recently freed inodes; measured here at
/// ~1,300 creates/s instead of tens of thousands), which would charge one figure's cleanup to
/// the next figure's files.
#[derive(Default)]
struct Scratch(std::sync::Mutex<Vec<tempfile::TempDir>>);

impl Scratch {
    fn dir(&self) -> Result<std::path::PathBuf> {
        let dir = tempfile::Builder::new().prefix("aether-bench-").tempdir()?;
        let path = dir.path().to_path_buf();
        self.0.lock().expect("scratch dirs").push(dir);
        Ok(path)
    }
}

/// The `object_store` flags `aetherd` would parse from [`S3Server::aetherd_args`].
#[derive(Parser)]
struct BackendFlags {
    #[command(flatten)]
    backend: BackendArgs,
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

/// Writes every dirty page of every filesystem back before a timed operation starts, so
/// neither side pays for the other's writeback: git leaves its objects and its index in the
/// page cache, and the local store's group commit (`syncfs`) would flush them.
fn settle() {
    nix::unistd::sync();
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
    /// What bounds `ours` from outside AetherFS: (what, timing of `unit_count` operations).
    ceiling: Option<(String, Timing)>,
}

/// Every timed run writes content no earlier run wrote, so no figure is helped by dedup.
static NEXT_ROUND: AtomicUsize = AtomicUsize::new(1_000_000);

fn fresh_round() -> usize {
    NEXT_ROUND.fetch_add(1, Ordering::Relaxed)
}

async fn workspace_figures(
    channel: &Channel,
    files: usize,
    runs: usize,
    scratch: &Scratch,
) -> Result<Vec<Row>> {
    let scratch = scratch.dir()?;
    // The same tree on both sides.
    let repo = scratch.join("repo");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q"])?;
    write_tree(&repo, files, 0, None)?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "initial"])?;
    let session = new_session(channel).await?;
    apply(channel, &session, 0..files, 0).await?;
    let mut history = HistoryServiceClient::new(channel.clone());
    checkpoint(&mut history, &session, "initial".into()).await?;

    let sides = Sides {
        channel,
        session: &session,
        repo: &repo,
    };
    Ok(vec![
        sides.checkpoint_row(&mut history, files, runs).await?,
        sides.fork_row(&scratch, files, runs).await?,
        sides.diff_row(files, runs).await?,
    ])
}

/// Creates checkpoint `name` of `session`.
async fn checkpoint(
    history: &mut HistoryServiceClient<Channel>,
    session: &str,
    name: String,
) -> Result<()> {
    history
        .create_checkpoint(pb::CreateCheckpointRequest {
            session_id: session.to_string(),
            name,
            description: String::new(),
        })
        .await?;
    Ok(())
}

/// The same tree on both sides: a session, and a git repository.
struct Sides<'a> {
    channel: &'a Channel,
    session: &'a str,
    repo: &'a Path,
}

impl Sides<'_> {
    /// Editing 10 files then a checkpoint, vs `git add -A && git commit`.
    async fn checkpoint_row(
        &self,
        history: &mut HistoryServiceClient<Channel>,
        files: usize,
        runs: usize,
    ) -> Result<Row> {
        let mut timings = Timings::default();
        for run in 1..=runs {
            let round = fresh_round();
            timings
                .ours(async {
                    apply(self.channel, self.session, 0..10, round).await?;
                    checkpoint(history, self.session, format!("r{run}")).await
                })
                .await?;
            timings.theirs(|| {
                write_tree(self.repo, files, round, Some(10))?;
                git(self.repo, &["add", "-A"])?;
                git(self.repo, &["commit", "-q", "-m", "edit"])
            })?;
        }
        Ok(timings.row(format!(
            "edit 10 files + checkpoint / git add -A && git commit ({files} files)"
        )))
    }

    /// Forks the session.
    async fn fork(&self) -> Result<()> {
        SessionServiceClient::new(self.channel.clone())
            .fork_session(pb::ForkSessionRequest {
                session_id: self.session.to_string(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Diffs the session against its first state (checkpoint "initial").
    async fn diff(&self) -> Result<()> {
        WorkspaceServiceClient::new(self.channel.clone())
            .diff(pb::DiffRequest {
                session_id: self.session.to_string(),
                from: Some(pb::Revision {
                    kind: pb::RevisionKind::Checkpoint as i32,
                    name: "initial".into(),
                }),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// A fork vs `git worktree add` (the worktrees go under `scratch`).
    async fn fork_row(&self, scratch: &Path, files: usize, runs: usize) -> Result<Row> {
        let mut timings = Timings::default();
        for round in 0..runs {
            timings.ours(self.fork()).await?;
            let tree = scratch.join(format!("worktree{round}"));
            timings.theirs(|| {
                git(
                    self.repo,
                    &["worktree", "add", "-q", tree.to_str().unwrap()],
                )
            })?;
        }
        Ok(timings.row(format!("fork / git worktree add ({files} files)")))
    }

    /// A diff against the first state vs `git diff --stat HEAD~1`.
    async fn diff_row(&self, files: usize, runs: usize) -> Result<Row> {
        let mut timings = Timings::default();
        for _ in 0..runs {
            timings.ours(self.diff()).await?;
            timings.theirs(|| git(self.repo, &["diff", "--stat", "HEAD~1"]))?;
        }
        Ok(timings.row(format!(
            "diff vs first state / git diff --stat ({files} files)"
        )))
    }
}

/// The timings of both sides of a figure, each operation timed after [`settle`].
#[derive(Default)]
struct Timings {
    ours: Vec<Duration>,
    theirs: Vec<Duration>,
}

impl Timings {
    /// Times one AetherFS operation (`operation` does nothing until it is awaited here).
    async fn ours(&mut self, operation: impl Future<Output = Result<()>>) -> Result<()> {
        settle();
        let start = Instant::now();
        operation.await?;
        self.ours.push(start.elapsed());
        Ok(())
    }

    /// Times one baseline operation.
    fn theirs(&mut self, operation: impl FnOnce() -> Result<()>) -> Result<()> {
        settle();
        let start = Instant::now();
        operation()?;
        self.theirs.push(start.elapsed());
        Ok(())
    }

    /// The row of these timings, with no unit count and no ceiling.
    fn row(self, what: String) -> Row {
        Row {
            what,
            ours: Timing(self.ours),
            theirs: Timing(self.theirs),
            unit_count: None,
            ceiling: None,
        }
    }
}

/// Ingest through the API vs the same files written to local disk; with `s3`, also the raw
/// S3 ceiling, measured in the same rounds.
async fn ingest(
    channel: &Channel,
    files: usize,
    runs: usize,
    label: &str,
    s3: Option<&S3Server>,
    scratch: &Scratch,
) -> Result<Row> {
    let raw = s3.map(raw_objects).transpose()?;
    let (mut ours, mut theirs, mut ceiling) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let round = fresh_round();
        let session = new_session(channel).await?;
        settle();
        let start = Instant::now();
        apply(channel, &session, 0..files, round).await?;
        ours.push(start.elapsed());
        let dir = scratch.dir()?;
        settle();
        let start = Instant::now();
        write_tree(&dir, files, round, None)?;
        theirs.push(start.elapsed());
        if let Some(raw) = &raw {
            ceiling.push(raw_creates(raw.as_ref(), files, fresh_round()).await?);
        }
    }
    Ok(Row {
        what: format!("ingest {files} x 4 KiB, batches of 1000, {label} / local disk"),
        ours: Timing(ours),
        theirs: Timing(theirs),
        unit_count: Some(files),
        ceiling: s3.map(|s3| {
            (
                format!(
                    "  ceiling: raw object_store 4 KiB creates, {STORE_CONCURRENCY} in flight, same {}",
                    s3.kind().name()
                ),
                Timing(ceiling),
            )
        }),
    })
}

/// An `object_store` client configured exactly as `aetherd` configures its own for `s3`.
fn raw_objects(s3: &S3Server) -> Result<std::sync::Arc<dyn ObjectStore>> {
    let flags =
        BackendFlags::try_parse_from(std::iter::once("aetherd".into()).chain(s3.aetherd_args()))
            .context("parsing the S3 server's aetherd flags")?;
    flags
        .backend
        .build("raw-ceiling")
        .map_err(anyhow::Error::msg)
}

/// `files` new 4 KiB objects written as the store writes a new single-chunk blob (a
/// conditional create under its hash), [`STORE_CONCURRENCY`] at a time.
async fn raw_creates(objects: &dyn ObjectStore, files: usize, round: usize) -> Result<Duration> {
    let start = Instant::now();
    futures::stream::iter(0..files)
        .map(|i| async move {
            let data = content(i, round, 4096);
            let options = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            objects
                .put_opts(&chunk_path(&Hash::of(&data)), data.into(), options)
                .await
        })
        .buffer_unordered(STORE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(start.elapsed())
}

fn print(rows: &[Row]) {
    println!(
        "{:<84} {:>36} {:>36} {:>9}",
        "measure (AetherFS / baseline)",
        "AetherFS median (min..max)",
        "baseline median (min..max)",
        "speed-up"
    );
    for row in rows {
        let ratio = row.theirs.median().as_secs_f64() / row.ours.median().as_secs_f64();
        println!(
            "{:<84} {:>36} {:>36} {:>8.2}x",
            row.what,
            row.ours.show(),
            row.theirs.show(),
            ratio
        );
        if let Some(n) = row.unit_count {
            println!(
                "{:<84} {:>27.0} files/s {:>27.0} files/s",
                "",
                n as f64 / row.ours.median().as_secs_f64(),
                n as f64 / row.theirs.median().as_secs_f64()
            );
            if let Some((what, timing)) = &row.ceiling {
                println!("{:<84} {:>36}", what, timing.show());
                println!(
                    "{:<84} {:>25.0} objects/s",
                    "",
                    n as f64 / timing.median().as_secs_f64()
                );
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let scratch = Scratch::default();
    // Servers too stay up until the end, for the same reason as `Scratch`.
    let mut servers: Vec<ServiceProcess> = Vec::new();
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut rows = Vec::new();
    print_setup(&args);
    if !args.no_embedded {
        let dev = embedded_rows(&args, &scratch, &mut rows).await?;
        servers.push(dev);
    }
    let mut notes = Vec::new();
    for choice in args.s3.iter().filter(|_| !args.no_cluster) {
        let kind = choice.kind();
        if let Err(error) = kind.program() {
            notes.push(format!("etcd + S3 ({}) skipped: {error:#}", kind.name()));
            continue;
        }
        let cluster = cluster_rows(&args, kind, &scratch, &mut rows).await?;
        clusters.push(cluster);
    }
    print(&rows);
    for note in notes {
        println!("Note: {note}");
    }
    println!("\nLarge blobs vs raw object_store: cargo bench -p aether-store --bench store_vs_raw");
    println!("Bus vs nats-server:             cargo bench -p aether-bus --bench bus_vs_nats");
    println!(
        "Fork/checkpoint/restore O(1):   cargo bench -p aether-coordinator --bench lifecycle_o1"
    );
    Ok(())
}

/// Describes what the figures below are measured on.
fn print_setup(args: &Args) {
    if !args.no_embedded {
        println!("Setup: aetherd dev (embedded coordination fsynced per change, local-filesystem store durable by group commit) over gRPC on loopback;");
        println!(
            "git {} (no fsync, its default) on the same disk, `sync` before every timed operation; files of 4 KiB in directories of 100; {} runs per figure.",
            git_version(),
            args.runs
        );
    }
    if !args.no_cluster {
        println!(
            "Clusters: etcd (1 member) + an S3 server + aetherd store, bus and coordinator, each its own process on loopback; {} runs per figure ({} on moto).",
            args.runs,
            args.runs.min(3)
        );
    }
    println!();
}

/// Measures every figure on `aetherd dev`, for each size, onto `rows`; returns the server,
/// which the caller keeps up until the end.
async fn embedded_rows(
    args: &Args,
    scratch: &Scratch,
    rows: &mut Vec<Row>,
) -> Result<ServiceProcess> {
    let data = scratch.dir()?;
    let dev = ServiceProcess::start(&["dev".into(), "--data".into(), data.display().to_string()])
        .await
        .context("starting aetherd dev (build it in the same profile first)")?;
    let channel = tonic::transport::Endpoint::from_shared(dev.endpoint())?
        .connect()
        .await?;
    for &files in &args.sizes {
        rows.extend(workspace_figures(&channel, files, args.runs, scratch).await?);
        rows.push(ingest(&channel, files, args.runs, "embedded", None, scratch).await?);
    }
    Ok(dev)
}

/// Measures ingest on an etcd + S3 (`kind`) cluster, for each size, onto `rows`; returns the
/// cluster, which the caller keeps up until the end.
async fn cluster_rows(
    args: &Args,
    kind: S3Kind,
    scratch: &Scratch,
    rows: &mut Vec<Row>,
) -> Result<Cluster> {
    let cluster = Cluster::start(ClusterSpec {
        s3: kind,
        ..Default::default()
    })
    .await
    .with_context(|| format!("starting etcd + S3 ({}) cluster", kind.name()))?;
    let channel = tonic::transport::Endpoint::from_shared(cluster.coordinator_endpoint())?
        .connect()
        .await?;
    let label = format!("etcd + S3 ({})", kind.name());
    // moto takes seconds per thousand objects.
    let runs = if kind == S3Kind::Moto {
        args.runs.min(3)
    } else {
        args.runs
    };
    for &files in &args.sizes {
        rows.push(ingest(&channel, files, runs, &label, Some(&cluster.s3), scratch).await?);
    }
    Ok(cluster)
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
