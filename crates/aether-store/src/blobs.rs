//! The blob store: content-addressed, chunked, deduplicated, verified.
//!
//! Layout in the object store:
//! - `chunks/<h[0..2]>/<h>`: the bytes of one chunk, named by their BLAKE3-256. A blob that fits
//!   in one chunk is that chunk, so small files have their natural BLAKE3 name.
//! - `manifests/<h[0..2]>/<h>`: the chunk list of a larger blob, named by the domain-separated
//!   hash of the encoded list (`aether_core::hash::manifest_hash`), so a manifest name never
//!   equals a chunk name.
//!
//! Objects are written with create-if-absent: identical content is stored once, and a lost race
//! between two writers of the same content is harmless because both write the same bytes. A blob
//! becomes readable only when its last object (the manifest, for chunked blobs) is written, so an
//! upload that dies midway leaves nothing half-visible; its orphaned chunks are garbage for GC.
//! Every object read is checked against its name before a byte of it is returned (promise 5).

use std::sync::Arc;

use aether_core::{ChunkManifest, Hash};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, FuturesOrdered, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::Semaphore;

use crate::cache::ManifestCache;
use crate::task::{self, Spawned};
use crate::{Blobs, Limits, StoreError};

/// FastCDC parameters. Chunks of ~2 MiB keep per-object overhead low on S3 (a 64 MiB file is
/// ~30 objects, not hundreds) while an edit in the middle of a large file still re-stores only
/// a few MiB. A blob of at most `MAX_CHUNK` bytes is one object.
pub const MIN_CHUNK: usize = 1024 * 1024;
pub const AVG_CHUNK: usize = 2 * 1024 * 1024;
pub const MAX_CHUNK: usize = 8 * 1024 * 1024;

/// How a blob is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    Single,
    Chunked(ChunkManifest),
}

/// What a put did.
#[derive(Clone, Debug)]
pub struct PutOutcome {
    pub hash: Hash,
    pub size: u64,
    pub chunks: Vec<(Hash, u64)>,
    /// Bytes newly written (0 when the content was already stored).
    pub stored_bytes: u64,
}

/// The content store over one `object_store` backend. Stateless: any number of processes can
/// serve the same backend side by side.
#[derive(Clone)]
pub struct BlobStore {
    objects: Arc<dyn ObjectStore>,
    limits: Limits,
    manifests: Arc<ManifestCache>,
    /// Bytes of chunk writes in flight across every upload ([`Limits::upload_buffer_bytes`]).
    write_budget: Arc<Semaphore>,
}

pub fn chunk_path(hash: &Hash) -> Path {
    let hex = hash.to_hex();
    Path::from(format!("chunks/{}/{}", &hex[..2], hex))
}

pub fn manifest_path(hash: &Hash) -> Path {
    let hex = hash.to_hex();
    Path::from(format!("manifests/{}/{}", &hex[..2], hex))
}

/// Cuts `data` into FastCDC chunks and returns their lengths. A cut is made only while more
/// than MAX_CHUNK bytes remain: FastCDC never looks past MAX_CHUNK, so such a cut is the one the
/// whole blob would get, and chunk boundaries do not depend on how the data was split into
/// messages. The last MAX_CHUNK bytes or fewer are one chunk, returned only when `final_piece`
/// says no more data follows: so a blob of up to MAX_CHUNK bytes is a single object (one PUT,
/// one GET), and an edit that shifts a large file's content still leaves its last chunk alone
/// (the remainder is measured from the same content-defined cut).
pub fn cut_points(data: &[u8], final_piece: bool) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let rest = &data[start..];
        if rest.len() <= MAX_CHUNK {
            if final_piece {
                lengths.push(rest.len());
            }
            break;
        }
        let first = fastcdc::v2020::FastCDC::new(
            rest,
            MIN_CHUNK as u32,
            AVG_CHUNK as u32,
            MAX_CHUNK as u32,
        )
        .next()
        .map(|c| c.length)
        .unwrap_or(rest.len());
        lengths.push(first);
        start += first;
    }
    lengths
}

/// The chunks `data` is cut into, as (hash, size), computed without storing anything.
pub fn chunk_plan(data: &[u8]) -> Vec<(Hash, u64)> {
    let mut start = 0;
    cut_points(data, true)
        .into_iter()
        .map(|length| {
            let chunk = &data[start..start + length];
            start += length;
            (Hash::of(chunk), length as u64)
        })
        .collect()
}

/// The name the store gives `data`, computed locally: what a client asks HasBlobs about before
/// uploading, and sends as `expected_hash`.
pub fn blob_hash(data: &[u8]) -> Hash {
    let chunks = chunk_plan(data);
    if chunks.len() <= 1 {
        Hash::of(data)
    } else {
        ChunkManifest { chunks }.hash()
    }
}

