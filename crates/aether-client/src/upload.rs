//! Uploads that send only what the store lacks.
//!
//! 1. Every file is cut with FastCDC using the store's own parameters and cut points
//!    (`aether_store::blobs`), so a chunk hashed here has the name the store gives it.
//! 2. One `HasBlobs` per 10,000 distinct chunks says which are missing.
//! 3. Missing chunks are sent with `PutBlob` (each chunk once, however many files share it),
//!    except that a small single-chunk file whose content is missing and shared with no other
//!    file rides inline in the batch.
//! 4. `ApplyChanges` writes the directories, then the files by chunk reference, then the
//!    symlinks, then the attributes of directories (mode and modification time, deepest first,
//!    so that creating their children does not move their times again): at most 10,000 changes
//!    and a few MiB per batch. A plan that fits one batch is applied atomically; a larger one
//!    is applied batch by batch (each atomic, in order).
//!
//! Memory stays bounded: files are hashed one buffer at a time and chunks re-read from disk
//! when they are sent, so a multi-GiB tree never sits in memory.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use aether_core::Hash;
use aether_proto as pb;
use aether_store::blobs::{cut_points, MAX_CHUNK};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::session::SessionHandle;

/// Most changes in one ApplyChanges (the coordinator's limit).
pub const MAX_BATCH_CHANGES: usize = 10_000;
/// Encoded size at which a batch is cut, well under the coordinator's 8 MiB message limit.
pub const MAX_BATCH_BYTES: usize = 6 * 1024 * 1024;
/// Largest file sent inline in a WriteOp (the coordinator's limit).
pub const MAX_INLINE_BYTES: u64 = 1024 * 1024;
/// Files hashed at once, and chunks sent at once.
const CONCURRENCY: usize = 4;
/// Bytes read from a file at a time while hashing it.
const READ_BYTES: usize = 1024 * 1024;
/// Pieces smaller than this are hashed on the calling task; larger ones on a blocking thread.
const INLINE_HASH_BYTES: usize = 64 * 1024;

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
pub enum UploadSource {
    /// A local file, read when hashed and again when its chunks are sent.
    File(PathBuf),
    /// Bytes in memory.
    Bytes(Bytes),
}

/// One file to write.
#[derive(Clone, Debug)]
pub struct UploadFile {
    /// The path in the session.
    pub path: String,
    /// Unix mode bits (up to 0o7777); 0 means 0644.
    pub mode: u32,
    /// Modification time in nanoseconds since the Unix epoch; 0 means the time of the write.
    pub mtime_ns: i64,
    pub source: UploadSource,
}

/// One symbolic link to create (or to replace a file or link with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSymlink {
    /// The path in the session.
    pub path: String,
    /// The target, stored as given and never followed by the service.
    pub target: String,
    /// Modification time in nanoseconds since the Unix epoch; 0 means the time of the write.
    pub mtime_ns: i64,
}

/// The mode and/or modification time to give an existing path once everything else is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadAttributes {
    /// The path in the session (not the root).
    pub path: String,
    /// Permission bits (up to 0o7777); unchanged when None.
    pub mode: Option<u32>,
    /// Nanoseconds since the Unix epoch; unchanged when None.
    pub mtime_ns: Option<i64>,
}

/// Files, directories and symlinks to write into a session.
#[derive(Clone, Debug, Default)]
pub struct UploadPlan {
    /// Directories to create (with parents; existing ones are fine), such as empty ones.
    pub directories: Vec<String>,
    pub files: Vec<UploadFile>,
    /// Written after the files.
    pub symlinks: Vec<UploadSymlink>,
    /// Applied last, in order, after every other change of the plan: a directory's entry
    /// comes after those of everything below it, so that creating its children does not move
    /// its modification time again.
    pub attributes: Vec<UploadAttributes>,
    /// Local entries left out (sockets, devices, FIFOs).
    pub skipped: Vec<PathBuf>,
}

