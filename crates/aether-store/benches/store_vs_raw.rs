//! The content store through its gRPC service versus raw `object_store` calls on the same
//! backend, in one run:
//!
//! - write and read throughput of 1 MiB blobs (one at a time), 64 MiB blobs (one at a time) and
//!   4 KiB blobs (many, 16 in flight for both sides);
//! - on the local filesystem, in memory (no storage: the ceiling gRPC and hashing set for the
//!   service), and on S3: moto (Python, in memory, one request at a time) and
//!   s3s-fs (Rust) with its files on tmpfs, as aether-testkit starts them;
//! - the service is the real `ContentService` on 127.0.0.1 with a real tonic client
//!   ([`RemoteBlobs`]); raw is `put`/`get` of one object per blob on the same `ObjectStore`;
//! - every iteration writes fresh content (no dedup help), raw and service interleaved, and
//!   what is read is compared with what was written;
//! - finally the content bytes sent when identical content is uploaded again after HasBlobs.
//!
//! `cargo bench -p aether-store --bench store_vs_raw`; env `AETHER_BENCH_ITERATIONS` (default 7)
//! and `AETHER_BENCH_BACKENDS` (default `local,memory,moto,s3s-fs-tmpfs`).
//! Targets: service write ≥ 0.8× raw, read ≥ 0.9× raw.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use aether_store::backend::BackendArgs;
use aether_store::blobs::{chunk_path, manifest_path, BlobStore};
use aether_store::remote::RemoteBlobs;
use aether_store::service::ContentGrpc;
use aether_store::{Blobs, Hash, Limits};
use aether_testkit::S3Kind;
use bytes::Bytes;
use clap::Parser;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};

const MIB: usize = 1024 * 1024;
/// In-flight requests for the small-blob workload, raw and service alike.
const SMALL_CONCURRENCY: usize = 16;

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    blob_bytes: usize,
    /// Blobs per iteration.
    count: usize,
    /// Requests in flight.
    concurrency: usize,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "1 MiB",
        blob_bytes: MIB,
        count: 32,
        concurrency: 1,
    },
    Workload {
        name: "64 MiB",
        blob_bytes: 64 * MIB,
        count: 1,
        concurrency: 1,
    },
    Workload {
        name: "4 KiB",
        blob_bytes: 4096,
        count: 2000,
        concurrency: SMALL_CONCURRENCY,
    },
];

/// Seconds taken by each iteration, per side and operation.
#[derive(Default)]
struct Samples {
    raw_write: Vec<f64>,
    raw_read: Vec<f64>,
    service_write: Vec<f64>,
    service_read: Vec<f64>,
}

#[derive(Parser)]
struct BackendFlags {
    #[command(flatten)]
    backend: BackendArgs,
}

fn main() -> anyhow::Result<()> {
    let iterations: usize = std::env::var("AETHER_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(iterations))
}

async fn run(iterations: usize) -> anyhow::Result<()> {
    println!(
        "store_vs_raw: {iterations} iterations, {} CPUs, MB/s = 10^6 bytes/s, median [min..max]",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let backends =
        std::env::var("AETHER_BENCH_BACKENDS").unwrap_or("local,memory,moto,s3s-fs-tmpfs".into());
    if backends.split(',').any(|b| b == "local") {
        let dir = tempfile::Builder::new().prefix("aether-bench-").tempdir()?;
        let local = BackendArgs::local(dir.path().to_path_buf());
        bench_backend("local", &local, iterations).await?;
    }
    if backends.split(',').any(|b| b == "memory") {
        // No storage at all: the service's figures here are what gRPC on loopback and
        // hashing allow on this machine, the ceiling of any backend's service figures.
        let memory = BackendArgs {
            store_backend: aether_store::backend::BackendKind::Memory,
            ..BackendArgs::local(std::env::temp_dir())
        };
        bench_backend("memory (the service's own ceiling)", &memory, iterations).await?;
    }
    for (name, kind) in [("moto", S3Kind::Moto), ("s3s-fs-tmpfs", S3Kind::S3sFsTmpfs)] {
        if !backends.split(',').any(|b| b == name) {
            continue;
        }
        match aether_testkit::S3Server::start_with(kind).await {
            Ok(s3) => {
                let flags = BackendFlags::try_parse_from(
                    std::iter::once("bench".to_string()).chain(s3.aetherd_args()),
                )?;
                let label = format!("s3 ({})", kind.name());
                bench_backend(&label, &flags.backend, iterations).await?;
            }
            Err(error) => println!("\n{name}: skipped, the server could not be started: {error:#}"),
        }
    }
    Ok(())
}

/// A ContentService on 127.0.0.1 over `store`, as `aetherd store` serves it (same HTTP/2
/// settings).
async fn serve(store: BlobStore, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // TcpIncoming, not a plain listener stream: tonic applies TCP_NODELAY only to its own
    // incoming type, and without it Nagle's algorithm stalls small messages.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        aether_proto::transport::tune_server(Server::builder())
            .add_service(ContentGrpc::new(store).into_server())
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()),
    );
    Ok(addr)
}

