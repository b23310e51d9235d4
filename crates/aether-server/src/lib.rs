//! `aetherd`: runs one AetherFS service as a process (`coordinator`, `store`, `bus`), or all
//! three in one process on embedded defaults (`dev`). Thin by design: parse configuration,
//! start telemetry, build each service, serve it with health and reflection, shut down
//! gracefully (stop accepting, drain, release leases).

pub mod admission;
pub mod limit_status;
pub mod rpc_telemetry;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aether_auth::{AttachToken, AuthArgs, AuthLayer, Authenticator, Need, Principal};
use aether_coord::{Coordination, EmbeddedCoordination, EtcdCoordination};
use aether_coordinator::gc::Collector;
use aether_coordinator::{CoordinatorArgs, EventSink};
use aether_store::backend::{BackendArgs, LocalSync};
use aether_store::{BlobStore, Blobs, Limits, RemoteBlobs};
use aether_tls::{ClientTls, TlsArgs};
use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic::transport::Channel;

/// Flags every service takes.
#[derive(Clone, Debug, clap::Args)]
pub struct CommonArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(
        long,
        env = "AETHER_LISTEN",
        default_value = "127.0.0.1:7600",
        global = true
    )]
    pub listen: SocketAddr,
    /// Exit when standard input closes (lets a supervising process take its children with it).
    #[arg(long, hide = true, global = true, env = "AETHER_EXIT_ON_STDIN_CLOSE")]
    pub exit_on_stdin_close: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// TLS: with --tls-cert and --tls-key this process serves TLS only, and its own calls to
    /// https:// endpoints trust --tls-ca.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Mutual TLS: CA bundle (PEM) whose client certificates are required of every caller.
    #[arg(long, env = "AETHER_TLS_CLIENT_CA", global = true)]
    pub tls_client_ca: Option<PathBuf>,
    /// Calls this process serves at once; past it calls are refused at once with
    /// RESOURCE_EXHAUSTED (health checks are always answered).
    #[arg(long, env = "AETHER_MAX_IN_FLIGHT", global = true, default_value_t = admission::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Uploads (WriteFile, ImportArchive, PutBlob) this process takes at once; past it they are
    /// refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AETHER_MAX_UPLOADS", global = true, default_value_t = admission::DEFAULT_MAX_UPLOADS)]
    pub max_uploads: usize,
    /// Reading streams (ReadFile, GetBlob, ExportArchive) this process keeps open at once,
    /// counted until each ends; past it they are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AETHER_MAX_READ_STREAMS", global = true, default_value_t = admission::DEFAULT_MAX_READ_STREAMS)]
    pub max_read_streams: usize,
    /// Subscriptions and publish streams this process keeps open at once, counted until each
    /// ends; past it they are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AETHER_MAX_SUBSCRIPTIONS", global = true, default_value_t = admission::DEFAULT_MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,
}

/// `aetherd store`.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreCommand {
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub limits: aether_store::LimitsArgs,
}

/// `aetherd bus`.
#[derive(Clone, Debug, clap::Args)]
pub struct BusCommand {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// etcd endpoints (comma-separated). With them, several bus nodes share the streams: each
    /// stream has one holder and any node forwards to it. Without them, one bus node only.
    #[arg(long, env = "AETHER_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Address other bus nodes use to reach this one (https:// with TLS); defaults to the listen
    /// address.
    #[arg(long, env = "AETHER_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Lease TTL of this node in seconds: how long a dead holder keeps its streams.
    #[arg(long, env = "AETHER_LEASE_TTL_SECS", default_value_t = 5)]
    pub lease_ttl_secs: u64,
    #[command(flatten)]
    pub bus: aether_bus::BusArgs,
}

/// `aetherd coordinator`.
#[derive(Clone, Debug, clap::Args)]
pub struct CoordinatorCommand {
    /// etcd endpoints, comma-separated (http://host:port).
    #[arg(
        long,
        env = "AETHER_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// Content store endpoint (http://host:port).
    #[arg(long, env = "AETHER_STORE_ENDPOINT")]
    pub store_endpoint: String,
    /// Bus endpoint (http://host:port); without it no session events are published.
    #[arg(long, env = "AETHER_BUS_ENDPOINT")]
    pub bus_endpoint: Option<String>,
    /// Address other coordinators use to reach this one (https:// with TLS); defaults to the
    /// listen address.
    #[arg(long, env = "AETHER_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// etcd's database quota (its --quota-backend-bytes), for members that do not report it
    /// (before etcd 3.6): aetherd warns once the database passes 80% of it.
    #[arg(long, env = "AETHER_ETCD_QUOTA_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub etcd_quota_bytes: u64,
    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
}