/// What an upload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadReport {
    /// Files written.
    pub files: u64,
    /// Symlinks written.
    pub symlinks: u64,
    /// Directories created or confirmed.
    pub directories: u64,
    /// Total bytes of the files.
    pub bytes: u64,
    /// Distinct chunks the files are made of.
    pub chunks: u64,
    /// Of those, chunks the store already held (sent by nobody).
    pub chunks_present: u64,
    /// Chunks sent with PutBlob (the rest were already stored or went inline).
    pub chunks_uploaded: u64,
    /// Bytes sent with PutBlob.
    pub bytes_uploaded: u64,
    /// Bytes the store newly wrote for them (0 when another writer got there first).
    pub bytes_stored: u64,
    /// Small files whose content was missing and went inline.
    pub inline_files: u64,
    /// Bytes sent inline.
    pub inline_bytes: u64,
    /// ApplyChanges calls made.
    pub batches: u64,
    /// The head version after the last batch (0 if nothing was applied).
    pub head_version: u64,
    /// The head root after the last batch.
    pub head_root: String,
}

/// One content-defined chunk of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    hash: Hash,
    offset: u64,
    len: u64,
}

/// A file after hashing.
struct Hashed {
    chunks: Vec<Chunk>,
    size: u64,
}

/// How a file's content travels.
enum Content {
    Inline,
    Chunks,
}

impl UploadPlan {
    /// Every file, directory and symbolic link below `local`, placed under `remote` (a session
    /// path; empty for the root), in a stable order, with their modes and modification times.
    /// Symlinks are kept as links (their targets as read, never followed); special files
    /// (sockets, devices, FIFOs) are skipped and listed in `skipped`; names and link targets
    /// that are not UTF-8 are an error. The attributes of `local` itself go to `remote`
    /// unless that is the session root, which has none.
    pub fn from_directory(local: &Path, remote: &str) -> Result<UploadPlan> {
        let remote = remote.trim_matches('/').to_string();
        let mut plan = UploadPlan::default();
        if !remote.is_empty() {
            plan.directories.push(remote.clone());
        }
        plan.walk(local, &remote)?;
        if !remote.is_empty() {
            // `local` itself may be a symlink the caller named: its target's attributes count.
            let meta = std::fs::metadata(local).map_err(|e| Error::io(local, e))?;
            plan.attributes.push(directory_attributes(remote, &meta));
        }
        Ok(plan)
    }

    /// Adds what is below `dir`; a directory's attributes follow everything below it.
    fn walk(&mut self, dir: &Path, remote: &str) -> Result<()> {
        let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let local = entry.path();
            let name = entry.file_name().into_string().map_err(|name| {
                Error::InvalidArgument(format!(
                    "{}: the name {name:?} is not UTF-8, which session paths must be",
                    local.display()
                ))
            })?;
            let path = join(remote, &name);
            let meta = std::fs::symlink_metadata(&local).map_err(|e| Error::io(&local, e))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                self.directories.push(path.clone());
                self.walk(&local, &path)?;
                self.attributes.push(directory_attributes(path, &meta));
            } else if kind.is_file() {
                self.files.push(UploadFile {
                    path,
                    mode: file_mode(&meta),
                    mtime_ns: mtime_ns(&meta),
                    source: UploadSource::File(local),
                });
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&local).map_err(|e| Error::io(&local, e))?;
                let target = target.into_os_string().into_string().map_err(|target| {
                    Error::InvalidArgument(format!(
                        "{}: the symlink target {target:?} is not UTF-8, which session symlinks must be",
                        local.display()
                    ))
                })?;
                self.symlinks.push(UploadSymlink {
                    path,
                    target,
                    mtime_ns: mtime_ns(&meta),
                });
            } else {
                self.skipped.push(local);
            }
        }
        Ok(())
    }
}

