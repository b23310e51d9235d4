//! A whole AetherFS deployment on real dependencies: etcd, moto S3, and `aetherd` processes for
//! stores, buses and coordinators, each on its own loopback port.

use anyhow::{bail, Context, Result};

use crate::etcd::EtcdCluster;
use crate::locate::aetherd_path;
use crate::s3::S3Server;
use crate::service::ServiceProcess;

/// How many of each part [`Cluster::start`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    pub coordinators: usize,
    pub stores: usize,
    pub buses: usize,
    pub etcd_members: usize,
    /// `--lease-ttl-secs` of the coordinators and buses (their default when None).
    pub lease_ttl_secs: Option<u64>,
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
}

impl Cluster {
    /// Starts etcd and the S3 server (concurrently), then the stores, the buses, and the
    /// coordinators:
    /// - stores: `aetherd store <s3 args>`
    /// - buses: `aetherd bus <s3 args> --etcd-endpoints <all>`
    /// - coordinators: `aetherd coordinator --etcd-endpoints <all> --store-endpoint <store i % n>
    ///   --bus-endpoint <bus i % n>`
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        if spec.coordinators > 0 && (spec.stores == 0 || spec.buses == 0) {
            bail!("coordinators need at least one store and one bus, got {spec:?}");
        }
        // Fail before starting anything if aetherd is not built.
        let aetherd = aetherd_path()?;
        let (etcd, s3) = tokio::join!(EtcdCluster::start(spec.etcd_members), S3Server::start());
        let (etcd, s3) = (etcd?, s3?);
        let etcd_endpoints = etcd.endpoints().join(",");

        let mut stores = Vec::with_capacity(spec.stores);
        for index in 0..spec.stores {
            let mut args = vec!["store".to_owned()];
            args.extend(s3.aetherd_args());
            let store = ServiceProcess::start_with_binary(&aetherd, &args)
                .await
                .with_context(|| format!("cannot start store {index}"))?;
            stores.push(store);
        }

        let mut buses = Vec::with_capacity(spec.buses);
        for index in 0..spec.buses {
            let mut args = vec!["bus".to_owned()];
            args.extend(s3.aetherd_args());
            args.extend(["--etcd-endpoints".to_owned(), etcd_endpoints.clone()]);
            if let Some(ttl) = spec.lease_ttl_secs {
                args.extend(["--lease-ttl-secs".to_owned(), ttl.to_string()]);
            }
            let bus = ServiceProcess::start_with_binary(&aetherd, &args)
                .await
                .with_context(|| format!("cannot start bus {index}"))?;
            buses.push(bus);
        }

        let mut coordinators = Vec::with_capacity(spec.coordinators);
        for index in 0..spec.coordinators {
            let mut args = vec![
                "coordinator".to_owned(),
                "--etcd-endpoints".to_owned(),
                etcd_endpoints.clone(),
                "--store-endpoint".to_owned(),
                stores[index % stores.len()].endpoint(),
                "--bus-endpoint".to_owned(),
                buses[index % buses.len()].endpoint(),
            ];
            if let Some(ttl) = spec.lease_ttl_secs {
                args.extend(["--lease-ttl-secs".to_owned(), ttl.to_string()]);
            }
            let coordinator = ServiceProcess::start_with_binary(&aetherd, &args)
                .await
                .with_context(|| format!("cannot start coordinator {index}"))?;
            coordinators.push(coordinator);
        }

        Ok(Cluster {
            etcd,
            s3,
            stores,
            buses,
            coordinators,
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