async fn bench_backend(name: &str, backend: &BackendArgs, iterations: usize) -> anyhow::Result<()> {
    let has_targets = backend.store_backend != aether_store::backend::BackendKind::Memory;
    let objects = backend.build("objects").map_err(anyhow::Error::msg)?;
    let store = BlobStore::new(objects.clone(), Limits::default());
    let shutdown = CancellationToken::new();
    let addr = serve(store.clone(), shutdown.clone()).await?;
    let channel =
        aether_proto::transport::tune_endpoint(Endpoint::from_shared(format!("http://{addr}"))?)
            .connect()
            .await?;
    let remote = RemoteBlobs::new(channel);

    println!("\n== backend: {name}");
    println!(
        "{:<28} {:<6} {:>24} {:>24} {:>7} {:>6}",
        "workload", "op", "raw MB/s", "service MB/s", "ratio", "target"
    );
    let mut bench = Bench {
        objects,
        store,
        remote,
        iterations,
        seed: 1,
        last_written: Vec::new(),
    };
    for workload in WORKLOADS {
        let samples = bench.workload(workload).await?;
        samples.report(&workload, has_targets);
    }
    bench.reupload().await?;
    shutdown.cancel();
    Ok(())
}

/// One backend under measurement: raw access to it, and the service over it.
struct Bench {
    objects: Arc<dyn ObjectStore>,
    store: BlobStore,
    remote: RemoteBlobs,
    iterations: usize,
    /// The seed of the last blob made: every blob is new content.
    seed: u64,
    /// The last round's 1 MiB and 64 MiB content, kept for the dedup check.
    last_written: Vec<Bytes>,
}

impl Bench {
    /// Runs one untimed warm-up round of `workload`, then the measured ones.
    async fn workload(&mut self, workload: Workload) -> anyhow::Result<Samples> {
        let mut samples = Samples::default();
        for iteration in 0..=self.iterations {
            let blobs: Vec<Bytes> = (0..workload.count)
                .map(|_| {
                    self.seed += 1;
                    random_bytes(workload.blob_bytes, self.seed)
                })
                .collect();
            let seed = self.seed;
            let raw_keys: Vec<Path> = (0..blobs.len())
                .map(|i| Path::from(format!("raw/{seed}/{i}")))
                .collect();
            // Raw and service alternate which goes first, so drift in the machine's load
            // does not favour one side.
            let (raw, service, hashes) = self
                .round(iteration % 2 == 0, &raw_keys, &blobs, workload.concurrency)
                .await?;
            if iteration > 0 {
                samples.raw_write.push(raw.0);
                samples.raw_read.push(raw.1);
                samples.service_write.push(service.0);
                samples.service_read.push(service.1);
            }
            // Keep the backend small (moto holds everything in memory): remove this round,
            // except the last 1 MiB / 64 MiB content, which the dedup check re-uploads.
            for key in &raw_keys {
                self.objects.delete(key).await?;
            }
            if iteration == self.iterations && workload.count <= 32 {
                self.last_written.extend(blobs);
            } else {
                remove_blobs(&self.store, &hashes).await?;
            }
        }
        Ok(samples)
    }

    /// One round of both sides, raw first if `raw_first`: (write, read) seconds of raw, then
    /// of the service, and the names the service gave the blobs.
    async fn round(
        &self,
        raw_first: bool,
        raw_keys: &[Path],
        blobs: &[Bytes],
        concurrency: usize,
    ) -> anyhow::Result<((f64, f64), (f64, f64), Vec<Hash>)> {
        let mut raw = (0.0, 0.0);
        let mut service = (0.0, 0.0);
        let mut hashes = Vec::new();
        for side in if raw_first { [0, 1] } else { [1, 0] } {
            if side == 0 {
                raw = raw_round(&self.objects, raw_keys, blobs, concurrency).await?;
            } else {
                let (write, read, written) =
                    service_round(&self.remote, blobs, concurrency).await?;
                service = (write, read);
                hashes = written;
            }
        }
        Ok((raw, service, hashes))
    }

    /// Identical content again: the client names it, asks HasBlobs, and sends nothing.
    async fn reupload(&self) -> anyhow::Result<()> {
        let total: usize = self.last_written.iter().map(Bytes::len).sum();
        let mut sent = 0;
        let mut stored = 0;
        for blob in &self.last_written {
            let uploaded = self.remote.upload(blob.clone()).await?;
            sent += uploaded.sent_bytes;
            stored += uploaded.stored_bytes;
        }
        println!(
            "re-upload of identical content ({} blobs, {total} bytes) after HasBlobs: {sent} content bytes sent, {stored} bytes stored",
            self.last_written.len()
        );
        anyhow::ensure!(sent == 0, "identical content must not be sent again");
        Ok(())
    }
}