impl BlobStore {
    pub fn new(objects: Arc<dyn ObjectStore>, limits: Limits) -> Self {
        let manifests = Arc::new(ManifestCache::new(limits.manifest_cache_bytes));
        let write_budget = Arc::new(Semaphore::new(limits.upload_buffer_bytes));
        Self {
            objects,
            limits,
            manifests,
            write_budget,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The backend, for tests and benchmarks that compare against raw calls.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// Starts storing a blob of `size` bytes, to be pushed in pieces.
    pub fn upload(&self, size: u64) -> Result<Upload, StoreError> {
        if size > self.limits.max_blob_bytes {
            return Err(StoreError::TooLarge(format!(
                "blob of {size} bytes exceeds the limit of {} bytes",
                self.limits.max_blob_bytes
            )));
        }
        Ok(self.start_upload(Some(size)))
    }

    /// Starts storing a blob whose size is not known in advance: whatever is pushed, up to the
    /// blob limit, which is checked as the bytes arrive.
    pub fn upload_unsized(&self) -> Upload {
        self.start_upload(None)
    }

    fn start_upload(&self, declared: Option<u64>) -> Upload {
        Upload {
            store: self.clone(),
            declared,
            received: 0,
            chunker: Chunker::default(),
            writes: FuturesOrdered::new(),
            chunks: Vec::new(),
            stored_bytes: 0,
        }
    }

    /// Stores a whole blob held in memory.
    pub async fn put_bytes(&self, data: Bytes) -> Result<PutOutcome, StoreError> {
        let mut upload = self.upload(data.len() as u64)?;
        upload.push(data).await?;
        upload.finish(None).await
    }

    /// Writes one object if it is not there yet. Returns the bytes newly written.
    async fn put_if_absent(&self, path: &Path, data: Bytes) -> Result<u64, StoreError> {
        let len = data.len() as u64;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(path, PutPayload::from_bytes(data.clone()), options)
            .await
        {
            Ok(_) => Ok(len),
            // Already stored: this writer now relies on it, so renew an old object's age
            // before a garbage collection can take it (see `crate::gc`). Some backends answer
            // a lost create race with a precondition failure.
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                self.refresh_path(path, Some(data)).await?;
                Ok(0)
            }
            Err(e) => Err(StoreError::from_object_store(e, path.as_ref())),
        }
    }

    async fn read_object(&self, path: &Path) -> Result<Bytes, StoreError> {
        let result = self
            .objects
            .get(path)
            .await
            .map_err(|e| StoreError::from_object_store(e, path.as_ref()))?;
        result
            .bytes()
            .await
            .map_err(|e| StoreError::from_object_store(e, path.as_ref()))
    }

    /// Reads and verifies one chunk.
    pub async fn get_chunk(&self, hash: &Hash) -> Result<Bytes, StoreError> {
        let path = chunk_path(hash);
        let data = self.read_object(&path).await?;
        verify(&path, hash, Hash::of(&data))?;
        Ok(data)
    }

    /// Reads and verifies the manifest of a chunked blob (and remembers it for reads);
    /// `NotFound` if there is none.
    async fn get_manifest(&self, hash: &Hash) -> Result<Arc<ChunkManifest>, StoreError> {
        let path = manifest_path(hash);
        let data = match self.read_object(&path).await {
            Err(StoreError::NotFound(_)) => return Err(not_found(hash)),
            other => other?,
        };
        verify(&path, hash, aether_core::hash::manifest_hash(&data))?;
        let manifest = ChunkManifest::decode(&data).map_err(|e| StoreError::Corrupt {
            object: path.to_string(),
            detail: e.to_string(),
        })?;
        let manifest = Arc::new(manifest);
        self.manifests.insert(*hash, manifest.clone());
        Ok(manifest)
    }

    /// Size and layout of a blob; `NotFound` if it is not stored. Asks the backend, never the
    /// manifest cache: callers may rely on the answer as a claim that the blob exists now.
    pub async fn stat(&self, hash: &Hash) -> Result<(u64, Layout), StoreError> {
        let chunk = chunk_path(hash);
        match self.objects.head(&chunk).await {
            Ok(meta) => return Ok((meta.size, Layout::Single)),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StoreError::from_object_store(e, chunk.as_ref())),
        }
        let manifest = self.get_manifest(hash).await?;
        Ok((manifest.total_size(), Layout::Chunked((*manifest).clone())))
    }