/// How often a coordinator reads etcd's database size.
const ETCD_SIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Share of the quota at which the coordinator warns.
const ETCD_WARN_RATIO: f64 = 0.8;

/// Reads etcd's database size now and every minute: a gauge (`aether.etcd.db_size_bytes`,
/// `aether.etcd.quota_used_ratio`), and a warning in the log past 80% of the quota, before
/// etcd refuses every write (NOSPACE alarm).
fn watch_etcd_size(
    coord: aether_coord::EtcdCoordination,
    quota_flag: u64,
    shutdown: CancellationToken,
) {
    let meter = opentelemetry::global::meter("aetherd");
    let size_gauge = meter
        .u64_gauge("aether.etcd.db_size_bytes")
        .with_description("size of etcd's database, as the member that answered reports it")
        .build();
    let ratio_gauge = meter
        .f64_gauge("aether.etcd.quota_used_ratio")
        .with_description("etcd's database size over its quota")
        .build();
    tokio::spawn(async move {
        loop {
            match coord.db_size().await {
                Ok((size, reported)) => {
                    let quota = if reported > 0 {
                        reported
                    } else {
                        quota_flag.max(1)
                    };
                    let ratio = size as f64 / quota as f64;
                    size_gauge.record(size, &[]);
                    ratio_gauge.record(ratio, &[]);
                    if ratio >= ETCD_WARN_RATIO {
                        tracing::warn!(
                            db_size_bytes = size,
                            quota_bytes = quota,
                            "etcd database at {:.0}% of its quota: etcd refuses all writes when \
                             it is full. Compact and defragment it (etcdctl defrag; run etcd with \
                             --auto-compaction-retention), or raise --quota-backend-bytes (and \
                             --etcd-quota-bytes here)",
                            ratio * 100.0
                        );
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read etcd's database size"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ETCD_SIZE_EVERY) => {}
            }
        }
    });
}

/// `aetherd dev` / `aether dev`: everything in one process on embedded defaults.
#[derive(Clone, Debug, clap::Args)]
pub struct DevCommand {
    /// Directory for all data (objects, coordination log, bus segments).
    #[arg(
        long = "data",
        env = "AETHER_DATA_DIR",
        default_value = "./aether-data"
    )]
    pub data: PathBuf,
    /// How local writes are made durable: `group` (one syncfs shared by concurrent writes) or
    /// `object` (an fsync per object; for a filesystem shared with heavy writers).
    #[arg(long, env = "AETHER_LOCAL_SYNC", value_enum, default_value = "group")]
    pub local_sync: LocalSync,
    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
    #[command(flatten)]
    pub gc: GcArgs,
    #[command(flatten)]
    pub bus: aether_bus::BusArgs,
}

/// `aetherd gc`: garbage collection for a cluster (design promise 7).
#[derive(Clone, Debug, clap::Args)]
pub struct GcCommand {
    /// etcd endpoints, comma-separated (http://host:port).
    #[arg(
        long,
        env = "AETHER_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub etcd_endpoints: Vec<String>,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub gc: GcArgs,
    /// Collect once and exit instead of every --gc-interval-secs.
    #[arg(long)]
    pub once: bool,
}

/// Garbage collection settings.
#[derive(Clone, Debug, clap::Args)]
pub struct GcArgs {
    /// Objects younger than this are never collected (at least 3600: protects uploads in
    /// flight and content a writer is reusing).
    #[arg(long, env = "AETHER_GC_GRACE_SECS", default_value_t = 3600)]
    pub gc_grace_secs: u64,
    /// Seconds between collections; 0 disables periodic collection.
    #[arg(long, env = "AETHER_GC_INTERVAL_SECS", default_value_t = 3600)]
    pub gc_interval_secs: u64,
}

/// Runs a collection every `interval` until `shutdown`.
fn collect_periodically(
    collector: Collector,
    store: BlobStore,
    args: GcArgs,
    shutdown: CancellationToken,
) {
    if args.gc_interval_secs == 0 {
        return;
    }
    let grace = std::time::Duration::from_secs(args.gc_grace_secs);
    let interval = std::time::Duration::from_secs(args.gc_interval_secs);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match aether_coordinator::gc::collect_with(&collector, &store, grace).await {
                Ok(report) => tracing::info!(?report, "garbage collection done"),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
        }
    });
}

