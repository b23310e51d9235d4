//! The bus against `nats-server` core pub/sub, in one run on one machine (issue 6):
//!
//! - throughput: messages/s delivered to one subscriber while one publisher sends 100-byte
//!   messages as fast as it can (target: bus ≥ 0.5× NATS);
//! - latency: p50/p99 from just before publish to delivery, at a fixed 10,000 msgs/s paced
//!   open-loop by a thread of its own (target: bus p99 ≤ 2 ms).
//!
//! The bus is what `aetherd bus` serves: `Bus::grpc()` over a `LocalFileSystem` store in a
//! tempdir, behind a tonic server on 127.0.0.1 running on a runtime of its own (as its own
//! process would). Its clients are real gRPC clients on their own connections: the publisher
//! uses PublishStream and sends whatever its application queued (up to a full batch) as one
//! batch, the way the NATS client coalesces queued publishes into one write; the subscriber
//! uses Subscribe and, told it lagged, subscribes again from the offset it is given. Both
//! DURABILITY_ACCEPTED and DURABILITY_PERSISTED are measured. NATS is `nats-server` started on a
//! free port and driven by `async-nats`; core NATS is at-most-once, so what it drops is counted.
//!
//! Accepted sockets get TCP_NODELAY. `aetherd` asks for it (`Server::tcp_nodelay(true)`), but
//! tonic ignores that setting under `serve_with_incoming`, so `aetherd` itself runs with Nagle's
//! algorithm on: small responses then wait for the client's delayed ACK (p50 ≈ 1.5 ms instead
//! of ≈ 0.1 ms here). The bench measures the bus as `aetherd` means to serve it.
//!
//! `cargo bench -p aether-bus --bench bus_vs_nats`; env `AETHER_BENCH_REPETITIONS` (default 7),
//! `AETHER_BENCH_MESSAGES` (per throughput run, default 500000), `AETHER_BENCH_LATENCY_SECS`
//! (measured seconds per latency run after 0.5 s of warm-up, default 3). Repetitions interleave
//! the systems; the table gives the median and the range over them. Segments go to a tempdir
//! under `$TMPDIR`: how fast its filesystem creates files shows in the bus's tails (a
//! persisted stream at 10k msgs/s writes about 500 segments a second).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aether_bus::{Bus, BusConfig, MAX_BATCH_MESSAGES, MAX_GRPC_MESSAGE_BYTES};
use aether_proto::bus_service_client::BusServiceClient;
use aether_proto::{
    start_position, subscribe_response, Durability, OutgoingMessage, PublishStreamRequest,
    StartPosition, SubscribeRequest, SubscribeResponse,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::Streaming;

const PAYLOAD_BYTES: usize = 100;
const SUBJECT: &str = "bench.msg";
/// Messages per second of the latency runs.
const LATENCY_RATE: u64 = 10_000;
const WARM_UP: Duration = Duration::from_millis(500);
/// Publishes an application may queue in its client before `publish` waits: the default of the
/// NATS client (`client_capacity`), used for the bus publisher too.
const CLIENT_QUEUE: usize = 2048;
/// Batches the bus publisher hands to gRPC before it waits.
const BATCHES_QUEUED: usize = 16;
/// A subscriber that receives nothing for this long stops: the rest was lost.
const IDLE: Duration = Duration::from_secs(3);
const TARGET_RATIO: f64 = 0.5;
const TARGET_P99: Duration = Duration::from_millis(2);

/// Nanoseconds since the bench started: publishers stamp it into payloads, subscribers in the
/// same process subtract it from their clock.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn stamped_payload() -> Bytes {
    let mut payload = BytesMut::with_capacity(PAYLOAD_BYTES);
    payload.put_u64_le(now_ns());
    payload.resize(PAYLOAD_BYTES, b'x');
    payload.freeze()
}

fn stamp_of(payload: &[u8]) -> Result<u64> {
    let stamp = payload
        .get(..8)
        .context("a payload without its timestamp arrived")?;
    Ok(u64::from_le_bytes(stamp.try_into()?))
}

#[derive(Clone, Copy, PartialEq)]
enum System {
    Nats,
    Bus(Durability),
}

impl System {
    const ALL: [System; 3] = [
        System::Nats,
        System::Bus(Durability::Accepted),
        System::Bus(Durability::Persisted),
    ];