    /// Which of `hashes` are neither a chunk nor a chunked blob here, in input order.
    pub async fn missing_hashes(&self, hashes: &[Hash]) -> Result<Vec<Hash>, StoreError> {
        if hashes.len() > self.limits.max_batch {
            return Err(StoreError::InvalidArgument(format!(
                "{} hashes in one request exceeds the limit of {}; split the batch",
                hashes.len(),
                self.limits.max_batch
            )));
        }
        let present: Vec<bool> = stream::iter(hashes.iter().copied())
            .map(|hash| async move {
                // The backend, never the manifest cache, answers: the caller will skip an
                // upload on the strength of it, and garbage collection may have removed it.
                for path in [chunk_path(&hash), manifest_path(&hash)] {
                    match self.objects.head(&path).await {
                        Ok(meta) => {
                            // The caller will rely on it: keep GC from taking it meanwhile.
                            if crate::gc::is_old(&meta) {
                                self.refresh_path(&path, None).await?;
                            }
                            return Ok(true);
                        }
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(StoreError::from_object_store(e, path.as_ref())),
                    }
                }
                Ok(false)
            })
            .buffered(self.limits.concurrency * 4)
            .try_collect()
            .await?;
        Ok(hashes
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(hash, _)| *hash)
            .collect())
    }

    /// Streams a verified byte range of a blob (`length` 0 reads to the end): whole chunks are
    /// read and checked, then sliced. Chunks are fetched ahead, `concurrency` at a time.
    pub async fn read_range(
        &self,
        hash: &Hash,
        offset: u64,
        length: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        // Most blobs are one chunk: one GET, verified, answers the whole read. A blob whose
        // verified manifest this process holds skips that probe and the manifest GET.
        let cached = self.manifests.get(hash);
        if cached.is_none() {
            match self.get_chunk(hash).await {
                Ok(data) => {
                    let end = check_range(hash, offset, length, data.len() as u64)?;
                    let piece = data.slice(offset as usize..end as usize);
                    return Ok(stream::once(async move { Ok(piece) }).boxed());
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let manifest = match cached {
            Some(manifest) => manifest,
            None => self.get_manifest(hash).await?,
        };
        let end = check_range(hash, offset, length, manifest.total_size())?;
        let wanted = chunks_in_range(&manifest, offset, end);
        let store = self.clone();
        let manifest = manifest_path(hash);
        Ok(stream::iter(wanted)
            .map(move |(chunk, chunk_size, from, to)| {
                let store = store.clone();
                let manifest = manifest.clone();
                task::spawn(async move {
                    let data = store
                        .get_listed_chunk(&chunk, chunk_size, &manifest)
                        .await?;
                    Ok(data.slice(from..to))
                })
            })
            .buffered(self.limits.concurrency)
            .boxed())
    }

    /// A chunk that `manifest` lists with `chunk_size` bytes, verified; its absence or another
    /// size is corruption.
    async fn get_listed_chunk(
        &self,
        chunk: &Hash,
        chunk_size: u64,
        manifest: &Path,
    ) -> Result<Bytes, StoreError> {
        let data = match self.get_chunk(chunk).await {
            // The manifest promised this chunk: its absence is data loss.
            Err(StoreError::NotFound(_)) => {
                return Err(StoreError::Corrupt {
                    object: chunk_path(chunk).to_string(),
                    detail: format!("missing, but listed in {manifest}"),
                })
            }
            other => other?,
        };
        if data.len() as u64 != chunk_size {
            return Err(StoreError::Corrupt {
                object: chunk_path(chunk).to_string(),
                detail: format!(
                    "{manifest} says {chunk_size} bytes, the object holds {}",
                    data.len()
                ),
            });
        }
        Ok(data)
    }

    /// Reads a whole blob into memory, verified.
    pub async fn get_bytes(&self, hash: &Hash) -> Result<Bytes, StoreError> {
        let pieces: Vec<Bytes> = self.read_range(hash, 0, 0).await?.try_collect().await?;
        if pieces.len() == 1 {
            // One-chunk blobs (the common case) are returned without a copy.
            return Ok(pieces.into_iter().next().expect("one piece"));
        }
        let mut buffer = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
        for piece in pieces {
            buffer.extend_from_slice(&piece);
        }
        Ok(buffer.freeze())
    }
}

/// Cuts a blob arriving in pieces into exactly the chunks [`cut_points`] gives the whole blob:
/// a cut is final once more than MAX_CHUNK bytes follow it, whatever size the pieces have.
///
/// Memory: at most MAX_CHUNK unread bytes are kept between pushes, in one buffer that is
/// reused (its consumed front is reclaimed before it grows), so it stays under twice
/// (MAX_CHUNK plus the largest piece). A chunk cut from that buffer is copied out to a buffer of
/// its own size: a chunk waiting to be written never keeps a larger allocation alive.
#[derive(Debug, Default)]
pub struct Chunker {
    /// Received bytes; those before `start` were already cut off.
    buffer: Vec<u8>,
    start: usize,
}

impl Chunker {
    /// Adds the next piece; returns the chunks it completes, in blob order.
    pub fn push(&mut self, data: Bytes) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        if self.start == self.buffer.len() {
            // Nothing held back: chunks the piece completes by itself are sliced from it
            // without a copy.
            self.buffer.clear();
            self.start = 0;
            let mut data = data;
            for length in cut_points(&data, false) {
                chunks.push(data.split_to(length));
            }
            self.buffer.extend_from_slice(&data);
        } else {
            if self.buffer.len() + data.len() > self.buffer.capacity() {
                // Reclaim what was cut before growing: the unread bytes move to the front.
                self.buffer.drain(..self.start);
                self.start = 0;
            }
            self.buffer.extend_from_slice(&data);
            for length in cut_points(&self.buffer[self.start..], false) {
                let end = self.start + length;
                chunks.push(Bytes::copy_from_slice(&self.buffer[self.start..end]));
                self.start = end;
            }
        }
        debug_assert!(self.buffer.len() - self.start <= MAX_CHUNK);
        chunks
    }

    /// The blob's last chunk, once no more data follows: at most MAX_CHUNK bytes, and empty
    /// only when the whole blob is.
    pub fn finish(self) -> Bytes {
        if self.start == 0 {
            // The common case of a blob that fits one chunk: the buffer becomes the chunk.
            return Bytes::from(self.buffer);
        }
        Bytes::copy_from_slice(&self.buffer[self.start..])
    }
}

/// Names a blob arriving in pieces as the store will name it ([`blob_hash`] of the whole),
/// holding no more than a [`Chunker`] does.
#[derive(Debug, Default)]
pub struct BlobNamer {
    chunker: Chunker,
    chunks: Vec<(Hash, u64)>,
    size: u64,
}

impl BlobNamer {
    /// Adds the next piece.
    pub fn push(&mut self, data: Bytes) {
        self.size += data.len() as u64;
        for chunk in self.chunker.push(data) {
            self.chunks.push((Hash::of(&chunk), chunk.len() as u64));
        }
    }

    /// The blob's name and size.
    pub fn finish(self) -> (Hash, u64) {
        let mut chunks = self.chunks;
        let tail = self.chunker.finish();
        if chunks.is_empty() {
            return (Hash::of(&tail), self.size);
        }
        chunks.push((Hash::of(&tail), tail.len() as u64));
        (ChunkManifest { chunks }.hash(), self.size)
    }
}

/// One blob being stored from a stream of pieces ([`BlobStore::upload`],
/// [`BlobStore::upload_unsized`]).
///
/// Chunks are cut as data arrives and written while more is received, with at most
/// `concurrency` writes in flight, and the process's chunks in flight within
/// `upload_buffer_bytes`; a full pipeline makes [`Upload::push`] wait, which pushes back on
/// the sender. Memory stays bounded whatever the blob size: the budget across uploads, plus
/// per upload the chunk being cut and one cut chunk waiting for room (up to 2 × 8 MiB). Nothing is visible before [`Upload::finish`] succeeds; dropping an `Upload` aborts its
/// writes and leaves only unreferenced chunks behind.
pub struct Upload {
    store: BlobStore,
    /// The size announced up front; None when the blob is whatever arrives (up to the limit).
    declared: Option<u64>,
    received: u64,
    chunker: Chunker,
    writes: FuturesOrdered<Spawned<(Hash, u64, u64)>>,
    /// Written chunks in blob order: (hash, size).
    chunks: Vec<(Hash, u64)>,
    stored_bytes: u64,
}

impl Upload {
    /// Adds the next piece of the blob.
    pub async fn push(&mut self, data: Bytes) -> Result<(), StoreError> {
        self.received += data.len() as u64;
        match self.declared {
            Some(declared) if self.received > declared => {
                return Err(StoreError::InvalidArgument(format!(
                    "received more than the {declared} bytes announced in the header"
                )));
            }
            None if self.received > self.store.limits.max_blob_bytes => {
                return Err(StoreError::TooLarge(format!(
                    "blob exceeds the limit of {} bytes",
                    self.store.limits.max_blob_bytes
                )));
            }
            _ => {}
        }
        for chunk in self.chunker.push(data) {
            self.write(chunk).await?;
        }
        Ok(())
    }

    /// Starts writing one chunk, after waiting for a slot in the pipeline and room in the
    /// process's budget (held until the write ends).
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        while self.writes.len() >= self.store.limits.concurrency {
            self.collect_one().await?;
        }
        // A chunk is at most MAX_CHUNK, and the budget at least that (Limits::validate).
        let room = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        let permit = self
            .store
            .write_budget
            .clone()
            .acquire_many_owned(room)
            .await
            .map_err(|_| StoreError::Internal("the upload budget was closed".into()))?;
        let store = self.store.clone();
        self.writes.push_back(task::spawn(async move {
            let _permit = permit;
            let size = chunk.len() as u64;
            let hash = Hash::of(&chunk);
            let written = store.put_if_absent(&chunk_path(&hash), chunk).await?;
            Ok((hash, size, written))
        }));
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), StoreError> {
        if let Some(done) = self.writes.next().await {
            let (hash, size, written) = done?;
            self.chunks.push((hash, size));
            self.stored_bytes += written;
        }
        Ok(())
    }

    /// Completes the blob once all its bytes were pushed, and makes it visible. With
    /// `expected`, a blob whose name differs is refused before it becomes visible.
    pub async fn finish(mut self, expected: Option<Hash>) -> Result<PutOutcome, StoreError> {
        if let Some(declared) = self.declared {
            if self.received != declared {
                return Err(StoreError::InvalidArgument(format!(
                    "stream ended after {} of the {declared} bytes announced in the header",
                    self.received
                )));
            }
        }
        let size = self.received;
        let tail = std::mem::take(&mut self.chunker).finish();
        if self.chunks.is_empty() && self.writes.is_empty() {
            // One chunk: the blob is that chunk, under its plain BLAKE3 name.
            let hash = Hash::of(&tail);
            check_expected(expected, hash)?;
            let stored_bytes = self.store.put_if_absent(&chunk_path(&hash), tail).await?;
            return Ok(PutOutcome {
                hash,
                size,
                chunks: vec![(hash, size)],
                stored_bytes,
            });
        }
        // Chunks were cut, so more than MAX_CHUNK bytes came after the first cut: the tail
        // holds at least one byte.
        self.write(tail).await?;
        while !self.writes.is_empty() {
            self.collect_one().await?;
        }
        let manifest = ChunkManifest {
            chunks: self.chunks,
        };
        let hash = manifest.hash();
        check_expected(expected, hash)?;
        // Written last, after every chunk: the manifest is what makes the blob visible.
        let written = self
            .store
            .put_if_absent(&manifest_path(&hash), Bytes::from(manifest.encode()))
            .await?;
        let chunks = manifest.chunks.clone();
        self.store.manifests.insert(hash, Arc::new(manifest));
        Ok(PutOutcome {
            hash,
            size,
            chunks,
            stored_bytes: self.stored_bytes + written,
        })
    }
}

