//! Memory per request is bounded by a few chunks, not by a file or an archive (issue 14; README
//! "Limits"): a 4 GiB WriteFile, a 2 GiB ImportArchive and its ExportArchive go through a
//! real `aetherd dev` while a thread samples the process's resident memory (VmRSS in
//! /proc/PID/status); every byte is generated on the fly and checked on the way back, so the
//! test process holds no more than the server should.
//!
//! The soak runs 64 uploads of 256 MiB at once (past `--max-uploads`: the refused are tried
//! again) with small writes beside them, and reads back every acknowledged write.
//!
//! `cargo nextest run -p aether-tests bounded_memory:: --no-capture` prints the figures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_proto as pb;
use aether_proto::workspace_service_client::WorkspaceServiceClient;
use aether_testkit::{aetherd_path, ServiceProcess};
use bytes::Bytes;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::common::{connect, create_session};

const MIB: u64 = 1024 * 1024;
/// Size of the data messages the test sends.
const MESSAGE_BYTES: u64 = MIB;
/// How far aetherd's resident memory may grow over its level before a request while that one
/// request runs. The pipeline holds a few chunks (FastCDC: up to 8 MiB, 2 MiB on average):
/// eight chunk writes in flight, the chunk being cut, and the HTTP/2 windows (8 MiB per stream).
const RSS_GROWTH_MAX_BYTES: u64 = 128 * MIB;
/// How often resident memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large block is freed,
/// after which freed multi-MiB buffers stay in its heaps: resident memory then shows the
/// allocator's high-water mark across requests, not what a request holds. Fixing the threshold
/// (128 KiB, the default starting value) returns freed buffers, so VmRSS tracks live memory.
/// With the default behaviour the same run peaks 57 to 120 MiB over the level before each
/// request (that level already holding what earlier requests freed).
const MMAP_THRESHOLD: [(&str, &str); 1] = [("MALLOC_MMAP_THRESHOLD_", "131072")];

/// The resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS in kB");
    kib * 1024
}

/// Samples a process's resident memory on a thread of its own (so a busy runtime cannot
/// skip samples) and keeps the highest value.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak = Arc::new(AtomicU64::new(rss_bytes(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            }
        });
        Sampler { peak, stop, thread }
    }

    /// The highest resident memory seen.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler thread");
        self.peak.load(Ordering::Relaxed)
    }
}

/// `aetherd dev` on `data`, with glibc's mmap threshold fixed (see [`MMAP_THRESHOLD`]).
async fn start_measured_dev(data: &std::path::Path) -> ServiceProcess {
    let args = ["dev".into(), "--data".into(), data.display().to_string()];
    let env = MMAP_THRESHOLD.map(|(key, value)| (key.to_string(), value.to_string()));
    ServiceProcess::start_with_env(aetherd_path().unwrap(), &args, &env)
        .await
        .unwrap()
}

/// Runs `work` while sampling aetherd, prints the figures and checks the growth bound.
async fn measured<T>(
    server: &ServiceProcess,
    what: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    let pid = server.pid();
    let before = rss_bytes(pid);
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let out = work.await;
    let elapsed = started.elapsed();
    let peak = sampler.finish();
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{what}: aetherd VmRSS {} MiB before, {} MiB at peak (+{} MiB, bound {} MiB), {:.1} s",
        before / MIB,
        peak / MIB,
        growth / MIB,
        RSS_GROWTH_MAX_BYTES / MIB,
        elapsed.as_secs_f64()
    );
    assert!(
        growth <= RSS_GROWTH_MAX_BYTES,
        "{what}: aetherd grew by {} MiB, more than {} MiB",
        growth / MIB,
        RSS_GROWTH_MAX_BYTES / MIB
    );
    out
}

/// `len` pseudo-random bytes, the `index`th piece of content `seed` (BLAKE3 output: fast,
/// incompressible, and cut by FastCDC like real data).
fn piece(seed: u64, index: u64, len: u64) -> Bytes {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    let mut out = vec![0; len as usize];
    hasher.finalize_xof().fill(&mut out);
    Bytes::from(out)
}

/// Content repeats every this many pieces (64 MiB): FastCDC cuts repeated content into the
/// same chunks, so the store keeps 64 MiB per content whatever its size. What is measured is
/// memory, which sees every byte; the disk of a CI machine need not hold 6 GiB.
const CONTENT_PERIOD_PIECES: u64 = 64;