    fn label(self) -> &'static str {
        match self {
            System::Nats => "nats-server (core)",
            System::Bus(Durability::Accepted) => "bus ACCEPTED",
            System::Bus(_) => "bus PERSISTED",
        }
    }
}

/// Where the two servers listen.
struct Targets {
    nats: String,
    bus: SocketAddr,
}

async fn bus_client(addr: SocketAddr) -> Result<BusServiceClient<Channel>> {
    let channel =
        aether_proto::transport::tune_endpoint(Endpoint::from_shared(format!("http://{addr}"))?)
            .connect()
            .await
            .context("connecting to the bus")?;
    Ok(BusServiceClient::new(channel)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES))
}

async fn nats_client(addr: &str) -> Result<async_nats::Client> {
    async_nats::connect(addr)
        .await
        .with_context(|| format!("connecting to nats-server at {addr}"))
}

/// One publisher: the application calls `publish` per message.
enum Publisher {
    Nats(async_nats::Client),
    Bus {
        queue: mpsc::Sender<Bytes>,
        batcher: JoinHandle<Result<()>>,
        /// The stamp of every batch's first message and its publish→acknowledgement nanoseconds.
        acks: JoinHandle<Result<Vec<(u64, u64)>>>,
    },
}

impl Publisher {
    async fn connect(system: System, targets: &Targets, session: &str) -> Result<Publisher> {
        let durability = match system {
            System::Nats => return Ok(Publisher::Nats(nats_client(&targets.nats).await?)),
            System::Bus(durability) => durability,
        };
        let mut client = bus_client(targets.bus).await?;
        let (queue, mut queued) = mpsc::channel::<Bytes>(CLIENT_QUEUE);
        let (requests, outbound) = mpsc::channel(BATCHES_QUEUED);
        let (sent, mut unacked) = mpsc::unbounded_channel::<(u64, u64)>();
        let mut responses = client
            .publish_stream(ReceiverStream::new(outbound))
            .await?
            .into_inner();
        let session = session.to_string();
        let batcher = tokio::spawn(async move {
            let mut payloads = Vec::with_capacity(MAX_BATCH_MESSAGES);
            let mut batch_id = 0;
            while queued.recv_many(&mut payloads, MAX_BATCH_MESSAGES).await > 0 {
                sent.send((batch_id, stamp_of(&payloads[0])?))?;
                let messages = payloads
                    .drain(..)
                    .map(|payload| OutgoingMessage {
                        subject: SUBJECT.to_string(),
                        payload,
                        headers: Default::default(),
                    })
                    .collect();
                requests
                    .send(PublishStreamRequest {
                        session_id: session.clone(),
                        messages,
                        durability: durability as i32,
                        batch_id,
                    })
                    .await
                    .map_err(|_| anyhow!("the PublishStream call ended early"))?;
                batch_id += 1;
            }
            Ok(())
        });
        let acks = tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(ack) = responses.message().await? {
                let now = now_ns();
                let (batch_id, stamp) = unacked.recv().await.context("ack of an unsent batch")?;
                ensure!(ack.batch_id == batch_id, "acknowledgements out of order");
                latencies.push((stamp, now - stamp));
            }
            Ok(latencies)
        });
        Ok(Publisher::Bus {
            queue,
            batcher,
            acks,
        })
    }

    async fn publish(&self, payload: Bytes) -> Result<()> {
        match self {
            Publisher::Nats(client) => client.publish(SUBJECT, payload).await?,
            Publisher::Bus { queue, .. } => queue
                .send(payload)
                .await
                .map_err(|_| anyhow!("the bus publisher stopped"))?,
        }
        Ok(())
    }

    /// Sends what is queued; for the bus, waits for every acknowledgement and returns each
    /// batch's first stamp and acknowledgement latency.
    async fn finish(self) -> Result<Vec<(u64, u64)>> {
        match self {
            Publisher::Nats(client) => {
                client.flush().await?;
                Ok(Vec::new())
            }
            Publisher::Bus {
                queue,
                batcher,
                acks,
            } => {
                drop(queue);
                batcher.await??;
                acks.await?
            }
        }
    }
}

/// One subscriber, subscribed before anything is published.
enum Subscriber {
    Nats {
        _client: async_nats::Client,
        subscription: async_nats::Subscriber,
    },
    Bus {
        client: BusServiceClient<Channel>,
        session: String,
        // Boxed: a Streaming is much larger than the NATS variant.
        stream: Box<Streaming<SubscribeResponse>>,
    },
}