fn check_expected(expected: Option<Hash>, actual: Hash) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != actual => Err(StoreError::InvalidArgument(format!(
            "content hashes to {actual}, not the expected_hash {expected}; the blob was not stored"
        ))),
        _ => Ok(()),
    }
}

fn not_found(hash: &Hash) -> StoreError {
    StoreError::NotFound(hash.to_hex())
}

/// Checks that `offset` and `length` (0 = to the end) fit a blob of `size`; returns the end.
fn check_range(hash: &Hash, offset: u64, length: u64, size: u64) -> Result<u64, StoreError> {
    let end = if length == 0 {
        Some(size)
    } else {
        offset.checked_add(length)
    };
    match end {
        Some(end) if offset <= size && end <= size => Ok(end),
        _ => Err(StoreError::OutOfRange {
            hash: hash.to_hex(),
            offset,
            length,
            size,
        }),
    }
}

/// The chunks of `manifest` that overlap `[offset, end)`, each with its size and the slice of
/// it to return (`from..to` within the chunk).
fn chunks_in_range(
    manifest: &ChunkManifest,
    offset: u64,
    end: u64,
) -> Vec<(Hash, u64, usize, usize)> {
    let mut wanted = Vec::new();
    let mut position = 0u64;
    for &(chunk, chunk_size) in &manifest.chunks {
        let chunk_end = position + chunk_size;
        if chunk_end > offset && position < end {
            let from = offset.saturating_sub(position) as usize;
            let to = (end.min(chunk_end) - position) as usize;
            wanted.push((chunk, chunk_size, from, to));
        }
        position = chunk_end;
        if position >= end {
            break;
        }
    }
    wanted
}