async fn run_gc(cmd: GcCommand, shutdown: CancellationToken) -> Result<()> {
    let coord: Arc<dyn Coordination> = Arc::new(
        EtcdCoordination::connect(&cmd.etcd_endpoints)
            .await
            .context("cannot reach etcd")?,
    );
    let store = BlobStore::new(
        cmd.backend.build("objects").map_err(anyhow::Error::msg)?,
        Limits::default(),
    );
    // Reads only: the collector holds no session and registers no node, so no coordinator
    // ever routes a request to it and it never expires a session.
    let collector = Collector::new(coord, Arc::new(store.clone()));
    let grace = std::time::Duration::from_secs(cmd.gc.gc_grace_secs);
    if cmd.once {
        let report = aether_coordinator::gc::collect_with(&collector, &store, grace).await?;
        println!("{report:?}");
        return Ok(());
    }
    // scripts/local-cluster.sh waits for this line.
    tracing::info!(
        interval_secs = cmd.gc.gc_interval_secs,
        grace_secs = cmd.gc.gc_grace_secs,
        "garbage collector ready"
    );
    collect_periodically(collector, store, cmd.gc, shutdown.clone());
    shutdown.cancelled().await;
    Ok(())
}

/// Which service(s) to run.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Service {
    /// The session-coordinator (needs etcd, a store and optionally a bus).
    Coordinator(CoordinatorCommand),
    /// The content store.
    Store(StoreCommand),
    /// The bus.
    Bus(BusCommand),
    /// All three services in one process on embedded defaults.
    Dev(DevCommand),
    /// Garbage collection of unreachable content (cluster; `dev` collects by itself).
    Gc(GcCommand),
}

impl Service {
    fn name(&self) -> &'static str {
        match self {
            Service::Coordinator(_) => "coordinator",
            Service::Store(_) => "store",
            Service::Bus(_) => "bus",
            Service::Dev(_) => "dev",
            Service::Gc(_) => "gc",
        }
    }
}

/// Cancelled on SIGTERM, SIGINT, or (when asked) when stdin closes.
pub fn shutdown_signal(exit_on_stdin_close: bool) -> CancellationToken {
    let token = CancellationToken::new();
    let on_signal = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        on_signal.cancel();
    });
    if exit_on_stdin_close {
        // A plain thread, not tokio's stdin: tokio's blocking read would hold up runtime
        // shutdown until stdin produced data.
        let on_eof = token.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 64];
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            on_eof.cancel();
        });
    }
    token
}

/// Bus authorization from the coordinator's session records (the bus keeps none itself).
struct PolicyFromRecords {
    coord: Arc<dyn Coordination>,
    /// Check roles too; without auth (`--allow-anonymous`, `aetherd dev`) only existence is
    /// checked, so a subscriber to a session that does not exist hears NOT_FOUND at once.
    enforce: bool,
}

#[tonic::async_trait]
impl aether_bus::SessionAccess for PolicyFromRecords {
    fn enforces_roles(&self) -> bool {
        self.enforce
    }

    async fn check(
        &self,
        principal: &Principal,
        session_id: &str,
        need: Need,
    ) -> Result<(), tonic::Status> {
        use aether_auth::access::Decision;
        if principal.is_service() {
            return Ok(());
        }
        let key = aether_coordinator::model::session_key(session_id);
        let kv = self
            .coord
            .get(&key)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("cannot read session policy: {e}")))?
            .ok_or_else(|| tonic::Status::not_found(format!("session {session_id} not found")))?;
        if !self.enforce {
            return Ok(());
        }
        // A closed session's tombstone keeps its owner and policy: no store read here.
        let stored = aether_coordinator::tombstones::Stored::decode(&kv.value)
            .map_err(|e| tonic::Status::internal(format!("session record unreadable: {e}")))?;
        let (owner, policy) = stored.access();
        match aether_coordinator::caller::decide(principal, owner, policy, need) {
            Decision::Allowed => Ok(()),
            Decision::NoRole => Err(tonic::Status::not_found(format!(
                "session {session_id} not found"
            ))),
            Decision::Insufficient => Err(tonic::Status::permission_denied(format!(
                "{} may not do this on the bus of session {session_id}: it needs {}",
                principal.name,
                need.describe()
            ))),
        }
    }
}