/// Content `seed` of `size` bytes as pieces of MESSAGE_BYTES, generated as they are pulled; each
/// piece also goes into `digest`.
fn content(
    seed: u64,
    size: u64,
    digest: Arc<Mutex<blake3::Hasher>>,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    futures::stream::iter(0..size.div_ceil(MESSAGE_BYTES)).map(move |index| {
        let len = MESSAGE_BYTES.min(size - index * MESSAGE_BYTES);
        let data = piece(seed, index % CONTENT_PERIOD_PIECES, len);
        digest.lock().unwrap().update(&data);
        data
    })
}

/// Reads a file back as a stream; (bytes, BLAKE3 of the content).
async fn read_back(channel: &Channel, id: &str, path: &str) -> (u64, blake3::Hash) {
    let mut stream = WorkspaceServiceClient::new(channel.clone())
        .read_file(pb::ReadFileRequest {
            session_id: id.into(),
            path: path.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut digest = blake3::Hasher::new();
    let mut read = 0;
    while let Some(message) = stream.message().await.unwrap() {
        assert_eq!(message.offset, read, "contiguous offsets");
        read += message.data.len() as u64;
        digest.update(&message.data);
    }
    (read, digest.finalize())
}

/// A ustar header for an entry of `size` bytes.
fn header(path: &str, kind: tar::EntryType, size: u64, link: Option<&str>) -> Bytes {
    let mut header = tar::Header::new_ustar();
    header.set_path(path).unwrap();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o750
    } else {
        0o640
    });
    header.set_mtime(1_700_000_000);
    if let Some(link) = link {
        header.set_link_name(link).unwrap();
    }
    header.set_cksum();
    Bytes::copy_from_slice(header.as_bytes())
}

fn zeros(len: u64) -> Bytes {
    Bytes::from(vec![0; len as usize])
}