fn verify(path: &Path, expected: &Hash, actual: Hash) -> Result<(), StoreError> {
    if actual == *expected {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            object: path.to_string(),
            detail: format!("content hashes to {actual}, expected {expected}"),
        })
    }
}

#[async_trait]
impl Blobs for BlobStore {
    async fn put(&self, data: Bytes) -> Result<Hash, StoreError> {
        Ok(self.put_bytes(data).await?.hash)
    }

    async fn put_stream(
        &self,
        mut data: BoxStream<'_, Result<Bytes, StoreError>>,
    ) -> Result<(Hash, u64), StoreError> {
        let mut upload = self.upload_unsized();
        while let Some(piece) = data.next().await {
            // An error drops the upload: its writes are aborted, nothing becomes visible.
            upload.push(piece?).await?;
        }
        let outcome = upload.finish(None).await?;
        Ok((outcome.hash, outcome.size))
    }

    async fn get(&self, hash: &Hash) -> Result<Bytes, StoreError> {
        self.get_bytes(hash).await
    }

    async fn read(
        &self,
        hash: &Hash,
        offset: u64,
        length: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        self.read_range(hash, offset, length).await
    }

    async fn size(&self, hash: &Hash) -> Result<u64, StoreError> {
        Ok(self.stat(hash).await?.0)
    }

