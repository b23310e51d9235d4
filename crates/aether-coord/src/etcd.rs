//! The etcd backend: every trait call is one etcd request, with a deadline so that a lost
//! quorum surfaces as `Unavailable` instead of a hang.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};

use crate::{
    prefix_end, Compare, CoordError, Coordination, KeyValue, LeaseId, Op, Result, TxnOutcome,
};

/// How long one etcd request may take before it counts as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Coordination on an etcd cluster.
#[derive(Clone)]
pub struct EtcdCoordination {
    client: Client,
}

impl EtcdCoordination {
    /// Connects to the given endpoints ("http://host:port"). The connection is lazy-tolerant:
    /// it fails only if no endpoint answers within the connect timeout.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(CoordError::Rejected(
                "no etcd endpoints configured: pass --etcd-endpoints".into(),
            ));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Self { client })
    }
}

impl EtcdCoordination {
    /// The size of the etcd database of the member that answers, and the quota it reports
    /// (etcd 3.6 and later; 0 before).
    pub async fn db_size(&self) -> Result<(u64, u64)> {
        let status = self
            .client
            .clone()
            .status()
            .await
            .map_err(|e| unavailable(&e))?;
        Ok((
            u64::try_from(status.db_size()).unwrap_or(0),
            u64::try_from(status.db_size_quota()).unwrap_or(0),
        ))
    }
}

fn unavailable(error: &etcd_client::Error) -> CoordError {
    match error {
        etcd_client::Error::GRpcStatus(status)
            if status.code() == tonic::Code::InvalidArgument
                || status.code() == tonic::Code::FailedPrecondition =>
        {
            CoordError::Rejected(status.message().to_string())
        }
        other => CoordError::Unavailable(other.to_string()),
    }
}

fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.message().contains("lease not found"))
}

/// Attempts of a read before its error is returned.
const READ_ATTEMPTS: u32 = 3;

/// Runs a read, again after a transport failure: reads change nothing, and the client's
/// balanced channel sends the next attempt to a member that answers (a member that is down or
/// restarting fails the connection, not the cluster).
async fn read<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                let transport = matches!(error, etcd_client::Error::TransportError(_))
                    || matches!(&error, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable);
                if !transport || tries >= READ_ATTEMPTS {
                    return Err(unavailable(&error));
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(tries))).await;
            }
        }
    }
}

/// Errors of lease calls: "lease not found" means the lease is gone, not that etcd is down.
fn lease_error(error: &etcd_client::Error, lease: LeaseId) -> CoordError {
    if error.to_string().contains("lease not found") {
        CoordError::LeaseNotFound(lease)
    } else {
        unavailable(error)
    }
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

#[async_trait]
impl Coordination for EtcdCoordination {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let response = read(|| {
            let mut client = self.client.clone();
            async move { client.get(key, None).await }
        })
        .await?;
        Ok(response.kvs().first().map(convert))
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>> {
        let client = self.client.clone();
        let start: Vec<u8> = match start_after {
            // The smallest key strictly greater than `after`.
            Some(after) if after.as_bytes() >= prefix.as_bytes() => {
                let mut key = after.as_bytes().to_vec();
                key.push(0);
                key
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let options = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(limit as i64);
        let response = read(|| {
            let (mut client, start, options) = (client.clone(), start.clone(), options.clone());
            async move { client.get(start, Some(options)).await }
        })
        .await?;
        Ok(response.kvs().iter().map(convert).collect())
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome> {
        let compares: Vec<etcd_client::Compare> = compares
            .into_iter()
            .map(|compare| match compare {
                Compare::Missing(key) => etcd_client::Compare::version(key, CompareOp::Equal, 0),
                Compare::CreateRevision(key, rev) => {
                    etcd_client::Compare::create_revision(key, CompareOp::Equal, rev)
                }
                Compare::ModRevision(key, rev) => {
                    etcd_client::Compare::mod_revision(key, CompareOp::Equal, rev)
                }
            })
            .collect();
        // etcd names no lease when it refuses one: the transaction's own (one per node).
        let lease = ops.iter().find_map(|op| match op {
            Op::Put { lease, .. } => *lease,
            Op::Delete { .. } => None,
        });
        let ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let options = lease.map(|id| PutOptions::new().with_lease(id));
                    TxnOp::put(key, value, options)
                }
                Op::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
        let mut client = self.client.clone();
        let response = client
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| match lease {
                // Refused as a whole: nothing applied, and the node's lease is gone.
                Some(lease) if is_lease_not_found(&e) => CoordError::LeaseNotFound(lease),
                _ => unavailable(&e),
            })?;
        Ok(TxnOutcome {
            succeeded: response.succeeded(),
            revision: response.header().map(|h| h.revision()).unwrap_or_default(),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let mut client = self.client.clone();
        let seconds = ttl.as_secs().max(1) as i64;
        let response = client
            .lease_grant(seconds, None)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut client = self.client.clone();
        let (mut keeper, mut responses) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| lease_error(&e, lease))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| lease_error(&e, lease))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, responses.message()).await {
            Err(_) => Err(CoordError::Unavailable(
                "lease keep-alive got no answer in time".into(),
            )),
            Ok(Err(e)) => Err(lease_error(&e, lease)),
            Ok(Ok(Some(response))) if response.ttl() > 0 => Ok(()),
            Ok(Ok(_)) => Err(CoordError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut client = self.client.clone();
        match client.lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("lease not found") =>
            {
                Err(CoordError::LeaseNotFound(lease))
            }
            Err(e) => Err(unavailable(&e)),
        }
    }
}
