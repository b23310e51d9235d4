//! A whole AetherFS deployment on real dependencies: etcd, an S3 server (moto unless
//! [`ClusterSpec::s3`] says otherwise), and `aetherd` processes for stores, buses and
//! coordinators, each on its own loopback port.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::etcd::EtcdCluster;
use crate::locate::aetherd_path;
use crate::s3::{S3Kind, S3Server};
use crate::service::ServiceProcess;
use crate::tls::{TestCa, TlsMode};

/// How many of each part [`Cluster::start`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    pub coordinators: usize,
    pub stores: usize,
    pub buses: usize,
    pub etcd_members: usize,
    /// `--lease-ttl-secs` of the coordinators and buses (their default when None).
    pub lease_ttl_secs: Option<u64>,
    /// TLS between clients and services and between services, with a CA made for the test.
    pub tls: TlsMode,
    /// An OTLP/gRPC collector every process exports its spans and metrics to, with export
    /// delays short enough for a test to wait on.
    pub otlp_endpoint: Option<SocketAddr>,
    /// The S3 server: moto (the default, atomic conditional creates) for tests, s3s-fs for
    /// benchmarks that should measure AetherFS rather than moto.
    pub s3: S3Kind,
}

impl Default for ClusterSpec {
    /// One of each.
    fn default() -> Self {
        Self {
            coordinators: 1,
            stores: 1,
            buses: 1,
            etcd_members: 1,
            lease_ttl_secs: None,
            tls: TlsMode::Off,
            otlp_endpoint: None,
            s3: S3Kind::Moto,
        }
    }
}

/// A running cluster; every process is killed and every temp dir removed on drop.
pub struct Cluster {
    pub etcd: EtcdCluster,
    pub s3: S3Server,
    pub stores: Vec<ServiceProcess>,
    pub buses: Vec<ServiceProcess>,
    pub coordinators: Vec<ServiceProcess>,
    /// The test CA and certificates, unless `tls` is [`TlsMode::Off`]. Declared last: the
    /// processes are killed before the files go.
    pub tls: Option<TestCa>,
}

impl Cluster {
    /// Starts etcd and the S3 server (concurrently), then the stores, the buses, and the
    /// coordinators:
    /// - stores: `aetherd store <s3 args>`
    /// - buses: `aetherd bus <s3 args> --etcd-endpoints <all>`
    /// - coordinators: `aetherd coordinator --etcd-endpoints <all> --store-endpoint <store i % n>
    ///   --bus-endpoint <bus i % n>`
    ///
    /// With TLS, every process also gets [`TestCa::aetherd_args`] and the endpoints are
    /// `https://`.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        if spec.coordinators > 0 && (spec.stores == 0 || spec.buses == 0) {
            bail!("coordinators need at least one store and one bus, got {spec:?}");
        }
        // Fail before starting anything if aetherd is not built.
        let aetherd = aetherd_path()?;
        let (etcd, s3) = tokio::join!(
            EtcdCluster::start(spec.etcd_members),
            S3Server::start_with(spec.s3)
        );
        let (etcd, s3) = (etcd?, s3?);
        let etcd_endpoints = etcd.endpoints().join(",");
        let tls = match spec.tls {
            TlsMode::Off => None,
            TlsMode::On | TlsMode::Mutual => Some(TestCa::generate()?),
        };
        let launcher = Launcher {
            aetherd,
            tls_args: tls
                .as_ref()
                .map(|ca| ca.aetherd_args(spec.tls == TlsMode::Mutual))
                .unwrap_or_default(),
            env: otlp_env(spec.otlp_endpoint),
            lease_ttl_secs: spec.lease_ttl_secs,
        };

        let mut stores = Vec::with_capacity(spec.stores);
        for index in 0..spec.stores {
            let mut args = vec!["store".to_owned()];
            args.extend(s3.aetherd_args());
            stores.push(launcher.start("store", index, args, false).await?);
        }

        let mut buses = Vec::with_capacity(spec.buses);
        for index in 0..spec.buses {
            let mut args = vec!["bus".to_owned()];
            args.extend(s3.aetherd_args());
            args.extend(["--etcd-endpoints".to_owned(), etcd_endpoints.clone()]);
            buses.push(launcher.start("bus", index, args, true).await?);
        }

        let mut coordinators = Vec::with_capacity(spec.coordinators);
        for index in 0..spec.coordinators {
            let args = vec![
                "coordinator".to_owned(),
                "--etcd-endpoints".to_owned(),
                etcd_endpoints.clone(),
                "--store-endpoint".to_owned(),
                stores[index % stores.len()].endpoint(),
                "--bus-endpoint".to_owned(),
                buses[index % buses.len()].endpoint(),
            ];
            coordinators.push(launcher.start("coordinator", index, args, true).await?);
        }

        Ok(Cluster {
            etcd,
            s3,
            stores,
            buses,
            coordinators,
            tls,
        })
    }

    /// The endpoint of the first coordinator.
    ///
    /// # Panics
    /// If the cluster was started without coordinators.
    pub fn coordinator_endpoint(&self) -> String {
        self.coordinators
            .first()
            .expect("the cluster was started with `coordinators: 0`")
            .endpoint()
    }
}

/// What every `aetherd` of a cluster is started with.
struct Launcher {
    aetherd: PathBuf,
    /// [`TestCa::aetherd_args`], or nothing without TLS.
    tls_args: Vec<String>,
    /// The OTLP export settings, if any ([`otlp_env`]).
    env: Vec<(String, String)>,
    lease_ttl_secs: Option<u64>,
}

impl Launcher {
    /// Starts `aetherd` with `args`, then `--lease-ttl-secs` (if `lease` and the spec sets
    /// one), then the TLS arguments; errors name the process as `what index`.
    async fn start(
        &self,
        what: &str,
        index: usize,
        mut args: Vec<String>,
        lease: bool,
    ) -> Result<ServiceProcess> {
        if let Some(ttl) = self.lease_ttl_secs.filter(|_| lease) {
            args.extend(["--lease-ttl-secs".to_owned(), ttl.to_string()]);
        }
        args.extend(self.tls_args.iter().cloned());
        ServiceProcess::start_with_env(&self.aetherd, &args, &self.env)
            .await
            .with_context(|| format!("cannot start {what} {index}"))
    }
}

/// The environment that makes a process export its spans and metrics to `endpoint`, with
/// export delays short enough for a test to wait on; empty without one.
fn otlp_env(endpoint: Option<SocketAddr>) -> Vec<(String, String)> {
    match endpoint {
        Some(addr) => [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200".into()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into(),
        None => Vec::new(),
    }
}