    async fn missing(&self, hashes: &[Hash]) -> Result<Vec<Hash>, StoreError> {
        self.missing_hashes(hashes).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn store() -> BlobStore {
        BlobStore::new(Arc::new(InMemory::new()), Limits::default())
    }

    fn bytes(len: usize, seed: u64) -> Bytes {
        aether_testkit::test_bytes(len, seed).into()
    }

    async fn read(
        store: &BlobStore,
        hash: &Hash,
        offset: u64,
        length: u64,
    ) -> Result<Bytes, StoreError> {
        let pieces: Vec<Bytes> = store
            .read_range(hash, offset, length)
            .await?
            .try_collect()
            .await?;
        Ok(pieces.concat().into())
    }

    #[tokio::test]
    async fn small_empty_and_chunked_blobs_round_trip() {
        let store = store();
        for (len, chunked) in [(0, false), (1, false), (4096, false), (20 << 20, true)] {
            let data = bytes(len, len as u64);
            let outcome = store.put_bytes(data.clone()).await.unwrap();
            assert_eq!(outcome.size, len as u64);
            assert_eq!(outcome.hash, blob_hash(&data), "clients predict the name");
            assert_eq!(
                outcome.stored_bytes > len as u64,
                chunked,
                "manifest bytes on top"
            );
            assert_eq!(store.get_bytes(&outcome.hash).await.unwrap(), data);
            let (size, layout) = store.stat(&outcome.hash).await.unwrap();
            assert_eq!(size, len as u64);
            assert_eq!(matches!(layout, Layout::Chunked(_)), chunked);
            if !chunked {
                assert_eq!(
                    outcome.hash,
                    Hash::of(&data),
                    "one chunk: plain BLAKE3 name"
                );
            }
        }
    }

    #[tokio::test]
    async fn ranges_are_sliced_across_chunks_and_checked_against_the_end() {
        let store = store();
        let data = bytes(12 << 20, 7);
        let hash = store.put_bytes(data.clone()).await.unwrap().hash;
        let chunks = chunk_plan(&data);
        let boundary = chunks[0].1;
        for (offset, length) in [
            (0, 1),
            (boundary - 3, 10),
            (1000, 9 << 20),
            (5 << 20, 0),
            (12 << 20, 0),
        ] {
            let expected = if length == 0 {
                &data[offset as usize..]
            } else {
                &data[offset as usize..(offset + length) as usize]
            };
            assert_eq!(
                read(&store, &hash, offset, length).await.unwrap(),
                expected,
                "{offset}+{length}"
            );
        }
        for (offset, length) in [((12 << 20) + 1, 0), ((12 << 20) - 1, 2), (u64::MAX, 1)] {
            let error = read(&store, &hash, offset, length).await.unwrap_err();
            assert!(
                matches!(error, StoreError::OutOfRange { .. }),
                "{offset}+{length}: {error}"
            );
        }
        let small = store
            .put_bytes(Bytes::from_static(b"hello"))
            .await
            .unwrap()
            .hash;
        assert_eq!(read(&store, &small, 1, 3).await.unwrap(), &b"ell"[..]);
        assert!(matches!(
            read(&store, &small, 6, 0).await,
            Err(StoreError::OutOfRange { .. })
        ));
    }

    #[tokio::test]
    async fn chunk_boundaries_do_not_depend_on_how_the_data_arrives() {
        let store = store();
        let data = bytes(13 << 20, 3);
        let whole = store.put_bytes(data.clone()).await.unwrap();
        for piece in [1 << 20, 4 << 20, (4 << 20) + 1, 333_333] {
            let mut upload = store.upload(data.len() as u64).unwrap();
            for start in (0..data.len()).step_by(piece) {
                upload
                    .push(data.slice(start..(start + piece).min(data.len())))
                    .await
                    .unwrap();
            }
            let outcome = upload.finish(None).await.unwrap();
            assert_eq!(outcome.hash, whole.hash, "pieces of {piece}");
            assert_eq!(outcome.chunks, whole.chunks);
            assert_eq!(outcome.stored_bytes, 0, "identical content is stored once");
        }
    }

    /// `data` in pieces of odd sizes (1 byte, a prime, just over 1 MiB, just over 3 MiB, 13
    /// bytes, cycling), so cuts fall inside pieces, across them and at their edges.
    fn odd_pieces(data: &Bytes) -> Vec<Bytes> {
        let sizes = [1, 7919, (1 << 20) + 1, (3 << 20) + 3, 13];
        let mut pieces = Vec::new();
        let mut start = 0;
        for size in sizes.iter().cycle() {
            if start == data.len() {
                break;
            }
            let end = (start + size).min(data.len());
            pieces.push(data.slice(start..end));
            start = end;
        }
        pieces
    }

    #[tokio::test]
    async fn streamed_blobs_get_the_name_of_the_whole_bytes() {
        let store = store();
        for len in [0, 1, MAX_CHUNK, MAX_CHUNK + 1, 30 << 20] {
            let data = bytes(len, len as u64 + 40);
            let pieces = odd_pieces(&data);
            let source = stream::iter(pieces.clone().into_iter().map(Ok)).boxed();
            // Streamed first, so it is the streamed upload that writes the objects.
            let streamed = store.put_stream(source).await.unwrap();
            let whole = store.put_bytes(data.clone()).await.unwrap();
            assert_eq!(streamed, (whole.hash, len as u64), "{len} bytes");
            assert_eq!(whole.stored_bytes, 0, "{len} bytes: already stored");
            assert_eq!(store.get_bytes(&streamed.0).await.unwrap(), data);
            let mut namer = BlobNamer::default();
            for piece in pieces {
                namer.push(piece);
            }
            assert_eq!(namer.finish(), streamed, "{len} bytes: named locally");
        }
    }

    #[tokio::test]
    async fn a_failing_stream_stores_nothing_and_the_limit_holds_without_a_size() {
        let store = store();
        let data = bytes(20 << 20, 17);
        let hash = blob_hash(&data);
        let source = stream::iter([Ok(data.slice(..12 << 20)), Err(not_found(&hash))]).boxed();
        let error = store.put_stream(source).await.unwrap_err();
        assert!(matches!(error, StoreError::NotFound(_)), "{error}");
        assert_eq!(store.missing_hashes(&[hash]).await.unwrap(), [hash]);

        let limits = Limits {
            max_blob_bytes: 100,
            ..Limits::default()
        };
        let store = BlobStore::new(Arc::new(InMemory::new()), limits);
        let pieces = [Ok(bytes(60, 1)), Ok(bytes(41, 2))];
        let error = store
            .put_stream(stream::iter(pieces).boxed())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::TooLarge(m) if m.contains("limit of 100 bytes")),
            "{error}"
        );
        let exact = stream::iter([Ok(bytes(100, 3))]).boxed();
        assert_eq!(store.put_stream(exact).await.unwrap().1, 100);
    }

    #[tokio::test]
    async fn an_edit_in_the_middle_stores_only_the_chunks_it_touched() {
        let store = store();
        let mut data = bytes(20 << 20, 11).to_vec();
        let first = store.put_bytes(Bytes::from(data.clone())).await.unwrap();
        data[10 << 20..(10 << 20) + 100].fill(0xAA);
        let second = store.put_bytes(Bytes::from(data)).await.unwrap();
        assert_ne!(first.hash, second.hash);
        let manifest_bytes = 8 + 40 * second.chunks.len() as u64;
        // The touched chunk, perhaps its neighbour, and the new manifest.
        assert!(
            second.stored_bytes <= 2 * MAX_CHUNK as u64 + manifest_bytes,
            "stored {} of {} bytes",
            second.stored_bytes,
            second.size
        );
        let reused = second
            .chunks
            .iter()
            .filter(|c| first.chunks.contains(c))
            .count();
        assert!(
            reused + 2 >= second.chunks.len(),
            "{reused} of {} chunks reused",
            second.chunks.len()
        );
    }

    #[tokio::test]
    async fn a_wrong_expected_hash_makes_nothing_visible() {
        let store = store();
        let wrong = Hash::of(b"something else");
        for len in [10, 9 << 20] {
            let data = bytes(len, 5);
            let mut upload = store.upload(len as u64).unwrap();
            upload.push(data.clone()).await.unwrap();
            let error = upload.finish(Some(wrong)).await.unwrap_err();
            assert!(
                matches!(&error, StoreError::InvalidArgument(m) if m.contains("expected_hash")),
                "{error}"
            );
            let actual = blob_hash(&data);
            assert_eq!(
                store.missing_hashes(&[actual, wrong]).await.unwrap(),
                [actual, wrong]
            );
            // The right expectation is accepted.
            let mut upload = store.upload(len as u64).unwrap();
            upload.push(data).await.unwrap();
            assert_eq!(upload.finish(Some(actual)).await.unwrap().hash, actual);
        }
    }

    #[tokio::test]
    async fn sizes_are_checked_against_the_header_and_the_limit() {
        let limits = Limits {
            max_blob_bytes: 100,
            ..Limits::default()
        };
        let store = BlobStore::new(Arc::new(InMemory::new()), limits);
        let error = store.upload(101).err().unwrap();
        assert!(
            matches!(&error, StoreError::TooLarge(m) if m.contains("limit of 100 bytes")),
            "{error}"
        );
        let mut upload = store.upload(10).unwrap();
        let error = upload.push(bytes(11, 1)).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::InvalidArgument(m) if m.contains("10 bytes announced")),
            "{error}"
        );
        let mut upload = store.upload(10).unwrap();
        upload.push(bytes(9, 1)).await.unwrap();
        let error = upload.finish(None).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::InvalidArgument(m) if m.contains("after 9 of the 10 bytes")),
            "{error}"
        );
        let error = store.put_bytes(bytes(101, 1)).await.unwrap_err();
        assert!(matches!(error, StoreError::TooLarge(_)));
    }

    #[tokio::test]
    async fn an_abandoned_upload_leaves_the_blob_invisible() {
        let store = store();
        let data = bytes(20 << 20, 9);
        let hash = blob_hash(&data);
        let mut upload = store.upload(data.len() as u64).unwrap();
        upload.push(data.slice(..12 << 20)).await.unwrap();
        drop(upload);
        assert_eq!(store.missing_hashes(&[hash]).await.unwrap(), [hash]);
        assert!(matches!(
            store.stat(&hash).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.read_range(&hash, 0, 0).await.err(),
            Some(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn corruption_is_data_loss_naming_the_object() {
        let store = store();
        let data = bytes(9 << 20, 13);
        let outcome = store.put_bytes(data.clone()).await.unwrap();
        let (victim, size) = outcome.chunks[1];
        let path = chunk_path(&victim);
        let original = store
            .objects
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut flipped = original.to_vec();
        flipped[size as usize / 2] ^= 1;
        let damages = [
            ("flipped", Some(Bytes::from(flipped))),
            ("truncated", Some(original.slice(..original.len() - 1))),
            ("missing", None),
        ];
        for (what, damage) in damages {
            match damage {
                Some(bytes) => {
                    store.objects.put(&path, bytes.into()).await.unwrap();
                }
                None => store.objects.delete(&path).await.unwrap(),
            }
            let error = store.get_bytes(&outcome.hash).await.unwrap_err();
            assert!(
                matches!(&error, StoreError::Corrupt { object, .. } if *object == path.to_string()),
                "{what}: {error}"
            );
            // A range that avoids the damaged chunk still reads.
            assert_eq!(
                read(&store, &outcome.hash, 0, 100).await.unwrap(),
                data.slice(..100)
            );
        }

        let small = store.put_bytes(bytes(1000, 2)).await.unwrap().hash;
        store
            .objects
            .put(&chunk_path(&small), bytes(1000, 3).into())
            .await
            .unwrap();
        let error = store.get_bytes(&small).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt { object, .. } if *object == chunk_path(&small).to_string()),
            "{error}"
        );

        let manifest = manifest_path(&outcome.hash);
        let mut encoded = store
            .objects
            .get(&manifest)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        encoded[20] ^= 1;
        store
            .objects
            .put(&manifest, Bytes::from(encoded).into())
            .await
            .unwrap();
        // This store verified the manifest when it wrote it and keeps it; a store that never
        // saw it reads the damaged object and refuses it.
        let other = BlobStore::new(store.objects.clone(), Limits::default());
        for error in [
            other.get_bytes(&outcome.hash).await.unwrap_err(),
            other.stat(&outcome.hash).await.unwrap_err(),
        ] {
            assert!(
                matches!(&error, StoreError::Corrupt { object, .. } if *object == manifest.to_string()),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn known_manifests_spare_the_object_store_round_trips() {
        let store = store();
        let data = bytes(9 << 20, 21);
        let hash = store.put_bytes(data.clone()).await.unwrap().hash;
        // Gone from the backend (as after garbage collection): reads still have the verified
        // list of chunks, but existence is always the backend's answer.
        store.objects.delete(&manifest_path(&hash)).await.unwrap();
        assert_eq!(store.get_bytes(&hash).await.unwrap(), data);
        assert!(matches!(
            store.stat(&hash).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.missing_hashes(&[hash]).await.unwrap(), [hash]);
        // With the cache off, the backend is asked every time.
        let uncached = Limits {
            manifest_cache_bytes: 0,
            ..Limits::default()
        };
        let store = BlobStore::new(store.objects.clone(), uncached);
        let hash = store.put_bytes(bytes(9 << 20, 22)).await.unwrap().hash;
        store.objects.delete(&manifest_path(&hash)).await.unwrap();
        assert!(matches!(
            store.get_bytes(&hash).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn has_blobs_knows_chunks_and_blobs_and_bounds_the_batch() {
        let limits = Limits {
            max_batch: 3,
            ..Limits::default()
        };
        let store = BlobStore::new(Arc::new(InMemory::new()), limits);
        let big = store.put_bytes(bytes(9 << 20, 4)).await.unwrap();
        let absent = Hash::of(b"absent");
        let asked = [absent, big.hash, big.chunks[0].0];
        assert_eq!(store.missing_hashes(&asked).await.unwrap(), [absent]);
        let error = store.missing_hashes(&[absent; 4]).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::InvalidArgument(m) if m.contains("limit of 3")),
            "{error}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_share_the_write_budget_and_all_finish() {
        // A budget of one chunk: concurrent uploads take turns writing and none waits forever.
        let limits = Limits {
            upload_buffer_bytes: MAX_CHUNK,
            ..Limits::default()
        };
        let store = BlobStore::new(Arc::new(InMemory::new()), limits);
        let uploads = (0..4u64).map(|seed| {
            let store = store.clone();
            let data = bytes(30 << 20, 100 + seed);
            async move {
                let pieces = data.chunks(1 << 20).map(|p| Ok(Bytes::copy_from_slice(p)));
                let (hash, size) = store
                    .put_stream(futures::stream::iter(pieces.collect::<Vec<_>>()).boxed())
                    .await
                    .unwrap();
                (hash, size, data)
            }
        });
        for (hash, size, data) in futures::future::join_all(uploads).await {
            assert_eq!((hash, size), (blob_hash(&data), data.len() as u64));
            assert_eq!(store.get_bytes(&hash).await.unwrap(), data);
        }
        assert_eq!(store.write_budget.available_permits(), MAX_CHUNK);
    }
}