fn directory_attributes(path: String, meta: &std::fs::Metadata) -> UploadAttributes {
    let mtime_ns = mtime_ns(meta);
    UploadAttributes {
        path,
        mode: Some(file_mode(meta)),
        // 0 is what the service stores for "unknown": leave such a time to the service.
        mtime_ns: (mtime_ns != 0).then_some(mtime_ns),
    }
}

/// `remote/name`, or `name` at the root.
pub(crate) fn join(remote: &str, name: &str) -> String {
    if remote.is_empty() {
        name.to_string()
    } else {
        format!("{remote}/{name}")
    }
}

/// The permission bits of a local file or directory, with set-user-ID, set-group-ID and sticky.
pub fn file_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

/// The modification time of local metadata (of a link itself for `symlink_metadata`) in
/// nanoseconds since the Unix epoch, saturating at the ends of `i64` (years 1677 and 2262).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    let ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
}

impl SessionHandle {
    /// Uploads a plan: hashes, asks the store what it lacks, sends only that, then writes the
    /// files by reference. See the module documentation for the steps.
    pub async fn upload(&self, plan: UploadPlan, progress: &dyn Progress) -> Result<UploadReport> {
        let mut report = UploadReport {
            files: plan.files.len() as u64,
            symlinks: plan.symlinks.len() as u64,
            directories: plan.directories.len() as u64,
            ..Default::default()
        };

        // 1. Hash.
        let hashed = hash_files(&plan.files, progress).await?;
        report.bytes = hashed.iter().map(|h| h.size).sum();

        // 2. Ask which chunks are missing. Each distinct chunk is located once.
        let located = Located::new(&hashed);
        report.chunks = located.order.len() as u64;
        let asked: Vec<String> = located.order.iter().map(Hash::to_hex).collect();
        let missing = self.missing(&asked).await?;
        report.chunks_present = report.chunks - missing.len() as u64;

        // 3. Decide how each file's content travels, then send the chunks that must go alone.
        let routes = Routes::new(&hashed, &missing);
        self.send_alone(
            &plan.files,
            &hashed,
            &located,
            &routes,
            progress,
            &mut report,
        )
        .await?;

        // 4. Write, batch by batch.
        self.write_plan(&plan, &hashed, &routes.contents, progress, &mut report)
            .await?;
        Ok(report)
    }

    /// Which of `asked` (chunk names) the store lacks.
    /// Which of `asked` the store lacks; a name the store returns that was not asked is
    /// ignored (it cannot be ours to send).
    async fn missing(&self, asked: &[String]) -> Result<HashSet<String>> {
        let mut missing: HashSet<String> = self
            .client
            .missing_blobs(asked)
            .await?
            .into_iter()
            .collect();
        let asked: HashSet<&String> = asked.iter().collect();
        missing.retain(|name| asked.contains(name));
        Ok(missing)
    }