/// Authentication of this process: who may call it, and the token it sends on its own calls.
struct Auth {
    authenticator: Authenticator,
    /// Whether per-session policy is enforced (an auth source is configured).
    enforced: bool,
    outgoing: AttachToken,
}

fn configure_auth(args: &AuthArgs, dev: bool) -> Result<Auth> {
    let mut args = args.clone();
    if dev && !args.has_source() {
        args.allow_anonymous = true;
    }
    let mut authenticator = Authenticator::from_args(&args).map_err(|e| anyhow::anyhow!("{e}"))?;
    let enforced = authenticator.has_source();
    if args.allow_anonymous {
        tracing::warn!(
            "ANONYMOUS ACCESS IS ON: any client without a token is let in as \"anonymous\"{}",
            if enforced {
                " (tokens are still checked and session policy applies)"
            } else {
                "; no auth source is configured, so session policy is not enforced. Pass --auth-token-file or a JWT key to require tokens"
            }
        );
        if dev && !enforced {
            eprintln!("WARNING: aetherd dev accepts anonymous clients and enforces no session policy (pass --auth-token-file to require tokens)");
        }
    }
    let mut outgoing = args.service_token().map_err(|e| anyhow::anyhow!("{e}"))?;
    if dev && enforced && outgoing.is_none() {
        // The coordinator reaches its own bus through the listener: give it a token.
        let token = uuid::Uuid::new_v4().simple().to_string();
        authenticator.add_token(
            token.clone(),
            Principal {
                name: "aether-dev".into(),
                groups: vec![aether_auth::SERVICE_GROUP.into()],
            },
        );
        outgoing = Some(token);
    }
    let outgoing = AttachToken::new(outgoing.as_deref()).map_err(anyhow::Error::msg)?;
    Ok(Auth {
        authenticator,
        enforced,
        outgoing,
    })
}

