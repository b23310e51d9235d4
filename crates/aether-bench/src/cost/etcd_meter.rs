//! What reaches etcd, from its own `/metrics`: requests by method, bytes from clients, time
//! spent handling them, fsyncs, database size.

use std::collections::BTreeMap;
use std::time::Duration;

use aether_testkit::http;
use anyhow::{Context, Result};

/// etcd's counters at one moment; subtract two for an interval.
#[derive(Clone, Debug, Default)]
pub struct EtcdCounts {
    /// Handled gRPC calls by method (Txn, Range, Put, DeleteRange, LeaseGrant, ...).
    pub calls: BTreeMap<String, f64>,
    /// Seconds spent handling them, by method.
    pub handling: BTreeMap<String, f64>,
    pub bytes_received: f64,
    pub wal_fsyncs: f64,
    pub db_size: f64,
}

impl EtcdCounts {
    pub async fn scrape(endpoint: &str) -> Result<EtcdCounts> {
        let response = http::request(
            endpoint,
            "GET",
            "/metrics",
            &[],
            b"",
            Duration::from_secs(5),
        )
        .await
        .with_context(|| format!("cannot read {endpoint}/metrics"))?;
        Ok(parse(&response.text()))
    }

    pub fn handling_seconds(&self) -> f64 {
        // Watch and lease keep-alive streams stay open for the whole run: not per operation.
        self.handling
            .iter()
            .filter(|(m, _)| !matches!(m.as_str(), "Watch" | "LeaseKeepAlive"))
            .map(|(_, s)| s)
            .sum()
    }

    /// `self - earlier` (the database size is kept as is: a level, not a counter).
    pub fn since(&self, earlier: &EtcdCounts) -> EtcdCounts {
        let minus = |now: &BTreeMap<String, f64>, then: &BTreeMap<String, f64>| {
            now.iter()
                .map(|(k, v)| (k.clone(), v - then.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect()
        };
        EtcdCounts {
            calls: minus(&self.calls, &earlier.calls),
            handling: minus(&self.handling, &earlier.handling),
            bytes_received: self.bytes_received - earlier.bytes_received,
            wal_fsyncs: self.wal_fsyncs - earlier.wal_fsyncs,
            db_size: self.db_size,
        }
    }
}

/// Reads the Prometheus text format lines this needs.
fn parse(text: &str) -> EtcdCounts {
    let mut counts = EtcdCounts::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_method=\""))
            .map(|m| m.trim_end_matches(['"', '}']).to_string());
        match (name, method) {
            ("grpc_server_handled_total", Some(method)) => {
                *counts.calls.entry(method).or_default() += value;
            }
            ("grpc_server_handling_seconds_sum", Some(method)) => {
                *counts.handling.entry(method).or_default() += value;
            }
            ("etcd_network_client_grpc_received_bytes_total", _) => counts.bytes_received += value,
            ("etcd_disk_wal_fsync_duration_seconds_count", _) => counts.wal_fsyncs += value,
            ("etcd_mvcc_db_total_size_in_bytes", _) => counts.db_size = value,
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_calls_times_and_sizes() {
        let text = "# HELP x\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 7\n\
            grpc_server_handled_total{grpc_code=\"FailedPrecondition\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n\
            grpc_server_handling_seconds_sum{grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 0.5\n\
            etcd_network_client_grpc_received_bytes_total 1234\n\
            etcd_mvcc_db_total_size_in_bytes 2.048e+06\n";
        let counts = parse(text);
        assert_eq!(counts.calls["Txn"], 8.0);
        assert_eq!(counts.handling_seconds(), 0.5);
        assert_eq!(counts.bytes_received, 1234.0);
        assert_eq!(counts.db_size, 2_048_000.0);
    }
}