    /// Sends the chunks `routes` says must go alone, `CONCURRENCY` at a time, each re-read from
    /// the first file that holds it, and counts them in `report`.
    async fn send_alone(
        &self,
        files: &[UploadFile],
        hashed: &[Hashed],
        located: &Located,
        routes: &Routes,
        progress: &dyn Progress,
        report: &mut UploadReport,
    ) -> Result<()> {
        let upload_bytes: u64 = routes.to_send.iter().map(|h| located.chunks[h].1.len).sum();
        let inline_bytes: u64 = hashed
            .iter()
            .zip(&routes.contents)
            .filter(|(_, c)| matches!(c, Content::Inline))
            .map(|(h, _)| h.size)
            .sum();
        progress.phase("uploading", Some(upload_bytes + inline_bytes));
        let sent: Vec<u64> = futures::stream::iter(routes.to_send.iter())
            .map(|hash| {
                let (index, chunk) = located.chunks[hash];
                self.send_chunk(&files[index].source, chunk, progress)
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        report.chunks_uploaded = sent.len() as u64;
        report.bytes_uploaded = upload_bytes;
        report.bytes_stored = sent.iter().sum();
        Ok(())
    }

    /// Applies the plan's changes in batches: directories, files, symlinks, then attributes.
    async fn write_plan(
        &self,
        plan: &UploadPlan,
        hashed: &[Hashed],
        contents: &[Content],
        progress: &dyn Progress,
        report: &mut UploadReport,
    ) -> Result<()> {
        let mut batch = Batch::default();
        for directory in &plan.directories {
            let change = unconditional(pb::change::Op::MakeDirectory(pb::MakeDirectoryOp {
                path: directory.clone(),
                parents: true,
            }));
            self.add_to_batch(&mut batch, change, report).await?;
        }
        for ((file, hashed), content) in plan.files.iter().zip(hashed).zip(contents) {
            let write = file_write(file, hashed, content, progress, report).await?;
            let change = unconditional(pb::change::Op::Write(write));
            self.add_to_batch(&mut batch, change, report).await?;
        }
        for link in &plan.symlinks {
            let change = unconditional(pb::change::Op::Symlink(pb::SymlinkOp {
                path: link.path.clone(),
                target: link.target.clone(),
                mtime_ns: link.mtime_ns,
            }));
            self.add_to_batch(&mut batch, change, report).await?;
        }
        // Last, so that nothing written after them moves the directories' times again.
        for attributes in &plan.attributes {
            if attributes.mode.is_none() && attributes.mtime_ns.is_none() {
                continue;
            }
            let change = unconditional(pb::change::Op::SetAttributes(pb::SetAttributesOp {
                path: attributes.path.clone(),
                mode: attributes.mode,
                mtime_ns: attributes.mtime_ns,
            }));
            self.add_to_batch(&mut batch, change, report).await?;
        }
        self.flush_batch(&mut batch, report).await
    }

    /// Stores one file's content in the content store, sending only the chunks it lacks, and
    /// returns the chunk list a WriteOp references. For writers that build their own batches
    /// (the mount): nothing in the session changes until the batch is applied.
    pub async fn store_chunks(&self, source: UploadSource) -> Result<Vec<pb::ChunkRef>> {
        let hashed = hash_source(&source, &crate::NoProgress).await?;
        let mut distinct: Vec<Chunk> = Vec::new();
        let mut seen = HashSet::new();
        for chunk in &hashed.chunks {
            if seen.insert(chunk.hash) {
                distinct.push(*chunk);
            }
        }
        let asked: Vec<String> = distinct.iter().map(|c| c.hash.to_hex()).collect();
        let missing = self.missing(&asked).await?;
        futures::stream::iter(
            distinct
                .iter()
                .filter(|c| missing.contains(&c.hash.to_hex())),
        )
        .map(|chunk| self.send_chunk(&source, *chunk, &crate::NoProgress))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<u64>>()
        .await?;
        Ok(chunk_refs(&hashed.chunks))
    }

    /// Uploads one file held in memory.
    pub async fn upload_bytes(&self, path: &str, data: Bytes, mode: u32) -> Result<UploadReport> {
        let plan = UploadPlan {
            files: vec![UploadFile {
                path: path.to_string(),
                mode,
                mtime_ns: 0,
                source: UploadSource::Bytes(data),
            }],
            ..Default::default()
        };
        self.upload(plan, &crate::NoProgress).await
    }

    /// Uploads every file, directory and symlink below `local` into directory `remote`, with
    /// modes and modification times ([`UploadPlan::from_directory`]).
    pub async fn upload_directory(
        &self,
        local: &Path,
        remote: &str,
        progress: &dyn Progress,
    ) -> Result<UploadReport> {
        let local_owned = local.to_path_buf();
        let remote_owned = remote.to_string();
        let plan = tokio::task::spawn_blocking(move || {
            UploadPlan::from_directory(&local_owned, &remote_owned)
        })
        .await
        .map_err(|e| Error::InvalidArgument(format!("walking {}: {e}", local.display())))??;
        self.upload(plan, progress).await
    }

    /// Sends one chunk; returns the bytes the store newly wrote.
    async fn send_chunk(
        &self,
        source: &UploadSource,
        chunk: Chunk,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let data = read_range(source, chunk.offset, chunk.len).await?;
        if hash_off_thread(data.clone()).await != chunk.hash {
            return Err(changed(source));
        }
        let response = self
            .client
            .put_blob(data, Some(chunk.hash.to_hex()))
            .await?;
        if response.hash != chunk.hash.to_hex() {
            return Err(Error::Status {
                code: tonic::Code::Internal,
                message: format!(
                    "the store named a chunk {} where the client computed {}; do client and store agree on the chunking parameters?",
                    response.hash,
                    chunk.hash.to_hex()
                ),
            });
        }
        progress.advance(chunk.len);
        Ok(response.stored_bytes)
    }

    async fn add_to_batch(
        &self,
        batch: &mut Batch,
        change: pb::Change,
        report: &mut UploadReport,
    ) -> Result<()> {
        let size = change.encoded_len() + 8;
        if !batch.changes.is_empty()
            && (batch.changes.len() >= MAX_BATCH_CHANGES || batch.bytes + size > MAX_BATCH_BYTES)
        {
            self.flush_batch(batch, report).await?;
        }
        batch.bytes += size;
        batch.changes.push(change);
        Ok(())
    }

    async fn flush_batch(&self, batch: &mut Batch, report: &mut UploadReport) -> Result<()> {
        if batch.changes.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut batch.changes);
        batch.bytes = 0;
        let response = self.apply_changes(changes, 0).await?;
        report.batches += 1;
        report.head_version = response.head_version;
        report.head_root = response.head_root;
        Ok(())
    }
}

#[derive(Default)]
struct Batch {
    changes: Vec<pb::Change>,
    bytes: usize,
}

/// Where each distinct chunk of an upload can be read from.
struct Located {
    /// Each distinct chunk, with the index of the first file holding it.
    chunks: HashMap<Hash, (usize, Chunk)>,
    /// The distinct chunks in the order they first appear.
    order: Vec<Hash>,
}

impl Located {
    fn new(hashed: &[Hashed]) -> Located {
        let mut chunks: HashMap<Hash, (usize, Chunk)> = HashMap::new();
        let mut order: Vec<Hash> = Vec::new();
        for (index, file) in hashed.iter().enumerate() {
            for chunk in &file.chunks {
                if let std::collections::hash_map::Entry::Vacant(slot) = chunks.entry(chunk.hash) {
                    slot.insert((index, *chunk));
                    order.push(chunk.hash);
                }
            }
        }
        Located { chunks, order }
    }
}

/// How each file's content travels, and the chunks that must be sent alone.
struct Routes {
    /// One per file, in plan order.
    contents: Vec<Content>,
    /// Missing chunks to send with PutBlob, each once, in the order first needed.
    to_send: Vec<Hash>,
}

impl Routes {
    fn new(hashed: &[Hashed], missing: &HashSet<String>) -> Routes {
        // A missing content goes inline only when it is one small chunk that no other file
        // shares; anything shared is sent once by PutBlob and referenced by every file, so
        // each distinct content crosses the wire once.
        let mut uses: HashMap<Hash, usize> = HashMap::new();
        for file in hashed {
            for chunk in &file.chunks {
                *uses.entry(chunk.hash).or_default() += 1;
            }
        }
        let inline = |file: &Hashed| {
            file.size == 0
                || (file.size <= MAX_INLINE_BYTES
                    && file.chunks.len() == 1
                    && uses[&file.chunks[0].hash] == 1
                    && missing.contains(&file.chunks[0].hash.to_hex()))
        };
        let mut to_send: Vec<Hash> = Vec::new();
        let mut sending: HashSet<Hash> = HashSet::new();
        for file in hashed.iter().filter(|f| !inline(f)) {
            for chunk in &file.chunks {
                if missing.contains(&chunk.hash.to_hex()) && sending.insert(chunk.hash) {
                    to_send.push(chunk.hash);
                }
            }
        }
        let contents: Vec<Content> = hashed
            .iter()
            .map(|file| {
                if inline(file) {
                    Content::Inline
                } else {
                    Content::Chunks
                }
            })
            .collect();
        Routes { contents, to_send }
    }
}

/// Hashes every file, `CONCURRENCY` at a time, after announcing the total size.
async fn hash_files(files: &[UploadFile], progress: &dyn Progress) -> Result<Vec<Hashed>> {
    let total = total_size(files).await?;
    progress.phase("hashing", Some(total));
    futures::stream::iter(files.iter())
        .map(|file| hash_source(&file.source, progress))
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

/// The WriteOp of one file: its content inline (read again now) or by chunk reference.
async fn file_write(
    file: &UploadFile,
    hashed: &Hashed,
    content: &Content,
    progress: &dyn Progress,
    report: &mut UploadReport,
) -> Result<pb::WriteOp> {
    let mut write = pb::WriteOp {
        path: file.path.clone(),
        mode: file.mode,
        mtime_ns: file.mtime_ns,
        ..Default::default()
    };
    match content {
        Content::Inline => {
            if hashed.size > 0 {
                write.content = read_whole(&file.source, hashed).await?;
                report.inline_files += 1;
                report.inline_bytes += hashed.size;
                progress.advance(hashed.size);
            }
        }
        Content::Chunks => write.chunks = chunk_refs(&hashed.chunks),
    }
    Ok(write)
}

/// A change without a precondition.
fn unconditional(op: pb::change::Op) -> pb::Change {
    pb::Change {
        op: Some(op),
        precondition: None,
    }
}

/// The chunk list a WriteOp references.
fn chunk_refs(chunks: &[Chunk]) -> Vec<pb::ChunkRef> {
    chunks
        .iter()
        .map(|c| pb::ChunkRef {
            hash: c.hash.to_hex(),
            size: c.len,
        })
        .collect()
}

fn changed(source: &UploadSource) -> Error {
    match source {
        UploadSource::File(path) => Error::ChangedDuringUpload { path: path.clone() },
        UploadSource::Bytes(_) => Error::ChangedDuringUpload {
            path: PathBuf::from("<memory>"),
        },
    }
}

async fn total_size(files: &[UploadFile]) -> Result<u64> {
    let mut total = 0;
    for file in files {
        total += match &file.source {
            UploadSource::Bytes(data) => data.len() as u64,
            UploadSource::File(path) => tokio::fs::metadata(path)
                .await
                .map_err(|e| Error::io(path, e))?
                .len(),
        };
    }
    Ok(total)
}

async fn hash_off_thread(data: Bytes) -> Hash {
    if data.len() <= INLINE_HASH_BYTES {
        return Hash::of(&data);
    }
    match tokio::task::spawn_blocking(move || Hash::of(&data)).await {
        Ok(hash) => hash,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Cuts the complete chunks out of `buffer` (all of it when `last`), hashing them; returns the
/// chunks and how many bytes of the buffer they cover.
fn cut_and_hash(buffer: &[u8], last: bool, offset: u64) -> (Vec<Chunk>, usize) {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    for len in cut_points(buffer, last) {
        chunks.push(Chunk {
            hash: Hash::of(&buffer[start..start + len]),
            offset: offset + start as u64,
            len: len as u64,
        });
        start += len;
    }
    (chunks, start)
}

/// Hashes a source into chunks, one buffer at a time.
/// The content hash a symlink with `target` has in a session (its target is its content).
pub fn symlink_hash(target: &str) -> String {
    Hash::of(target.as_bytes()).to_hex()
}

/// The name the store gives a local file's content (the BLAKE3 of its bytes, or of its chunk
/// list when it is cut into chunks), read once; with its size. Equal to an [`pb::Entry`]'s
/// `hash` exactly when the content is equal.
pub async fn content_hash(path: &Path) -> Result<(Hash, u64)> {
    let hashed = hash_source(&UploadSource::File(path.to_path_buf()), &crate::NoProgress).await?;
    let hash = match hashed.chunks.as_slice() {
        [] => Hash::of(b""),
        [one] => one.hash,
        many => aether_core::ChunkManifest {
            chunks: many.iter().map(|c| (c.hash, c.len)).collect(),
        }
        .hash(),
    };
    Ok((hash, hashed.size))
}

async fn hash_source(source: &UploadSource, progress: &dyn Progress) -> Result<Hashed> {
    match source {
        UploadSource::Bytes(data) => {
            let data = data.clone();
            let (chunks, _) = if data.len() <= INLINE_HASH_BYTES {
                cut_and_hash(&data, true, 0)
            } else {
                let data = data.clone();
                tokio::task::spawn_blocking(move || cut_and_hash(&data, true, 0))
                    .await
                    .map_err(|e| Error::InvalidArgument(format!("hashing failed: {e}")))?
            };
            progress.advance(data.len() as u64);
            Ok(Hashed {
                chunks,
                size: data.len() as u64,
            })
        }
        UploadSource::File(path) => {
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| Error::io(path, e))?;
            // Two maximal chunks: every pass cuts at least one complete chunk.
            let capacity = 2 * MAX_CHUNK;
            let mut buffer: Vec<u8> = Vec::new();
            let mut chunks = Vec::new();
            let mut offset = 0u64;
            let mut eof = false;
            loop {
                while !eof && buffer.len() < capacity {
                    // Reserved, not filled: zeroing 16 MiB for every small file cost more
                    // than hashing it (10k files of a few bytes: 35 s of page faults).
                    let want = capacity - buffer.len();
                    buffer.reserve(want.min(READ_BYTES));
                    let n = (&mut file)
                        .take(want as u64)
                        .read_buf(&mut buffer)
                        .await
                        .map_err(|e| Error::io(path, e))?;
                    eof = n == 0;
                }
                let (found, used, rest) = if buffer.len() <= INLINE_HASH_BYTES {
                    let (found, used) = cut_and_hash(&buffer, eof, offset);
                    (found, used, buffer)
                } else {
                    tokio::task::spawn_blocking(move || {
                        let (found, used) = cut_and_hash(&buffer, eof, offset);
                        (found, used, buffer)
                    })
                    .await
                    .map_err(|e| Error::InvalidArgument(format!("hashing failed: {e}")))?
                };
                buffer = rest;
                buffer.drain(..used);
                offset += used as u64;
                progress.advance(used as u64);
                chunks.extend(found);
                if eof && buffer.is_empty() {
                    return Ok(Hashed {
                        chunks,
                        size: offset,
                    });
                }
            }
        }
    }
}

/// `len` bytes of a source from `offset`.
async fn read_range(source: &UploadSource, offset: u64, len: u64) -> Result<Bytes> {
    match source {
        UploadSource::Bytes(data) => {
            let end = offset + len;
            if end > data.len() as u64 {
                return Err(changed(source));
            }
            Ok(data.slice(offset as usize..end as usize))
        }
        UploadSource::File(path) => {
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| Error::io(path, e))?;
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| Error::io(path, e))?;
            let mut data = vec![0u8; len as usize];
            file.read_exact(&mut data).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    changed(source)
                } else {
                    Error::io(path, e)
                }
            })?;
            Ok(Bytes::from(data))
        }
    }
}