/// A channel to another service: connects on first use, and HTTP/2 keepalive finds a peer
/// that stopped answering (stopped, partitioned) within a few seconds, failing its calls
/// instead of leaving them hanging.
fn lazy_channel(endpoint: &str, tls: &ClientTls) -> Result<Channel> {
    Ok(aether_tls::endpoint(endpoint, tls)?
        .connect_timeout(std::time::Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(2))
        .keep_alive_timeout(std::time::Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Runs a service until `shutdown` is cancelled: settles authentication and TLS, listens,
/// builds what the service serves ([`Serving::build`]), serves it behind the process's
/// layers ([`serve`]) and, once shutdown starts, hands sessions and streams over.
pub async fn run(service: Service, common: CommonArgs, shutdown: CancellationToken) -> Result<()> {
    if let Service::Gc(cmd) = service {
        return run_gc(cmd, shutdown).await;
    }
    let auth = configure_auth(&common.auth, matches!(service, Service::Dev(_)))?;
    let Listening {
        server,
        listener,
        addr,
        node,
    } = listen(&common, &shutdown).await?;
    let mut serving = Serving::build(&service, &node, &auth).await?;
    serving.add_health_and_reflection().await?;
    if let Some(bus) = serving.bus.clone() {
        end_subscriptions_on_shutdown(bus, shutdown.clone());
    }

    // Tests and scripts wait for this exact line.
    println!("aetherd {} listening on {addr}", service.name());
    tracing::info!(service = service.name(), %addr, services = ?serving.served, "serving");
    let Serving {
        routes,
        served,
        sessions,
        bus,
        stream_holds,
    } = serving;
    let layers = Layers {
        known: known_methods(&served)?,
        authenticator: auth.authenticator,
        sessions: sessions.clone(),
        stream_holds: stream_holds.clone(),
        tls: node.tls,
        budgets: admission::Budgets {
            calls: common.max_in_flight,
            uploads: common.max_uploads,
            read_streams: common.max_read_streams,
            subscriptions: common.max_subscriptions,
        },
    };
    serve(server, listener, routes, layers, shutdown).await?;

    tracing::info!("stopped accepting; releasing sessions and flushing");
    if let Some(sessions) = sessions {
        sessions.release_all().await;
    }
    if let Some(bus) = bus {
        bus.shutdown().await;
    }
    if let Some(holds) = stream_holds {
        holds.release_all().await;
    }
    Ok(())
}

/// A bound listener with the server that will serve on it.
struct Listening {
    server: tonic::transport::Server,
    listener: TcpListener,
    addr: SocketAddr,
    node: Node,
}

/// Checks the TLS files (before anything starts), configures the server and binds
/// `--listen`.
async fn listen(common: &CommonArgs, shutdown: &CancellationToken) -> Result<Listening> {
    let tls = common.tls.client()?;
    let server_tls = common.tls.server(common.tls_client_ca.as_deref())?;
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut server = aether_proto::transport::tune_server(tonic::transport::Server::builder());
    if let Some(config) = server_tls {
        server = server
            .tls_config(config)
            .context("cannot serve TLS with --tls-cert and --tls-key")?;
    }
    let listener = TcpListener::bind(common.listen)
        .await
        .with_context(|| format!("cannot listen on {}", common.listen))?;
    let addr = listener.local_addr()?;
    let node = Node {
        own_endpoint: format!("{scheme}://{addr}"),
        scheme,
        tls,
        shutdown: shutdown.clone(),
    };
    Ok(Listening {
        server,
        listener,
        addr,
        node,
    })
}

/// Live subscriptions never end by themselves: end them as soon as shutdown starts so the
/// server's drain can finish (pending messages are flushed first).
fn end_subscriptions_on_shutdown(bus: aether_bus::Bus, shutdown: CancellationToken) {
    tokio::spawn(async move {
        shutdown.cancelled().await;
        bus.shutdown().await;
    });
}

/// What every service of this process shares: how others reach it, and when it stops.
struct Node {
    /// This listener's address, as a URL (`http://127.0.0.1:7000`).
    own_endpoint: String,
    /// "http" or "https".
    scheme: &'static str,
    /// How this node calls other nodes.
    tls: ClientTls,
    shutdown: CancellationToken,
}

impl Node {
    /// The address other nodes reach this one at: `flag` if given (it must speak what this
    /// node serves), else the listener's.
    fn advertised(&self, flag: &Option<String>) -> Result<String> {
        match flag {
            Some(address) if self.scheme == "https" && !address.starts_with("https://") => {
                anyhow::bail!("--advertise-addr {address} must be an https:// address: this node serves TLS (--tls-cert)")
            }
            Some(address) => Ok(address.clone()),
            None => Ok(self.own_endpoint.clone()),
        }
    }
}

/// The gRPC services of the coordinator.
const COORDINATOR_SERVICES: [&str; 5] = [
    "aetherfs.v1.SessionService",
    "aetherfs.v1.WorkspaceService",
    "aetherfs.v1.HistoryService",
    "aetherfs.v1.ReviewService",
    "aetherfs.v1.KnowledgeService",
];

/// What this process serves, as it is built.
#[derive(Default)]
struct Serving {
    routes: RoutesBuilder,
    /// The gRPC services served (health reports them).
    served: Vec<&'static str>,
    sessions: Option<Arc<aether_coordinator::Sessions>>,
    bus: Option<aether_bus::Bus>,
    stream_holds: Option<Arc<aether_bus::holders::StreamHolds>>,
}

impl Serving {
    async fn build(service: &Service, node: &Node, auth: &Auth) -> Result<Serving> {
        let mut serving = Serving::default();
        match service {
            Service::Store(cmd) => {
                let limits = cmd.limits.limits().map_err(anyhow::Error::msg)?;
                let objects = cmd.backend.build("objects").map_err(anyhow::Error::msg)?;
                serving.add_store(&BlobStore::new(objects, limits));
            }
            Service::Bus(cmd) => serving.add_bus_node(cmd, node, auth).await?,
            Service::Coordinator(cmd) => serving.add_coordinator_node(cmd, node, auth).await?,
            Service::Dev(cmd) => serving.add_dev(cmd, node, auth).await?,
            Service::Gc(_) => unreachable!("handled by run"),
        }
        Ok(serving)
    }

    fn add_store(&mut self, store: &BlobStore) {
        self.routes
            .add_service(aether_store::service::ContentGrpc::new(store.clone()).into_server());
        self.served.push("aetherfs.v1.ContentService");
    }

    /// Serves `bus`; with a coordination store it checks callers against the session records.
    fn add_bus(
        &mut self,
        bus: aether_bus::Bus,
        coord: Option<Arc<dyn Coordination>>,
        enforced: bool,
    ) -> aether_bus::Bus {
        match coord {
            Some(coord) => {
                self.routes
                    .add_service(bus.grpc_with_access(Arc::new(PolicyFromRecords {
                        coord,
                        enforce: enforced,
                    })));
            }
            None => {
                if enforced {
                    tracing::warn!("this bus has no coordination store (--etcd-endpoints): calls are authenticated but session policy is not checked");
                }
                self.routes.add_service(bus.grpc());
            }
        }
        self.served.push("aetherfs.v1.BusService");
        self.bus = Some(bus.clone());
        bus
    }

    /// A bus node of a cluster: with etcd, it holds its streams through leases.
    async fn add_bus_node(&mut self, cmd: &BusCommand, node: &Node, auth: &Auth) -> Result<()> {
        let objects = cmd.backend.build("bus").map_err(anyhow::Error::msg)?;
        let coord: Option<Arc<dyn Coordination>> = if cmd.etcd_endpoints.is_empty() {
            None
        } else {
            Some(Arc::new(
                EtcdCoordination::connect(&cmd.etcd_endpoints)
                    .await
                    .context("cannot reach etcd")?,
            ))
        };
        let bus = aether_bus::Bus::new(objects, cmd.bus.config());
        let bus = self.add_bus(bus, coord.clone(), auth.enforced);
        if let Some(coord) = coord {
            let address = node.advertised(&cmd.advertise_addr)?;
            // Unique per process start: pids and ports repeat across containers.
            let node_id = format!("bus-{}", uuid::Uuid::new_v4().simple());
            let holds = aether_bus::holders::StreamHolds::start(
                coord,
                bus,
                node_id,
                address,
                std::time::Duration::from_secs(cmd.lease_ttl_secs.max(1)),
            )
            .await
            .context("cannot start the bus lease")?;
            self.stream_holds = Some(holds);
        }
        Ok(())
    }

    /// A coordinator node of a cluster: etcd, a remote store, maybe a bus.
    async fn add_coordinator_node(
        &mut self,
        cmd: &CoordinatorCommand,
        node: &Node,
        auth: &Auth,
    ) -> Result<()> {
        let etcd = EtcdCoordination::connect(&cmd.etcd_endpoints)
            .await
            .context("cannot reach etcd")?;
        watch_etcd_size(etcd.clone(), cmd.etcd_quota_bytes, node.shutdown.clone());
        let coord: Arc<dyn Coordination> = Arc::new(etcd);
        let blobs: Arc<dyn Blobs> = Arc::new(RemoteBlobs::with_token(
            lazy_channel(&cmd.store_endpoint, &node.tls)?,
            &Limits::default(),
            auth.outgoing.clone(),
        ));
        let events = match &cmd.bus_endpoint {
            Some(endpoint) => EventSink::bus_with_token(
                lazy_channel(endpoint, &node.tls)?,
                auth.outgoing.clone(),
                cmd.coordinator.event_queue_depth,
            ),
            None => EventSink::disabled(),
        };
        let address = node.advertised(&cmd.advertise_addr)?;
        let sessions =
            aether_coordinator::start(coord, blobs, events, address, &cmd.coordinator).await?;
        self.add_coordinator(&sessions, &cmd.coordinator, auth);
        Ok(())
    }

    /// All three services in one process on the embedded defaults; the coordinator reaches
    /// the store in-process and the bus through this node's listener.
    async fn add_dev(&mut self, cmd: &DevCommand, node: &Node, auth: &Auth) -> Result<()> {
        std::fs::create_dir_all(&cmd.data)
            .with_context(|| format!("cannot create data directory {}", cmd.data.display()))?;
        let backend = BackendArgs {
            local_sync: cmd.local_sync,
            ..BackendArgs::local(cmd.data.clone())
        };
        let store = BlobStore::new(
            backend.build("objects").map_err(anyhow::Error::msg)?,
            Limits::default(),
        );
        self.add_store(&store);
        let coord: Arc<dyn Coordination> = Arc::new(
            EmbeddedCoordination::open(&cmd.data.join("coordination.log"))
                .context("cannot open the embedded coordination log")?,
        );
        let objects = backend.build("bus").map_err(anyhow::Error::msg)?;
        let bus = aether_bus::Bus::new(objects, cmd.bus.config());
        self.add_bus(bus, Some(coord.clone()), auth.enforced);
        let blobs: Arc<dyn Blobs> = Arc::new(store.clone());
        let events = EventSink::bus_with_token(
            lazy_channel(&node.own_endpoint, &node.tls)?,
            auth.outgoing.clone(),
            cmd.coordinator.event_queue_depth,
        );
        let sessions = aether_coordinator::start(
            coord,
            blobs,
            events,
            node.own_endpoint.clone(),
            &cmd.coordinator,
        )
        .await?;
        self.add_coordinator(&sessions, &cmd.coordinator, auth);
        collect_periodically(
            Collector::of(&sessions),
            store,
            cmd.gc.clone(),
            node.shutdown.clone(),
        );
        Ok(())
    }

    fn add_coordinator(
        &mut self,
        sessions: &Arc<aether_coordinator::Sessions>,
        args: &CoordinatorArgs,
        auth: &Auth,
    ) {
        let policy = aether_coordinator::CallerPolicy {
            trust_principal_header: args.trust_principal_header,
            enforce_policy: auth.enforced,
        };
        aether_coordinator::register(&mut self.routes, sessions, policy);
        self.served.extend(COORDINATOR_SERVICES);
        self.sessions = Some(sessions.clone());
    }

    /// grpc.health.v1 (every served service SERVING) and server reflection.
    async fn add_health_and_reflection(&mut self) -> Result<()> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        for name in &self.served {
            health_reporter
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        self.routes.add_service(health_service);
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(aether_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building reflection service")?;
        self.routes.add_service(reflection);
        Ok(())
    }
}

/// The RPCs metrics are labelled with: these services' methods only (paths come from callers).
fn known_methods(served: &[&'static str]) -> Result<rpc_telemetry::KnownMethods> {
    let mut known = served.to_vec();
    known.extend([
        tonic_health::pb::health_server::SERVICE_NAME,
        tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    ]);
    rpc_telemetry::KnownMethods::from_descriptor_sets(
        &known,
        &[
            aether_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ],
    )
    .map_err(anyhow::Error::msg)
}

/// What wraps every call of this process.
struct Layers {
    known: rpc_telemetry::KnownMethods,
    authenticator: Authenticator,
    sessions: Option<Arc<aether_coordinator::Sessions>>,
    stream_holds: Option<Arc<aether_bus::holders::StreamHolds>>,
    tls: ClientTls,
    budgets: admission::Budgets,
}

/// Serves `routes` on `listener` behind the process's layers until `shutdown`.
async fn serve(
    server: tonic::transport::Server,
    listener: TcpListener,
    routes: RoutesBuilder,
    layers: Layers,
    shutdown: CancellationToken,
) -> Result<()> {
    // Nagle off on every accepted connection: tonic ignores `Server::tcp_nodelay` for
    // `serve_with_incoming`, and small bus and metadata messages would wait ~40 ms for ACKs.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Changes to a session held by another coordinator are forwarded to it.
    let forward = layers.sessions.map(|s| {
        aether_coord::forward::ForwardLayer::new(
            s,
            aether_coordinator::routing::routes,
            layers.tls.clone(),
        )
    });
    // Bus requests for a stream held by another bus node are forwarded to it.
    let forward_bus = layers.stream_holds.map(|h| {
        aether_coord::forward::ForwardLayer::new(h, aether_bus::holders::routes, layers.tls.clone())
    });
    // Authentication runs first, before forwarding: a forwarded request carries the caller's
    // own authorization header and is authenticated again by the holder.
    let auth_layer = AuthLayer::new(Arc::new(layers.authenticator));
    server
        .tcp_nodelay(true)
        // Outermost: refused calls are counted, and everything inside runs in the RPC's span.
        .layer(rpc_telemetry::RpcTelemetryLayer::new(layers.known))
        // The caller's grpc-timeout bounds the calls each handler makes to other services.
        .layer(aether_auth::deadline::DeadlineLayer)
        // Oversized messages are RESOURCE_EXHAUSTED on every service, as counted above.
        .layer(limit_status::layer())
        // Past the process's budgets, calls are refused before any work.
        .layer(admission::AdmissionLayer::new(layers.budgets))
        .layer(auth_layer)
        .layer(tower::util::option_layer(forward))
        .layer(tower::util::option_layer(forward_bus))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await
        .context("server failed")
}