impl Samples {
    /// Prints the write and read rows of `workload`, with the targets when `has_targets`.
    fn report(&self, workload: &Workload, has_targets: bool) {
        let bytes = (workload.blob_bytes * workload.count) as f64;
        let label = format!(
            "{} x {} ({} in flight)",
            workload.name, workload.count, workload.concurrency
        );
        report(
            &label,
            "write",
            bytes,
            &self.raw_write,
            &self.service_write,
            if has_targets { 0.8 } else { 0.0 },
        );
        report(
            &label,
            "read",
            bytes,
            &self.raw_read,
            &self.service_read,
            if has_targets { 0.9 } else { 0.0 },
        );
    }
}

/// Raw object_store: one object per blob. Returns (write seconds, read seconds).
async fn raw_round(
    objects: &Arc<dyn ObjectStore>,
    keys: &[Path],
    blobs: &[Bytes],
    concurrency: usize,
) -> anyhow::Result<(f64, f64)> {
    let write = timed(
        stream::iter(keys.iter().zip(blobs))
            .map(|(key, blob)| objects.put(key, PutPayload::from_bytes(blob.clone())))
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>(),
    )
    .await;
    write.1?;
    let read = timed(
        stream::iter(keys)
            .map(|key| async move { objects.get(key).await?.bytes().await })
            .buffered(concurrency)
            .try_collect::<Vec<Bytes>>(),
    )
    .await;
    let data = read.1?;
    anyhow::ensure!(data == blobs, "raw read returned other bytes");
    Ok((write.0, read.0))
}

/// Through the service: PutBlob and GetBlob over gRPC. Returns (write seconds, read seconds,
/// the blobs' names).
async fn service_round(
    remote: &RemoteBlobs,
    blobs: &[Bytes],
    concurrency: usize,
) -> anyhow::Result<(f64, f64, Vec<Hash>)> {
    let write = timed(
        stream::iter(blobs)
            .map(|blob| remote.send(blob.clone(), None))
            .buffered(concurrency)
            .try_collect::<Vec<_>>(),
    )
    .await;
    let hashes: Vec<Hash> = write.1?.iter().map(|u| u.hash).collect();
    let read = timed(
        stream::iter(&hashes)
            .map(|hash| remote.get(hash))
            .buffered(concurrency)
            .try_collect::<Vec<Bytes>>(),
    )
    .await;
    let data = read.1?;
    anyhow::ensure!(data == blobs, "service read returned other bytes");
    Ok((write.0, read.0, hashes))
}

/// Deletes blobs behind the service (the bench owns the backend; there is no delete RPC).
async fn remove_blobs(store: &BlobStore, hashes: &[Hash]) -> anyhow::Result<()> {
    for hash in hashes {
        let mut paths = vec![chunk_path(hash), manifest_path(hash)];
        if let Ok((_, aether_store::blobs::Layout::Chunked(manifest))) = store.stat(hash).await {
            paths.extend(manifest.chunks.iter().map(|(chunk, _)| chunk_path(chunk)));
        }
        for path in paths {
            match store.objects().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

async fn timed<T>(future: impl Future<Output = T>) -> (f64, T) {
    let start = Instant::now();
    let output = future.await;
    (start.elapsed().as_secs_f64(), output)
}

fn report(label: &str, op: &str, bytes: f64, raw: &[f64], service: &[f64], target: f64) {
    let rates = |seconds: &[f64]| {
        let mut rates: Vec<f64> = seconds.iter().map(|s| bytes / s / 1e6).collect();
        rates.sort_by(f64::total_cmp);
        rates
    };
    let (raw, service) = (rates(raw), rates(service));
    let median = |rates: &[f64]| rates[rates.len() / 2];
    // Small-blob rates are a few MB/s: keep two significant digits or more.
    let rate = |r: f64| match r {
        r if r < 10.0 => format!("{r:.2}"),
        r if r < 100.0 => format!("{r:.1}"),
        r => format!("{r:.0}"),
    };
    let shown = |rates: &[f64]| {
        format!(
            "{} [{}..{}]",
            rate(median(rates)),
            rate(rates[0]),
            rate(rates[rates.len() - 1])
        )
    };
    let ratio = median(&service) / median(&raw);
    // No target (0): in memory, raw is a copy of a buffer; the service figure is the point.
    let verdict = if target == 0.0 {
        "(ceiling)"
    } else if ratio >= target {
        "ok"
    } else {
        "MISSED"
    };
    println!(
        "{label:<28} {op:<6} {:>24} {:>24} {ratio:>6.2}x {:>5} {verdict}",
        shown(&raw),
        shown(&service),
        format!("{target}x")
    );
}

/// Fast incompressible bytes (xorshift64, a word at a time), distinct per seed.
fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut state = (seed << 1) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}
