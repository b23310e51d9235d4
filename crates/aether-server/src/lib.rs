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
        use aether_auth::access::{decide, Decision};
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
        let record: aether_coordinator::model::SessionRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| tonic::Status::internal(format!("session record unreadable: {e}")))?;
        let bindings = record
            .policy
            .bindings
            .iter()
            .map(|b| (b.subject.as_str(), b.role));
        match decide(principal, &record.owner, bindings, need) {
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

/// Runs a service until `shutdown` is cancelled.
pub async fn run(service: Service, common: CommonArgs, shutdown: CancellationToken) -> Result<()> {
    if let Service::Gc(cmd) = service {
        return run_gc(cmd, shutdown).await;
    }
    let auth = configure_auth(&common.auth, matches!(service, Service::Dev(_)))?;
    // TLS files are checked before anything starts.
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
    let own_endpoint = format!("{scheme}://{addr}");
    // Other nodes reach this one at this address: it must speak what this node serves.
    let advertised = |flag: &Option<String>| -> Result<String> {
        match flag {
            Some(address) if scheme == "https" && !address.starts_with("https://") => {
                anyhow::bail!("--advertise-addr {address} must be an https:// address: this node serves TLS (--tls-cert)")
            }
            Some(address) => Ok(address.clone()),
            None => Ok(own_endpoint.clone()),
        }
    };
    let mut routes = RoutesBuilder::default();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let mut served: Vec<&'static str> = Vec::new();
    let mut sessions = None;
    let mut bus = None;
    let mut stream_holds: Option<Arc<aether_bus::holders::StreamHolds>> = None;

    let add_store = |routes: &mut RoutesBuilder,
                     store: &BlobStore,
                     served: &mut Vec<&'static str>| {
        routes.add_service(aether_store::service::ContentGrpc::new(store.clone()).into_server());
        served.push("aetherfs.v1.ContentService");
    };
    let enforced = auth.enforced;
    let add_bus = |routes: &mut RoutesBuilder,
                   objects,
                   config: aether_bus::BusConfig,
                   coord: Option<Arc<dyn Coordination>>,
                   served: &mut Vec<&'static str>| {
        let b = aether_bus::Bus::new(objects, config);
        match coord {
            Some(coord) => {
                routes.add_service(b.grpc_with_access(Arc::new(PolicyFromRecords {
                    coord,
                    enforce: enforced,
                })));
            }
            None => {
                if enforced {
                    tracing::warn!("this bus has no coordination store (--etcd-endpoints): calls are authenticated but session policy is not checked");
                }
                routes.add_service(b.grpc());
            }
        }
        served.push("aetherfs.v1.BusService");
        b
    };
    let coordinator_services = [
        "aetherfs.v1.SessionService",
        "aetherfs.v1.WorkspaceService",
        "aetherfs.v1.HistoryService",
        "aetherfs.v1.ReviewService",
        "aetherfs.v1.KnowledgeService",
    ];

    match &service {
        Service::Store(cmd) => {
            let limits = cmd.limits.limits().map_err(anyhow::Error::msg)?;
            let objects = cmd.backend.build("objects").map_err(anyhow::Error::msg)?;
            add_store(&mut routes, &BlobStore::new(objects, limits), &mut served);
        }
        Service::Bus(cmd) => {
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
            let b = add_bus(
                &mut routes,
                objects,
                cmd.bus.config(),
                coord.clone(),
                &mut served,
            );
            if let Some(coord) = coord {
                let address = advertised(&cmd.advertise_addr)?;
                // Unique per process start: pids and ports repeat across containers.
                let node_id = format!("bus-{}", uuid::Uuid::new_v4().simple());
                let holds = aether_bus::holders::StreamHolds::start(
                    coord,
                    b.clone(),
                    node_id,
                    address,
                    std::time::Duration::from_secs(cmd.lease_ttl_secs.max(1)),
                )
                .await
                .context("cannot start the bus lease")?;
                stream_holds = Some(holds);
            }
            bus = Some(b);
        }
        Service::Coordinator(cmd) => {
            let etcd = EtcdCoordination::connect(&cmd.etcd_endpoints)
                .await
                .context("cannot reach etcd")?;
            watch_etcd_size(etcd.clone(), cmd.etcd_quota_bytes, shutdown.clone());
            let coord: Arc<dyn Coordination> = Arc::new(etcd);
            let blobs: Arc<dyn Blobs> = Arc::new(RemoteBlobs::with_token(
                lazy_channel(&cmd.store_endpoint, &tls)?,
                &Limits::default(),
                auth.outgoing.clone(),
            ));
            let events = match &cmd.bus_endpoint {
                Some(endpoint) => EventSink::bus_with_token(
                    lazy_channel(endpoint, &tls)?,
                    auth.outgoing.clone(),
                    cmd.coordinator.event_queue_depth,
                ),
                None => EventSink::disabled(),
            };
            let address = advertised(&cmd.advertise_addr)?;
            let s =
                aether_coordinator::start(coord, blobs, events, address, &cmd.coordinator).await?;
            let policy = aether_coordinator::CallerPolicy {
                trust_principal_header: cmd.coordinator.trust_principal_header,
                enforce_policy: auth.enforced,
            };
            aether_coordinator::register(&mut routes, &s, policy);
            served.extend(coordinator_services);
            sessions = Some(s);
        }
        Service::Dev(cmd) => {
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
            add_store(&mut routes, &store, &mut served);
            let coord: Arc<dyn Coordination> = Arc::new(
                EmbeddedCoordination::open(&cmd.data.join("coordination.log"))
                    .context("cannot open the embedded coordination log")?,
            );
            bus = Some(add_bus(
                &mut routes,
                backend.build("bus").map_err(anyhow::Error::msg)?,
                cmd.bus.config(),
                Some(coord.clone()),
                &mut served,
            ));
            // The coordinator reaches the store in-process and the bus through this listener.
            let blobs: Arc<dyn Blobs> = Arc::new(store.clone());
            let events = EventSink::bus_with_token(
                lazy_channel(&own_endpoint, &tls)?,
                auth.outgoing,
                cmd.coordinator.event_queue_depth,
            );
            let s = aether_coordinator::start(
                coord,
                blobs,
                events,
                own_endpoint.clone(),
                &cmd.coordinator,
            )
            .await?;
            let policy = aether_coordinator::CallerPolicy {
                trust_principal_header: cmd.coordinator.trust_principal_header,
                enforce_policy: auth.enforced,
            };
            aether_coordinator::register(&mut routes, &s, policy);
            served.extend(coordinator_services);
            collect_periodically(Collector::of(&s), store, cmd.gc.clone(), shutdown.clone());
            sessions = Some(s);
        }
        Service::Gc(_) => unreachable!("handled above"),
    }

    for name in &served {
        health_reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    routes.add_service(health_service);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aether_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection service")?;
    routes.add_service(reflection);

    // Live subscriptions never end by themselves: end them as soon as shutdown starts so the
    // server's drain can finish (pending messages are flushed first).
    if let Some(bus) = bus.clone() {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            bus.shutdown().await;
        });
    }

    // Tests and scripts wait for this exact line.
    println!("aetherd {} listening on {addr}", service.name());
    tracing::info!(service = service.name(), %addr, services = ?served, "serving");

    // Nagle off on every accepted connection: tonic ignores `Server::tcp_nodelay` for
    // `serve_with_incoming`, and small bus and metadata messages would wait ~40 ms for ACKs.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Changes to a session held by another coordinator are forwarded to it.
    let forward = sessions.clone().map(|s| {
        aether_coord::forward::ForwardLayer::new(
            s,
            aether_coordinator::routing::routes,
            tls.clone(),
        )
    });
    // Bus requests for a stream held by another bus node are forwarded to it.
    let forward_bus = stream_holds.clone().map(|h| {
        aether_coord::forward::ForwardLayer::new(h, aether_bus::holders::routes, tls.clone())
    });
    // Authentication runs first, before forwarding: a forwarded request carries the caller's
    // own authorization header and is authenticated again by the holder.
    let auth_layer = AuthLayer::new(Arc::new(auth.authenticator));
    // Metrics are labelled with these services' methods only: paths come from callers.
    let mut known = served.clone();
    known.extend([
        tonic_health::pb::health_server::SERVICE_NAME,
        tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    ]);
    let known = rpc_telemetry::KnownMethods::from_descriptor_sets(
        &known,
        &[
            aether_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ],
    )
    .map_err(anyhow::Error::msg)?;
    server
        .tcp_nodelay(true)
        // Outermost: refused calls are counted, and everything inside runs in the RPC's span.
        .layer(rpc_telemetry::RpcTelemetryLayer::new(known))
        // The caller's grpc-timeout bounds the calls each handler makes to other services.
        .layer(aether_auth::deadline::DeadlineLayer)
        // Oversized messages are RESOURCE_EXHAUSTED on every service, as counted above.
        .layer(limit_status::layer())
        // Past the process's budgets, calls are refused before any work.
        .layer(admission::AdmissionLayer::new(
            common.max_in_flight,
            common.max_uploads,
        ))
        .layer(auth_layer)
        .layer(tower::util::option_layer(forward))
        .layer(tower::util::option_layer(forward_bus))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await
        .context("server failed")?;

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
