//! `aether-cost`: what one operation costs a cluster, measured on a real one (design promise
//! 10's cost model), and how mutation throughput scales with coordinators.
//!
//! It starts etcd (1 member, `--metrics extensive`), an S3 server behind a counting proxy
//! ([`s3_meter`]), one store, one bus and N coordinators, each its own `aetherd` process on
//! loopback. For a one-file ApplyChanges, a checkpoint, a fork, a bus publish, a session
//! create and a session close, run one after another, it prints per operation: latency; etcd calls (from etcd's
//! own metrics), bytes etcd received and etcd's handling time; S3 requests, bytes and the
//! time at least one was outstanding; CPU time of every process (from /proc). The latency
//! left after etcd and S3 is the services' own (coordinator, store, bus, and the gRPC hops
//! between them).
//!
//! Then it runs one-file batches on many sessions at once for a while, through the first
//! coordinator and through all of them (sessions spread by a client-side round robin), with
//! each process's CPU use: on a 2-core machine the sum of the processes' CPU says when the
//! machine is the bound.
//!
//! `cargo run --release -p aether-bench --bin aether-cost -- [--s3 s3s-fs-tmpfs|s3s-fs|moto]
//! [--ops 300] [--sessions 64] [--seconds 10] [--coordinators 2]` (needs `aetherd` built in the
//! same profile; s3s-fs: `cargo install s3s-fs@0.14.1 --locked --features binary`).

mod etcd_meter;
mod s3_meter;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::history_service_client::HistoryServiceClient;
use aether_proto::session_service_client::SessionServiceClient;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{EtcdCluster, S3Kind, S3Server, ServiceProcess};
use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use tonic::transport::Channel;

use etcd_meter::EtcdCounts;
use s3_meter::{S3Counts, S3Meter};

#[derive(Parser)]
#[command(about = "What one AetherFS operation costs etcd, S3 and the services")]
struct Args {
    /// The S3 server.
    #[arg(long, value_enum, default_value_t = S3Choice::S3sFsTmpfs)]
    s3: S3Choice,
    /// Operations of each kind, one after another.
    #[arg(long, default_value_t = 300)]
    ops: usize,
    /// Sessions written at once in the throughput runs.
    #[arg(long, default_value_t = 64)]
    sessions: usize,
    /// Length of each throughput run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Coordinators started (the throughput runs use the first, then all).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    coordinators: u16,
    /// Also list the S3 requests of one more one-file ApplyChanges.
    #[arg(long)]
    show_s3_requests: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum S3Choice {
    /// s3s-fs with its files on tmpfs: what reaches S3, without a disk under it.
    S3sFsTmpfs,
    /// s3s-fs with its files under $TMPDIR.
    S3sFs,
    /// moto: Python, one request at a time; its figures are moto's.
    Moto,
}

impl S3Choice {
    fn kind(self) -> S3Kind {
        match self {
            S3Choice::S3sFsTmpfs => S3Kind::S3sFsTmpfs,
            S3Choice::S3sFs => S3Kind::S3sFs,
            S3Choice::Moto => S3Kind::Moto,
        }
    }
}

/// The cluster, with every process the figures name.
struct Deployment {
    etcd: EtcdCluster,
    s3: S3Server,
    meter: S3Meter,
    store: ServiceProcess,
    bus: ServiceProcess,
    coordinators: Vec<ServiceProcess>,
}

impl Deployment {
    async fn start(kind: S3Kind, coordinators: usize) -> Result<Deployment> {
        let (etcd, s3) = tokio::join!(EtcdCluster::start(1), S3Server::start_with(kind));
        let (etcd, s3) = (etcd?, s3?);
        let upstream: SocketAddr = s3
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .context("S3 endpoint")?;
        let meter = S3Meter::start(upstream).await?;
        let mut s3_args = s3.aetherd_args();
        let at = s3_args
            .iter()
            .position(|a| a == "--s3-endpoint")
            .context("no --s3-endpoint")?;
        s3_args[at + 1] = meter.endpoint();
        let etcd_endpoints = etcd.endpoints().join(",");
        let with = |first: &[&str], rest: &[String]| -> Vec<String> {
            first
                .iter()
                .map(|s| s.to_string())
                .chain(rest.iter().cloned())
                .collect()
        };
        let store = ServiceProcess::start(&with(&["store"], &s3_args))
            .await
            .context("starting the store (build aetherd in the same profile first)")?;
        let mut bus_args = with(&["bus"], &s3_args);
        bus_args.extend(["--etcd-endpoints".into(), etcd_endpoints.clone()]);
        let bus = ServiceProcess::start(&bus_args).await?;
        let mut started = Vec::new();
        for _ in 0..coordinators.max(1) {
            let args = with(
                &["coordinator"],
                &[
                    "--etcd-endpoints".into(),
                    etcd_endpoints.clone(),
                    "--store-endpoint".into(),
                    store.endpoint(),
                    "--bus-endpoint".into(),
                    bus.endpoint(),
                ],
            );
            started.push(ServiceProcess::start(&args).await?);
        }
        Ok(Deployment {
            etcd,
            s3,
            meter,
            store,
            bus,
            coordinators: started,
        })
    }