/// Sizes of the archive's files: about 410 MiB each (2 GiB in all), odd so every entry needs
/// padding.
fn archive_files() -> Vec<(String, u64)> {
    (0..5)
        .map(|i| (format!("big/{i}.bin"), 410 * MIB + 777 * (i + 1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_cost_a_few_chunks_of_memory() {
    let data = tempfile::tempdir().unwrap();
    let server = start_measured_dev(data.path()).await;
    let channel = connect(&server.endpoint()).await.unwrap();
    let id = create_session(&channel).await.unwrap().id;
    // Every path taken once with small content, so the figures compare like with like.
    crate::common::write_file(&channel, &id, "warm.bin", &[1; 1000])
        .await
        .unwrap();
    let mut workspace = WorkspaceServiceClient::new(channel.clone());

    // WriteFile: 4 GiB (the WriteFile limit), streamed.
    let size = 4096 * MIB;
    let written = Arc::new(Mutex::new(blake3::Hasher::new()));
    let messages = futures::stream::iter([pb::WriteFileRequest {
        part: Some(pb::write_file_request::Part::Header(pb::WriteFileHeader {
            session_id: id.clone(),
            path: "large.bin".into(),
            ..Default::default()
        })),
    }])
    .chain(
        content(1, size, written.clone()).map(|data| pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Data(data)),
        }),
    );
    let response = measured(
        &server,
        "WriteFile of 4 GiB",
        workspace.write_file(messages),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(response.entry.unwrap().size, size);
    let expected = written.lock().unwrap().finalize();
    let (read, hash) = measured(
        &server,
        "ReadFile of 4 GiB",
        read_back(&channel, &id, "large.bin"),
    )
    .await;
    assert_eq!((read, hash), (size, expected), "the file reads back whole");

    // ImportArchive: ~2 GiB of tar, generated as it is sent.
    let files = archive_files();
    let last = Arc::new(Mutex::new(blake3::Hasher::new()));
    let mut parts: Vec<futures::stream::BoxStream<'static, Bytes>> =
        vec![futures::stream::iter([header("big", tar::EntryType::Directory, 0, None)]).boxed()];
    for (i, (path, size)) in files.iter().enumerate() {
        let digest = if i + 1 == files.len() {
            last.clone()
        } else {
            Arc::new(Mutex::new(blake3::Hasher::new()))
        };
        parts.push(
            futures::stream::iter([header(path, tar::EntryType::Regular, *size, None)]).boxed(),
        );
        parts.push(content(100 + i as u64, *size, digest).boxed());
        parts.push(futures::stream::iter([zeros(size.next_multiple_of(512) - size)]).boxed());
    }
    parts.push(
        futures::stream::iter([
            header("big/latest", tar::EntryType::Symlink, 0, Some("4.bin")),
            zeros(1024),
        ])
        .boxed(),
    );
    let tar_bytes: u64 = 512 * (files.len() as u64 + 2)
        + files
            .iter()
            .map(|(_, s)| s.next_multiple_of(512))
            .sum::<u64>()
        + 1024;
    let header_message = pb::ImportArchiveRequest {
        part: Some(pb::import_archive_request::Part::Header(
            pb::ImportArchiveHeader {
                session_id: id.clone(),
                path: "in".into(),
                expected_head_version: 0,
            },
        )),
    };
    let messages =
        futures::stream::iter([header_message]).chain(futures::stream::iter(parts).flatten().map(
            |data| pb::ImportArchiveRequest {
                part: Some(pb::import_archive_request::Part::Data(data)),
            },
        ));
    let what = format!("ImportArchive of {} MiB", tar_bytes / MIB);
    let imported = measured(&server, &what, workspace.import_archive(messages))
        .await
        .unwrap()
        .into_inner();
    let file_bytes: u64 = files.iter().map(|(_, s)| s).sum();
    assert_eq!(
        (imported.files, imported.directories, imported.bytes),
        (files.len() as u64 + 1, 1, file_bytes)
    );
    let (last_path, last_size) = files.last().unwrap();
    let expected = last.lock().unwrap().finalize();
    let read = read_back(&channel, &id, &format!("in/{last_path}")).await;
    assert_eq!(
        read,
        (*last_size, expected),
        "an imported file reads back whole"
    );

    // ExportArchive of what was imported: the same entries, streamed back.
    let export = async {
        let mut stream = workspace
            .export_archive(pb::ExportArchiveRequest {
                session_id: id.clone(),
                at: None,
                path: "in".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut total = 0u64;
        while let Some(message) = stream.message().await.unwrap() {
            total += message.data.len() as u64;
        }
        total
    };
    let what = format!("ExportArchive of {} MiB", tar_bytes / MIB);
    let exported = measured(&server, &what, export).await;
    assert_eq!(exported, tar_bytes, "the export holds the same entries");
}

/// Uploads the soak test runs at once, and the size of each.
const SOAK_UPLOADS: u64 = 64;
const SOAK_UPLOAD_BYTES: u64 = 256 * MIB;
/// The soak's bound on aetherd's resident memory over its level before: the store's budget for
/// chunk writes in flight across uploads (`--store-upload-buffer-bytes`, 256 MiB), plus per
/// admitted upload (`--max-uploads`, 32) the chunk being cut (up to 8 MiB), a data message
/// (1 MiB) and the HTTP/2 stream window (8 MiB), plus 96 MiB for the runtime, the small writes
/// and the allocator's slack.
const SOAK_RSS_GROWTH_MAX_BYTES: u64 = 256 * MIB + 32 * 17 * MIB + 96 * MIB;

/// Upload `index` of the soak: 1 MiB of its own, then 255 MiB every upload shares (so the
/// store keeps 64 distinct files in about 320 MiB of disk).
fn soak_content(index: u64) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    futures::stream::iter(0..SOAK_UPLOAD_BYTES / MESSAGE_BYTES).map(move |piece_index| {
        if piece_index == 0 {
            piece(10_000 + index, 0, MESSAGE_BYTES)
        } else {
            piece(9_999, piece_index, MESSAGE_BYTES)
        }
    })
}

/// Sends upload `index` until the server takes it: a refusal for lack of room
/// (RESOURCE_EXHAUSTED, not applied) is tried again after a pause. Returns the refusals.
async fn soak_upload(channel: Channel, session: String, index: u64) -> u64 {
    let mut refused = 0;
    loop {
        let messages = futures::stream::iter([pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Header(pb::WriteFileHeader {
                session_id: session.clone(),
                path: format!("soak/{index}.bin"),
                ..Default::default()
            })),
        }])
        .chain(soak_content(index).map(|data| pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Data(data)),
        }));
        match WorkspaceServiceClient::new(channel.clone())
            .write_file(messages)
            .await
        {
            Ok(response) => {
                assert_eq!(response.into_inner().entry.unwrap().size, SOAK_UPLOAD_BYTES);
                return refused;
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert_eq!(
                    status.metadata().get("x-aether-outcome").unwrap(),
                    "not-applied",
                    "{status:?}"
                );
                refused += 1;
                tokio::time::sleep(Duration::from_millis(50 + 10 * (index % 8))).await;
            }
            Err(status) => panic!("upload {index}: {status:?}"),
        }
    }
}