/// What a subscriber received.
#[derive(Default)]
struct Received {
    count: u64,
    last_at: u64,
    /// Publish→deliver nanoseconds of the messages stamped at or after `record_from`.
    latencies: Vec<u64>,
    /// Times the bus said the subscriber lagged (it then subscribed again where it left off).
    lagged: u64,
}

impl Received {
    fn take(&mut self, payload: &[u8], record_from: Option<u64>) -> Result<()> {
        let now = now_ns();
        self.count += 1;
        self.last_at = now;
        if let Some(from) = record_from {
            let stamp = stamp_of(payload)?;
            if stamp >= from {
                self.latencies.push(now - stamp);
            }
        }
        Ok(())
    }
}

fn subscribe_request(session: &str, offset: u64) -> SubscribeRequest {
    SubscribeRequest {
        session_id: session.to_string(),
        start: Some(StartPosition {
            position: Some(start_position::Position::Offset(offset)),
        }),
        subject_filter: String::new(),
    }
}

impl Subscriber {
    async fn open(system: System, targets: &Targets, session: &str) -> Result<Subscriber> {
        match system {
            System::Nats => {
                let client = nats_client(&targets.nats).await?;
                let subscription = client.subscribe(SUBJECT).await?;
                // The server has the subscription once it answers a ping after it.
                client.flush().await?;
                Ok(Subscriber::Nats {
                    _client: client,
                    subscription,
                })
            }
            System::Bus(_) => {
                let mut client = bus_client(targets.bus).await?;
                // A fresh session: its first offset is 1. The call returns once subscribed.
                let stream = client
                    .subscribe(subscribe_request(session, 1))
                    .await?
                    .into_inner();
                Ok(Subscriber::Bus {
                    client,
                    session: session.to_string(),
                    stream: Box::new(stream),
                })
            }
        }
    }

    /// Receives until `expected` messages arrived or none came for [`IDLE`].
    async fn run(self, expected: u64, record_from: Option<u64>) -> Result<Received> {
        let mut received = Received::default();
        match self {
            Subscriber::Nats {
                _client,
                mut subscription,
            } => {
                while received.count < expected {
                    match tokio::time::timeout(IDLE, subscription.next()).await {
                        Ok(Some(message)) => received.take(&message.payload, record_from)?,
                        Ok(None) => bail!("the NATS subscription ended"),
                        Err(_) => break,
                    }
                }
            }
            Subscriber::Bus {
                mut client,
                session,
                mut stream,
            } => {
                let mut next = 1;
                while received.count < expected {
                    let response = match tokio::time::timeout(IDLE, stream.message()).await {
                        Ok(response) => response?.context("the bus subscription ended")?,
                        Err(_) => break,
                    };
                    match response.event.context("an empty SubscribeResponse")? {
                        subscribe_response::Event::Message(message) => {
                            ensure!(
                                message.offset == next,
                                "offset {} arrived where {next} was due",
                                message.offset
                            );
                            next += 1;
                            received.take(&message.payload, record_from)?;
                        }
                        subscribe_response::Event::Lagged(lagged) => {
                            ensure!(lagged.resume_offset == next, "lagged at the wrong offset");
                            received.lagged += 1;
                            *stream = client
                                .subscribe(subscribe_request(&session, next))
                                .await?
                                .into_inner();
                        }
                    }
                }
            }
        }
        Ok(received)
    }
}

struct ThroughputSample {
    /// Messages delivered per second, from the first publish to the last delivery.
    rate: f64,
    lost: u64,
    lagged: u64,
}

async fn throughput(
    system: System,
    targets: &Targets,
    session: &str,
    count: u64,
) -> Result<ThroughputSample> {
    let subscriber = Subscriber::open(system, targets, session).await?;
    let publisher = Publisher::connect(system, targets, session).await?;
    let consumer = tokio::spawn(subscriber.run(count, None));
    let start = now_ns();
    for _ in 0..count {
        publisher.publish(stamped_payload()).await?;
    }
    publisher.finish().await?;
    let received = consumer.await??;
    ensure!(
        received.count > 0,
        "{}: nothing was delivered",
        system.label()
    );
    Ok(ThroughputSample {
        rate: received.count as f64 / ((received.last_at - start) as f64 / 1e9),
        lost: count - received.count,
        lagged: received.lagged,
    })
}