    /// (name, pid) of every process.
    fn processes(&self) -> Vec<(String, u32)> {
        let mut all = Vec::new();
        for (i, c) in self.coordinators.iter().enumerate() {
            all.push((format!("coordinator {}", i + 1), c.pid()));
        }
        all.push(("store".into(), self.store.pid()));
        all.push(("bus".into(), self.bus.pid()));
        if let Some(pid) = self.etcd.pid(0) {
            all.push(("etcd".into(), pid));
        }
        all.push(("S3 server".into(), self.s3.pid()));
        all
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            etcd: EtcdCounts::scrape(&self.etcd.metrics_endpoint(0)).await?,
            s3: self.meter.snapshot(),
            cpu: self
                .processes()
                .into_iter()
                .map(|(name, pid)| (name, cpu_time(pid)))
                .collect(),
            at: Instant::now(),
        })
    }
}

/// CPU time (user + system) of a process so far, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // Linux reports in USER_HZ, 100 on every architecture it runs on here.
    Duration::from_millis(ticks * 10)
}

struct Snapshot {
    etcd: EtcdCounts,
    s3: S3Counts,
    cpu: BTreeMap<String, Duration>,
    at: Instant,
}

/// What an interval cost, per operation.
struct Cost {
    ops: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    etcd: EtcdCounts,
    s3: S3Counts,
    cpu: BTreeMap<String, Duration>,
}

impl Cost {
    fn between(before: &Snapshot, after: &Snapshot, latencies: Vec<Duration>) -> Cost {
        Cost {
            ops: latencies.len().max(1),
            wall: after.at - before.at,
            etcd: after.etcd.since(&before.etcd),
            s3: after.s3.since(&before.s3),
            cpu: after
                .cpu
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(before.cpu[k])))
                .collect(),
            latencies,
        }
    }

    fn per_op(&self, total: f64) -> f64 {
        total / self.ops as f64
    }

    fn ms_per_op(&self, total: Duration) -> f64 {
        total.as_secs_f64() * 1000.0 / self.ops as f64
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

fn content(tag: u64) -> Bytes {
    Bytes::from(format!("{tag:016x}\n").repeat(64))
}

/// One operation kind, run `ops` times one after another.
#[derive(Clone, Copy)]
enum Op {
    Create,
    Apply,
    Checkpoint,
    Fork,
    Publish,
    Close,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "session create",
            Op::Apply => "one-file ApplyChanges (1 KiB inline)",
            Op::Checkpoint => "checkpoint",
            Op::Fork => "fork (100-file session)",
            Op::Publish => "bus publish (persisted, 256 B)",
            Op::Close => "session close (1-file session)",
        }
    }
}

struct Clients {
    coordinator: Channel,
    bus: Channel,
}

async fn new_session(channel: &Channel) -> Result<String> {
    Ok(SessionServiceClient::new(channel.clone())
        .create_session(named(pb::CreateSessionRequest::default()))
        .await?
        .into_inner()
        .session
        .context("no session")?
        .id)
}

/// A request named by a fresh request id, as the SDK sends every change (its outcome is
/// then recorded for retries: part of the cost).
fn named<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "x-aether-request-id",
        format!("cost-{}", next_tag()).parse().expect("ascii"),
    );
    request
}