/// Reads `length` bytes at `offset` of a file; their BLAKE3.
async fn read_range(
    channel: &Channel,
    id: &str,
    path: &str,
    offset: u64,
    length: u64,
) -> blake3::Hash {
    let mut stream = WorkspaceServiceClient::new(channel.clone())
        .read_file(pb::ReadFileRequest {
            session_id: id.into(),
            path: path.into(),
            offset,
            length,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut digest = blake3::Hasher::new();
    while let Some(message) = stream.message().await.unwrap() {
        digest.update(&message.data);
    }
    digest.finalize()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_of_64_large_uploads_and_small_writes_stays_bounded_and_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = start_measured_dev(data.path()).await;
    let channel = connect(&server.endpoint()).await.unwrap();
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(create_session(&channel).await.unwrap().id);
    }
    let small_session = create_session(&channel).await.unwrap().id;
    crate::common::write_file(&channel, &small_session, "warm.bin", &[1; 1000])
        .await
        .unwrap();

    let uploads_done = Arc::new(AtomicBool::new(false));
    // Small writes all along: each acknowledged one is remembered, to be read back.
    let small_writes = tokio::spawn({
        let (channel, session, done) =
            (channel.clone(), small_session.clone(), uploads_done.clone());
        async move {
            let mut acknowledged = Vec::new();
            let mut workspace = WorkspaceServiceClient::new(channel);
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let path = format!("small/{i}.txt");
                let content = format!("small write {i}").into_bytes();
                let request = pb::ApplyChangesRequest {
                    session_id: session.clone(),
                    changes: vec![pb::Change {
                        op: Some(pb::change::Op::Write(pb::WriteOp {
                            path: path.clone(),
                            content: content.clone().into(),
                            ..Default::default()
                        })),
                        precondition: None,
                    }],
                    expected_head_version: 0,
                };
                match workspace.apply_changes(request).await {
                    Ok(_) => acknowledged.push((path, content)),
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {}
                    Err(status) => panic!("small write {i}: {status:?}"),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acknowledged
        }
    });

    let uploads = (0..SOAK_UPLOADS).map(|index| {
        let session = sessions[index as usize % sessions.len()].clone();
        tokio::spawn(soak_upload(channel.clone(), session, index))
    });
    let what = format!(
        "{SOAK_UPLOADS} concurrent uploads of {} MiB",
        SOAK_UPLOAD_BYTES / MIB
    );
    let pid = server.pid();
    let before = rss_bytes(pid);
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    let refused: u64 = futures::future::join_all(uploads)
        .await
        .into_iter()
        .map(|r| r.expect("upload task"))
        .sum();
    let elapsed = started.elapsed();
    let peak = sampler.finish();
    uploads_done.store(true, Ordering::Relaxed);
    let acknowledged = small_writes.await.unwrap();
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{what}: {:.1} s ({:.0} MiB/s), {refused} refusals tried again, {} small writes; aetherd \
         VmRSS {} MiB before, {} MiB at peak (+{} MiB, bound {} MiB)",
        elapsed.as_secs_f64(),
        (SOAK_UPLOADS * SOAK_UPLOAD_BYTES / MIB) as f64 / elapsed.as_secs_f64(),
        acknowledged.len(),
        before / MIB,
        peak / MIB,
        growth / MIB,
        SOAK_RSS_GROWTH_MAX_BYTES / MIB
    );
    assert!(
        growth <= SOAK_RSS_GROWTH_MAX_BYTES,
        "{what}: aetherd grew by {} MiB, more than {} MiB",
        growth / MIB,
        SOAK_RSS_GROWTH_MAX_BYTES / MIB
    );
    let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        state
            .lines()
            .any(|l| l.starts_with("State:") && !l.contains("zombie")),
        "aetherd exited during the soak"
    );
    assert!(!acknowledged.is_empty(), "no small write was acknowledged");

    // Every acknowledged write reads back: each upload's own first MiB and size, the shared
    // rest once in full, and every small write.
    let shared = {
        let mut digest = blake3::Hasher::new();
        for piece_index in 1..SOAK_UPLOAD_BYTES / MESSAGE_BYTES {
            digest.update(&piece(9_999, piece_index, MESSAGE_BYTES));
        }
        digest.finalize()
    };
    for index in 0..SOAK_UPLOADS {
        let session = &sessions[index as usize % sessions.len()];
        let path = format!("soak/{index}.bin");
        let own = blake3::hash(&piece(10_000 + index, 0, MESSAGE_BYTES));
        assert_eq!(
            read_range(&channel, session, &path, 0, MESSAGE_BYTES).await,
            own,
            "{path} starts with its own MiB"
        );
        if index == SOAK_UPLOADS - 1 {
            let rest = SOAK_UPLOAD_BYTES - MESSAGE_BYTES;
            assert_eq!(
                read_range(&channel, session, &path, MESSAGE_BYTES, rest).await,
                shared,
                "{path} holds the shared content"
            );
        }
    }
    for (path, content) in &acknowledged {
        let read = read_range(&channel, &small_session, path, 0, 0).await;
        assert_eq!(read, blake3::hash(content), "{path}");
    }
}