struct LatencySample {
    p50: u64,
    p99: u64,
    /// p90, p99.9 and the maximum, for the per-run detail.
    detail: [u64; 3],
    ack_p50: Option<u64>,
    ack_p99: Option<u64>,
    /// Messages per second the pacing thread achieved.
    sent_rate: f64,
    lost: u64,
    lagged: u64,
}

/// The value at `quantile` of sorted samples (nearest rank).
fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn latency(
    system: System,
    targets: &Targets,
    session: &str,
    measured: Duration,
) -> Result<LatencySample> {
    let total = LATENCY_RATE * (WARM_UP + measured).as_millis() as u64 / 1000;
    let interval = Duration::from_nanos(1_000_000_000 / LATENCY_RATE);
    let subscriber = Subscriber::open(system, targets, session).await?;
    let publisher = Publisher::connect(system, targets, session).await?;
    let record_from = now_ns() + WARM_UP.as_nanos() as u64;
    let consumer = tokio::spawn(subscriber.run(total, Some(record_from)));
    // Paced by a thread of its own, open-loop: a late send does not delay the next ones. The
    // tokio timer ticks in milliseconds, too coarse for one message per 100 µs.
    let runtime = tokio::runtime::Handle::current();
    let (publisher, sent_rate) = tokio::task::spawn_blocking(move || -> Result<_> {
        let start = Instant::now();
        for i in 0..total {
            let due = start + interval * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            runtime.block_on(publisher.publish(stamped_payload()))?;
        }
        Ok((publisher, total as f64 / start.elapsed().as_secs_f64()))
    })
    .await??;
    // Batches of the warm-up are left out like their messages.
    let mut acks: Vec<u64> = publisher
        .finish()
        .await?
        .into_iter()
        .filter(|&(stamp, _)| stamp >= record_from)
        .map(|(_, latency)| latency)
        .collect();
    let mut received = consumer.await??;
    ensure!(
        !received.latencies.is_empty(),
        "{}: nothing was delivered",
        system.label()
    );
    received.latencies.sort_unstable();
    acks.sort_unstable();
    let ack_percentiles =
        (!acks.is_empty()).then(|| (percentile(&acks, 0.50), percentile(&acks, 0.99)));
    Ok(LatencySample {
        p50: percentile(&received.latencies, 0.50),
        p99: percentile(&received.latencies, 0.99),
        detail: [
            percentile(&received.latencies, 0.90),
            percentile(&received.latencies, 0.999),
            percentile(&received.latencies, 1.0),
        ],
        ack_p50: ack_percentiles.map(|(p50, _)| p50),
        ack_p99: ack_percentiles.map(|(_, p99)| p99),
        sent_rate,
        lost: total - received.count,
        lagged: received.lagged,
    })
}

/// `nats-server` on a free loopback port, stopped on drop.
struct NatsServer {
    child: Child,
    addr: String,
    version: String,
}