async fn write_one(channel: &Channel, session: &str, tag: u64) -> Result<()> {
    WorkspaceServiceClient::new(channel.clone())
        .apply_changes(named(pb::ApplyChangesRequest {
            session_id: session.into(),
            changes: vec![pb::Change {
                op: Some(pb::change::Op::Write(pb::WriteOp {
                    path: format!("dir{}/file{}.txt", tag % 10, tag % 100),
                    content: content(tag),
                    ..Default::default()
                })),
                precondition: None,
            }],
            expected_head_version: 0,
        }))
        .await?;
    Ok(())
}

static TAG: AtomicU64 = AtomicU64::new(1);
/// Batches refused by admission control (and tried again) in the throughput runs.
static REFUSED: AtomicU64 = AtomicU64::new(0);

fn next_tag() -> u64 {
    TAG.fetch_add(1, Ordering::Relaxed)
}

async fn run_one(op: Op, clients: &Clients, session: &str, i: usize) -> Result<()> {
    let channel = &clients.coordinator;
    match op {
        Op::Create => {
            new_session(channel).await?;
        }
        Op::Apply => write_one(channel, session, next_tag()).await?,
        Op::Checkpoint => {
            HistoryServiceClient::new(channel.clone())
                .create_checkpoint(named(pb::CreateCheckpointRequest {
                    session_id: session.into(),
                    name: format!("c{i}-{}", next_tag()),
                    description: String::new(),
                }))
                .await?;
        }
        Op::Fork => {
            SessionServiceClient::new(channel.clone())
                .fork_session(named(pb::ForkSessionRequest {
                    session_id: session.into(),
                    ..Default::default()
                }))
                .await?;
        }
        Op::Close => {
            SessionServiceClient::new(channel.clone())
                .close_session(named(pb::CloseSessionRequest {
                    session_id: session.into(),
                    archive: false,
                }))
                .await?;
        }
        Op::Publish => {
            BusServiceClient::new(clients.bus.clone())
                .publish(pb::PublishRequest {
                    session_id: session.into(),
                    messages: vec![pb::OutgoingMessage {
                        subject: "bench.cost".into(),
                        payload: Bytes::from(vec![b'x'; 256]),
                        headers: Default::default(),
                    }],
                    durability: pb::Durability::Persisted as i32,
                })
                .await?;
        }
    }
    Ok(())
}

async fn measure(deployment: &Deployment, clients: &Clients, op: Op, ops: usize) -> Result<Cost> {
    let session = new_session(&clients.coordinator).await?;
    for i in 0..100 {
        write_one(&clients.coordinator, &session, i).await?;
    }
    // A close needs a session of its own each time, made before counting.
    let mut closable = Vec::new();
    if matches!(op, Op::Close) {
        for _ in 0..ops + 10 {
            let id = new_session(&clients.coordinator).await?;
            write_one(&clients.coordinator, &id, next_tag()).await?;
            closable.push(id);
        }
    }
    let target = |i: usize| closable.get(i).unwrap_or(&session).as_str();
    // Warm up connections, caches and leases before counting.
    for i in 0..10 {
        run_one(op, clients, target(ops + i), i).await?;
    }
    let before = deployment.snapshot().await?;
    let mut latencies = Vec::with_capacity(ops);
    for i in 0..ops {
        let start = Instant::now();
        run_one(op, clients, target(i), i)
            .await
            .with_context(|| op.name())?;
        latencies.push(start.elapsed());
    }
    let after = deployment.snapshot().await?;
    if !closable.is_empty() {
        print_kept_in_etcd(deployment, &closable).await?;
    }
    Ok(Cost::between(&before, &after, latencies))
}

/// What etcd keeps of the closed `sessions` (design promise 10: a tombstone each).
async fn print_kept_in_etcd(deployment: &Deployment, sessions: &[String]) -> Result<()> {
    use aether_coord::Coordination;
    let etcd = aether_coord::EtcdCoordination::connect(&deployment.etcd.endpoints()).await?;
    let all = etcd.range("/aether/v1/", None, 1_000_000).await?;
    let closed: std::collections::HashSet<&str> = sessions.iter().map(String::as_str).collect();
    let (mut keys, mut bytes) = (0usize, 0usize);
    for kv in &all {
        let named = kv.key.rsplit('/').next().unwrap_or_default();
        // Lease-bound holders go with their lease; what stays is what closing left.
        if closed.contains(named) && !kv.key.contains("holders/") {
            keys += 1;
            bytes += kv.key.len() + kv.value.len();
        }
    }
    println!(
        "etcd keeps per closed session (no labels): {:.2} keys, {} bytes of keys and values",
        keys as f64 / sessions.len() as f64,
        bytes / sessions.len().max(1)
    );
    Ok(())
}