/// The whole content of a small source, checked against what was hashed.
async fn read_whole(source: &UploadSource, hashed: &Hashed) -> Result<Bytes> {
    let data = read_range(source, 0, hashed.size).await?;
    let expected = hashed.chunks.first().map(|c| c.hash);
    if expected != Some(Hash::of(&data)) {
        return Err(changed(source));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    use aether_testkit::test_bytes as pseudo_random;

    #[tokio::test]
    async fn streaming_cuts_match_the_store() {
        let data = pseudo_random(37 * 1024 * 1024 + 17, 5);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, &data).unwrap();
        let from_file = hash_source(&UploadSource::File(path), &crate::NoProgress)
            .await
            .unwrap();
        let expected: Vec<usize> = cut_points(&data, true);
        let got: Vec<usize> = from_file.chunks.iter().map(|c| c.len as usize).collect();
        assert_eq!(got, expected);
        assert!(expected.len() > 3, "several chunks");
        let mut offset = 0;
        for chunk in &from_file.chunks {
            assert_eq!(chunk.offset, offset as u64);
            assert_eq!(
                chunk.hash,
                Hash::of(&data[offset..offset + chunk.len as usize])
            );
            offset += chunk.len as usize;
        }
        assert_eq!(from_file.size, data.len() as u64);
        let from_memory = hash_source(
            &UploadSource::Bytes(Bytes::from(data.clone())),
            &crate::NoProgress,
        )
        .await
        .unwrap();
        assert_eq!(from_memory.chunks, from_file.chunks);
    }

    #[tokio::test]
    async fn empty_and_small_files() {
        let empty = hash_source(&UploadSource::Bytes(Bytes::new()), &crate::NoProgress)
            .await
            .unwrap();
        assert_eq!(empty.size, 0);
        assert!(empty.chunks.is_empty());
        let small = hash_source(
            &UploadSource::Bytes(Bytes::from_static(b"hello")),
            &crate::NoProgress,
        )
        .await
        .unwrap();
        assert_eq!(small.chunks.len(), 1);
        assert_eq!(small.chunks[0].hash, Hash::of(b"hello"));
    }

    #[test]
    fn plans_a_directory_in_order() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/empty")).unwrap();
        std::fs::write(dir.path().join("b/x.txt"), "x").unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::set_permissions(
            dir.path().join("a.txt"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink("a.txt", dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/nowhere/../x", dir.path().join("b/dangling")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let plan = UploadPlan::from_directory(dir.path(), "/dest/").unwrap();
        assert_eq!(plan.directories, vec!["dest", "dest/b", "dest/b/empty"]);
        let files: Vec<&str> = plan.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(files, vec!["dest/a.txt", "dest/b/x.txt"]);
        assert_eq!(plan.files[0].mode, 0o4755, "set-user-ID is kept");
        let meta = std::fs::metadata(dir.path().join("a.txt")).unwrap();
        assert_eq!(plan.files[0].mtime_ns, mtime_ns(&meta));
        assert!(plan.files[0].mtime_ns > 0);
        let links: Vec<(&str, &str)> = plan
            .symlinks
            .iter()
            .map(|l| (l.path.as_str(), l.target.as_str()))
            .collect();
        assert_eq!(
            links,
            vec![("dest/b/dangling", "/nowhere/../x"), ("dest/link", "a.txt")]
        );
        assert_eq!(plan.skipped, vec![dir.path().join("sock")]);
        // Directories' attributes come after everything below them, the top one last.
        let attributed: Vec<&str> = plan.attributes.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(attributed, vec!["dest/b/empty", "dest/b", "dest"]);
        let root = UploadPlan::from_directory(dir.path(), "").unwrap();
        assert_eq!(root.directories, vec!["b", "b/empty"]);
        let attributed: Vec<&str> = root.attributes.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(
            attributed,
            vec!["b/empty", "b"],
            "the session root has none"
        );
    }

    #[test]
    fn times_before_1970_and_with_nanoseconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        let before = std::time::UNIX_EPOCH - std::time::Duration::new(10, 250);
        file.set_modified(before).unwrap();
        assert_eq!(
            mtime_ns(&std::fs::metadata(&path).unwrap()),
            -10_000_000_250
        );
        let after = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        file.set_modified(after).unwrap();
        assert_eq!(
            mtime_ns(&std::fs::metadata(&path).unwrap()),
            1_700_000_000_123_456_789
        );
    }
}