impl NatsServer {
    fn start(log: PathBuf) -> Result<NatsServer> {
        let binary = ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
            .into_iter()
            .map(PathBuf::from)
            .chain(
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths),
            )
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
            .context(
                "nats-server is not installed: apt-get install nats-server \
                 (scripts/install-deps.sh installs it too)",
            )?;
        let version = Command::new(&binary).arg("--version").output()?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A file, not a pipe: slow-consumer warnings must never block the server.
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = NatsServer {
            child,
            addr: format!("127.0.0.1:{port}"),
            version,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&server.addr).is_err() {
            let log = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(status) = server.child.try_wait()? {
                bail!("nats-server exited ({status}):\n{}", log());
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not listen on {} in 10 s:\n{}",
                    server.addr,
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bus as `aetherd bus` serves it, on a runtime of its own standing in for its process.
fn start_bus(data: PathBuf) -> Result<(Runtime, Bus, SocketAddr)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("aetherd-bus")
        .enable_all()
        .build()?;
    let objects = std::sync::Arc::new(LocalFileSystem::new_with_prefix(&data)?);
    let bus = Bus::new(objects, BusConfig::default());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(
        aether_proto::transport::tune_server(Server::builder())
            .add_service(bus.grpc())
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    Ok((runtime, bus, addr))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median and range of samples.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(samples: impl IntoIterator<Item = f64>) -> Spread {
    let mut samples: Vec<f64> = samples.into_iter().collect();
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    };
    Spread {
        median,
        min: samples[0],
        max: samples[n - 1],
    }
}

fn rate_cell(s: &Spread) -> String {
    format!(
        "{:>9.0} [{:.0}–{:.0}]",
        s.median,
        s.min.round(),
        s.max.round()
    )
}

fn ratio_cell(s: &Spread) -> String {
    format!("{:.2}× [{:.2}–{:.2}]", s.median, s.min, s.max)
}

fn micros_cell(s: &Spread) -> String {
    format!("{:>6.0} [{:.0}–{:.0}]", s.median, s.min, s.max)
}

/// The run's parameters, from the environment.
struct Settings {
    repetitions: usize,
    /// Messages per throughput run.
    messages: u64,
    /// Measured time per latency run, after the warm-up.
    measured: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            repetitions: env_or("AETHER_BENCH_REPETITIONS", 7).max(1),
            messages: env_or("AETHER_BENCH_MESSAGES", 500_000).max(1),
            measured: Duration::from_secs_f64(
                env_or("AETHER_BENCH_LATENCY_SECS", 3.0_f64).max(0.1),
            ),
        }
    }
}

/// Every repetition's samples, indexed by system (in [`System::ALL`] order), then repetition.
struct Samples {
    repetitions: usize,
    rates: Vec<Vec<ThroughputSample>>,
    latencies: Vec<Vec<LatencySample>>,
}

impl Samples {
    /// Runs every repetition: throughput of each system, then latency of each, the systems
    /// interleaved.
    async fn measure(targets: &Targets, settings: &Settings) -> Result<Samples> {
        let mut samples = Samples {
            repetitions: settings.repetitions,
            rates: System::ALL.iter().map(|_| Vec::new()).collect(),
            latencies: System::ALL.iter().map(|_| Vec::new()).collect(),
        };
        for rep in 0..settings.repetitions {
            for (i, system) in System::ALL.into_iter().enumerate() {
                let session = format!("bench-throughput-{i}-{rep}");
                let sample = throughput(system, targets, &session, settings.messages).await?;
                eprintln!(
                    "  rep {rep} throughput {:<20} {:>9.0} msgs/s (lost {}, lagged {})",
                    system.label(),
                    sample.rate,
                    sample.lost,
                    sample.lagged
                );
                samples.rates[i].push(sample);
            }
            for (i, system) in System::ALL.into_iter().enumerate() {
                let session = format!("bench-latency-{i}-{rep}");
                let sample = latency(system, targets, &session, settings.measured).await?;
                eprintln!(
                    "  rep {rep} latency    {:<20} p50 {:>5} µs, p90 {:>5} µs, p99 {:>5} µs, p99.9 {:>6} µs, max {:>6} µs (sent {:.0}/s, lost {}, lagged {})",
                    system.label(),
                    sample.p50 / 1000,
                    sample.detail[0] / 1000,
                    sample.p99 / 1000,
                    sample.detail[1] / 1000,
                    sample.detail[2] / 1000,
                    sample.sent_rate,
                    sample.lost,
                    sample.lagged
                );
                samples.latencies[i].push(sample);
            }
        }
        Ok(samples)
    }

    /// System `i`'s figure `of` over NATS's, per repetition. Ratios are taken per repetition,
    /// where both systems ran seconds apart on the same machine, so noise that hits a whole
    /// repetition cancels out.
    fn ratios(&self, i: usize, of: impl Fn(usize, usize) -> f64) -> Spread {
        spread((0..self.repetitions).map(|rep| of(i, rep) / of(0, rep)))
    }

    fn rate_ratios(&self, i: usize) -> Spread {
        self.ratios(i, |i, rep| self.rates[i][rep].rate)
    }

    fn p99_ratios(&self, i: usize) -> Spread {
        self.ratios(i, |i, rep| self.latencies[i][rep].p99 as f64)
    }

    /// The median over the repetitions of system `i`'s publish→deliver p99, in µs.
    fn p99_median(&self, i: usize) -> f64 {
        spread(self.latencies[i].iter().map(|s| micros(s.p99))).median
    }