/// One-file batches on `sessions` sessions at once for `seconds`, each session on the
/// coordinator a round robin over `channels` gives it.
async fn throughput(
    deployment: &Deployment,
    channels: &[Channel],
    sessions: usize,
    seconds: u64,
) -> Result<Cost> {
    let mut ids = Vec::with_capacity(sessions);
    for k in 0..sessions {
        let channel = channels[k % channels.len()].clone();
        let id = new_session(&channel).await?;
        write_one(&channel, &id, next_tag()).await?;
        ids.push((channel, id));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let before = deployment.snapshot().await?;
    let mut tasks = Vec::new();
    for (channel, id) in ids {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let tag = next_tag();
                // Admission control refuses past --max-uploads with nothing applied: a
                // client tries again shortly, as the message says.
                while let Err(error) = write_one(&channel, &id, tag).await {
                    match error.downcast_ref::<tonic::Status>() {
                        Some(s) if s.code() == tonic::Code::ResourceExhausted => {
                            REFUSED.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        _ => return Err(error),
                    }
                }
                latencies.push(start.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let after = deployment.snapshot().await?;
    Ok(Cost::between(&before, &after, latencies))
}

fn print_costs(rows: &[(Op, Cost)]) {
    println!("| operation | ops/s | p50 ms | p99 ms | etcd calls/op | etcd KiB in/op | etcd ms/op | S3 requests/op | S3 KiB up/op | S3 busy ms/op | rest ms/op | CPU ms/op |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (op, cost) in rows {
        let etcd_calls: Vec<String> = cost
            .etcd
            .calls
            .iter()
            .filter(|(m, _)| !matches!(m.as_str(), "Watch" | "LeaseKeepAlive"))
            .map(|(m, n)| format!("{m} {:.1}", cost.per_op(*n)))
            .collect();
        let s3_requests: Vec<String> = cost
            .s3
            .requests
            .iter()
            .map(|(m, n)| format!("{m} {:.1}", cost.per_op(*n as f64)))
            .collect();
        let mean = cost.ms_per_op(cost.wall);
        let etcd_ms = cost.per_op(cost.etcd.handling_seconds() * 1000.0);
        let s3_ms = cost.ms_per_op(cost.s3.busy);
        let cpu: Vec<String> = cost
            .cpu
            .iter()
            .filter(|(_, d)| !d.is_zero())
            .map(|(name, d)| format!("{name} {:.2}", cost.ms_per_op(*d)))
            .collect();
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} |",
            op.name(),
            cost.ops as f64 / cost.wall.as_secs_f64(),
            cost.percentile(0.5).as_secs_f64() * 1000.0,
            cost.percentile(0.99).as_secs_f64() * 1000.0,
            if etcd_calls.is_empty() {
                "0".into()
            } else {
                etcd_calls.join(", ")
            },
            cost.per_op(cost.etcd.bytes_received) / 1024.0,
            etcd_ms,
            if s3_requests.is_empty() {
                "0".into()
            } else {
                s3_requests.join(", ")
            },
            cost.per_op(cost.s3.bytes_up as f64) / 1024.0,
            s3_ms,
            (mean - etcd_ms - s3_ms).max(0.0),
            cpu.join(", "),
        );
    }
}

fn print_throughput(label: &str, cost: &Cost) {
    let wall = cost.wall.as_secs_f64();
    let cpu: Vec<String> = cost
        .cpu
        .iter()
        .filter(|(_, d)| !d.is_zero())
        .map(|(name, d)| format!("{name} {:.0}%", d.as_secs_f64() * 100.0 / wall))
        .collect();
    let total: f64 = cost.cpu.values().map(|d| d.as_secs_f64()).sum::<f64>() * 100.0 / wall;
    println!(
        "| {label} | {:.0} | {:.1} | {:.1} | {} | {:.1} | {:.0}% of {}00% ({}) |",
        cost.latencies.len() as f64 / wall,
        cost.percentile(0.5).as_secs_f64() * 1000.0,
        cost.percentile(0.99).as_secs_f64() * 1000.0,
        REFUSED.swap(0, Ordering::Relaxed),
        cost.etcd.wal_fsyncs / wall,
        total,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu.join(", "),
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let kind = args.s3.kind();
    let deployment = Deployment::start(kind, usize::from(args.coordinators))
        .await
        .with_context(|| format!("starting etcd + {} + aetherd", kind.name()))?;
    let (channels, clients) = connect(&deployment).await?;
    println!(
        "Cluster: etcd 1 member, {} behind a counting proxy, 1 store, 1 bus, {} coordinator(s), each its own process on loopback; {} cores.",
        kind.name(),
        deployment.coordinators.len(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "Each operation {} times one after another on coordinator 1 (after 10 unmeasured); etcd figures from its /metrics, S3 from the proxy, CPU from /proc. \
         rest = mean latency - etcd handling - S3 busy: the services and their gRPC hops.\n",
        args.ops
    );
    let mut rows = Vec::new();
    let kinds = [
        Op::Apply,
        Op::Checkpoint,
        Op::Fork,
        Op::Publish,
        Op::Create,
        Op::Close,
    ];
    for op in kinds {
        rows.push((op, measure(&deployment, &clients, op, args.ops).await?));
    }
    print_costs(&rows);
    if args.show_s3_requests {
        print_s3_requests(&deployment, &clients).await?;
    }
    let db = EtcdCounts::scrape(&deployment.etcd.metrics_endpoint(0)).await?;
    println!(
        "\netcd database after the runs: {:.1} MiB",
        db.db_size / 1_048_576.0
    );
    throughput_figures(&deployment, &channels, &args).await
}

/// A channel to every coordinator, and the clients the per-operation runs use (the first
/// coordinator, and the bus).
async fn connect(deployment: &Deployment) -> Result<(Vec<Channel>, Clients)> {
    let connect = |endpoint: String| async move {
        anyhow::Ok(
            tonic::transport::Endpoint::from_shared(endpoint)?
                .connect()
                .await?,
        )
    };
    let mut channels = Vec::new();
    for coordinator in &deployment.coordinators {
        channels.push(connect(coordinator.endpoint()).await?);
    }
    let clients = Clients {
        coordinator: channels[0].clone(),
        bus: connect(deployment.bus.endpoint()).await?,
    };
    Ok((channels, clients))
}

/// Lists the S3 requests of one more one-file ApplyChanges (after an unrecorded one).
async fn print_s3_requests(deployment: &Deployment, clients: &Clients) -> Result<()> {
    let session = new_session(&clients.coordinator).await?;
    write_one(&clients.coordinator, &session, next_tag()).await?;
    deployment.meter.record();
    write_one(&clients.coordinator, &session, next_tag()).await?;
    println!("\nS3 requests of one one-file ApplyChanges:");
    for line in deployment.meter.recorded() {
        println!("    {line}");
    }
    Ok(())
}

/// One-file batches on many sessions at once through the first coordinator, then through all
/// of them, with how the throughput scales.
async fn throughput_figures(
    deployment: &Deployment,
    channels: &[Channel],
    args: &Args,
) -> Result<()> {
    println!(
        "\nOne-file ApplyChanges on {} sessions at once for {} s:\n",
        args.sessions, args.seconds
    );
    println!(
        "| through | batches/s | p50 ms | p99 ms | refused, tried again | etcd fsyncs/s | CPU |"
    );
    println!("|---|---|---|---|---|---|---|");
    let one = throughput(deployment, &channels[..1], args.sessions, args.seconds).await?;
    print_throughput("coordinator 1", &one);
    if channels.len() > 1 {
        let all = throughput(deployment, channels, args.sessions, args.seconds).await?;
        print_throughput(
            &format!("{} coordinators, round robin", channels.len()),
            &all,
        );
        println!(
            "\n{} coordinators / 1: {:.2}x",
            channels.len(),
            (all.latencies.len() as f64 / all.wall.as_secs_f64())
                / (one.latencies.len() as f64 / one.wall.as_secs_f64())
        );
    }
    Ok(())
}