    fn print_throughput(&self) {
        println!();
        println!("throughput, messages/s delivered: median [min–max] over the repetitions");
        println!(
            "  {:<20} {:>28} {:>20} {:>16} {:>18}",
            "system", "msgs/s", "× NATS", "lost (all runs)", "lagged (all runs)"
        );
        for (i, system) in System::ALL.into_iter().enumerate() {
            let rates = &self.rates[i];
            println!(
                "  {:<20} {:>28} {:>20} {:>16} {:>18}",
                system.label(),
                rate_cell(&spread(rates.iter().map(|s| s.rate))),
                ratio_cell(&self.rate_ratios(i)),
                rates.iter().map(|s| s.lost).sum::<u64>(),
                rates.iter().map(|s| s.lagged).sum::<u64>(),
            );
        }
    }

    fn print_latency(&self) {
        println!();
        println!(
            "latency at {LATENCY_RATE} msgs/s, µs: median [min–max] over the repetitions of each run's percentile"
        );
        println!(
            "  {:<20} {:>20} {:>20} {:>20} {:>20} {:>20} {:>5}",
            "system",
            "publish→deliver p50",
            "publish→deliver p99",
            "p99 × NATS",
            "publish→ack p50",
            "publish→ack p99",
            "lost"
        );
        for (i, system) in System::ALL.into_iter().enumerate() {
            let samples = &self.latencies[i];
            let ack = |pick: fn(&LatencySample) -> Option<u64>| {
                if samples.iter().all(|s| pick(s).is_some()) {
                    micros_cell(&spread(samples.iter().filter_map(|s| pick(s).map(micros))))
                } else {
                    "—".to_string()
                }
            };
            println!(
                "  {:<20} {:>20} {:>20} {:>20} {:>20} {:>20} {:>5}",
                system.label(),
                micros_cell(&spread(samples.iter().map(|s| micros(s.p50)))),
                micros_cell(&spread(samples.iter().map(|s| micros(s.p99)))),
                ratio_cell(&self.p99_ratios(i)),
                ack(|s| s.ack_p50),
                ack(|s| s.ack_p99),
                samples.iter().map(|s| s.lost).sum::<u64>(),
            );
        }
    }

    fn print_verdicts(&self) {
        println!();
        // The targets are for the bus as a high-rate publisher uses it (DURABILITY_ACCEPTED);
        // PERSISTED is held to the same marks for comparison.
        let nats_p99 = self.p99_median(0);
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        for (i, system) in System::ALL.into_iter().enumerate().skip(1) {
            let ratio = self.rate_ratios(i).median;
            let p99 = self.p99_median(i);
            println!(
                "{} {:<14} throughput {ratio:.2}× NATS (≥ {TARGET_RATIO}×: {}), \
                 p99 {:.2} ms (≤ {} ms: {}; nats-server's own p99 here: {:.2} ms)",
                if i == 1 { "targets:  " } else { "also:     " },
                system.label(),
                verdict(ratio >= TARGET_RATIO),
                p99 / 1000.0,
                TARGET_P99.as_millis(),
                verdict(p99 <= TARGET_P99.as_micros() as f64),
                nats_p99 / 1000.0,
            );
        }
    }
}

/// Nanoseconds as microseconds.
fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn print_setup(settings: &Settings, nats_version: &str) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "bus_vs_nats: {} repetitions; {PAYLOAD_BYTES}-byte messages, 1 publisher, 1 subscriber; \
         {} messages per throughput run; {:.1} s at {LATENCY_RATE} msgs/s per latency run \
         (+{} ms warm-up); {cpus} CPUs shared by servers and clients, so expect noise; {}",
        settings.repetitions,
        settings.messages,
        settings.measured.as_secs_f64(),
        WARM_UP.as_millis(),
        nats_version,
    );
}

fn main() -> Result<()> {
    // `cargo test --benches` runs bench binaries without `--bench`: nothing to check then.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("bus_vs_nats: run it with `cargo bench -p aether-bus --bench bus_vs_nats`");
        return Ok(());
    }
    let settings = Settings::from_env();

    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(dir.path().join("nats-server.log"))?;
    let data = dir.path().join("bus");
    std::fs::create_dir_all(&data)?;
    let (server, bus, bus_addr) = start_bus(data)?;
    let targets = Targets {
        nats: nats.addr.clone(),
        bus: bus_addr,
    };
    print_setup(&settings, &nats.version);

    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let samples = client.block_on(Samples::measure(&targets, &settings))?;
    client.block_on(bus.shutdown());
    server.shutdown_background();
    drop(nats);

    samples.print_throughput();
    samples.print_latency();
    samples.print_verdicts();
    Ok(())
}
