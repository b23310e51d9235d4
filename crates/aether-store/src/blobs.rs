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

use std::sync::Arc;

use aether_core::{ChunkManifest, Hash};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::{Blobs, StoreError};

/// FastCDC parameters. Chunks of ~1 MiB keep per-object overhead low on S3 while an edit in
/// the middle of a large file still re-stores only about 1 MiB.
pub const MIN_CHUNK: usize = 256 * 1024;
pub const AVG_CHUNK: usize = 1024 * 1024;
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;

/// Explicit bounds, reported in errors when exceeded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest blob accepted by PutBlob.
    pub max_blob_bytes: u64,
    /// Largest gRPC message accepted (and data message of a stream).
    pub max_message_bytes: usize,
    /// Size of data messages sent by GetBlob.
    pub stream_chunk_bytes: usize,
    /// Most hashes in one HasBlobs call.
    pub max_batch: usize,
    /// Chunk writes or reads in flight per blob.
    pub concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blob_bytes: 4 * 1024 * 1024 * 1024,
            max_message_bytes: 4 * 1024 * 1024 + 64 * 1024,
            stream_chunk_bytes: 1024 * 1024,
            max_batch: 10_000,
            concurrency: 8,
        }
    }
}

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
}

pub(crate) fn chunk_path(hash: &Hash) -> Path {
    let hex = hash.to_hex();
    Path::from(format!("chunks/{}/{}", &hex[..2], hex))
}

pub(crate) fn manifest_path(hash: &Hash) -> Path {
    let hex = hash.to_hex();
    Path::from(format!("manifests/{}/{}", &hex[..2], hex))
}

/// Cuts `data` into FastCDC chunks; `final_piece` says no more data follows, otherwise the
/// last cut is not yet known and the tail is left over. Returns chunk lengths.
pub fn cut_points(data: &[u8], final_piece: bool) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let rest = &data[start..];
        if !final_piece && rest.len() < MAX_CHUNK {
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

impl BlobStore {
    pub fn new(objects: Arc<dyn ObjectStore>, limits: Limits) -> Self {
        Self { objects, limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
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
            .put_opts(path, PutPayload::from_bytes(data), options)
            .await
        {
            Ok(_) => Ok(len),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(0),
            // Some backends answer a lost create race with a precondition failure.
            Err(object_store::Error::Precondition { .. }) => Ok(0),
            Err(e) => Err(StoreError::from_object_store(e, path.as_ref())),
        }
    }

    /// Stores one chunk (at most MAX_CHUNK bytes) and returns its name and bytes written.
    pub async fn put_chunk(&self, data: Bytes) -> Result<(Hash, u64), StoreError> {
        let hash = Hash::of(&data);
        let written = self.put_if_absent(&chunk_path(&hash), data).await?;
        Ok((hash, written))
    }

    /// Stores the manifest of a chunked blob: the step that makes the blob visible.
    pub async fn put_manifest(&self, manifest: &ChunkManifest) -> Result<(Hash, u64), StoreError> {
        let hash = manifest.hash();
        let written = self
            .put_if_absent(&manifest_path(&hash), Bytes::from(manifest.encode()))
            .await?;
        Ok((hash, written))
    }

    /// Stores a whole blob held in memory.
    pub async fn put_bytes(&self, data: Bytes) -> Result<PutOutcome, StoreError> {
        if data.len() as u64 > self.limits.max_blob_bytes {
            return Err(StoreError::TooLarge(format!(
                "blob of {} bytes exceeds the limit of {} bytes",
                data.len(),
                self.limits.max_blob_bytes
            )));
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        for length in cut_points(&data, true) {
            pieces.push(data.slice(start..start + length));
            start += length;
        }
        if pieces.is_empty() {
            pieces.push(Bytes::new());
        }
        let results: Vec<(Hash, u64, u64)> = stream::iter(pieces)
            .map(|piece| async move {
                let len = piece.len() as u64;
                self.put_chunk(piece).await.map(|(h, w)| (h, len, w))
            })
            .buffered(self.limits.concurrency)
            .try_collect()
            .await?;
        self.finish(results).await
    }

    /// Completes a put from its stored chunks: one chunk is the blob; more need a manifest.
    pub async fn finish(&self, chunks: Vec<(Hash, u64, u64)>) -> Result<PutOutcome, StoreError> {
        let size = chunks.iter().map(|c| c.1).sum();
        let mut stored_bytes: u64 = chunks.iter().map(|c| c.2).sum();
        let list: Vec<(Hash, u64)> = chunks.iter().map(|c| (c.0, c.1)).collect();
        let hash = if list.len() == 1 {
            list[0].0
        } else {
            let manifest = ChunkManifest {
                chunks: list.clone(),
            };
            let (hash, written) = self.put_manifest(&manifest).await?;
            stored_bytes += written;
            hash
        };
        Ok(PutOutcome {
            hash,
            size,
            chunks: list,
            stored_bytes,
        })
    }

    /// Reads and verifies one chunk.
    pub async fn get_chunk(&self, hash: &Hash) -> Result<Bytes, StoreError> {
        let path = chunk_path(hash);
        let data = self.read_object(&path).await?;
        verify(&path, hash, Hash::of(&data))?;
        Ok(data)
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

    /// How a blob is stored; `NotFound` if it is not.
    pub async fn layout(&self, hash: &Hash) -> Result<Layout, StoreError> {
        let path = manifest_path(hash);
        match self.read_object(&path).await {
            Ok(data) => {
                verify(&path, hash, aether_core::hash::manifest_hash(&data))?;
                let manifest = ChunkManifest::decode(&data).map_err(|e| StoreError::Corrupt {
                    object: path.to_string(),
                    detail: e.to_string(),
                })?;
                Ok(Layout::Chunked(manifest))
            }
            Err(StoreError::NotFound(_)) => {
                let chunk = chunk_path(hash);
                match self.objects.head(&chunk).await {
                    Ok(_) => Ok(Layout::Single),
                    Err(object_store::Error::NotFound { .. }) => {
                        Err(StoreError::NotFound(hash.to_hex()))
                    }
                    Err(e) => Err(StoreError::from_object_store(e, chunk.as_ref())),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Size of a blob, from its manifest or its one object.
    pub async fn stat(&self, hash: &Hash) -> Result<(u64, Layout), StoreError> {
        let layout = self.layout(hash).await?;
        let size = match &layout {
            Layout::Chunked(manifest) => manifest.total_size(),
            Layout::Single => {
                let path = chunk_path(hash);
                self.objects
                    .head(&path)
                    .await
                    .map_err(|e| StoreError::from_object_store(e, path.as_ref()))?
                    .size
            }
        };
        Ok((size, layout))
    }

    /// Which of `hashes` are neither a chunk nor a chunked blob here.
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
                for path in [chunk_path(&hash), manifest_path(&hash)] {
                    match self.objects.head(&path).await {
                        Ok(_) => return Ok(true),
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

    /// Streams a verified byte range of a blob: whole chunks are read and checked, then sliced.
    pub async fn read_range(
        &self,
        hash: &Hash,
        offset: u64,
        length: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        // Most blobs are one chunk: one GET, verified, answers the whole read.
        let single = chunk_path(hash);
        let layout = match self.read_object(&single).await {
            Ok(data) => {
                verify(&single, hash, Hash::of(&data))?;
                let size = data.len() as u64;
                check_range(hash, offset, length, size)?;
                let end = if length == 0 { size } else { offset + length };
                let piece = data.slice(offset as usize..end as usize);
                return Ok(stream::once(async move { Ok(piece) }).boxed());
            }
            Err(StoreError::NotFound(_)) => self.layout(hash).await?,
            Err(e) => return Err(e),
        };
        let size = match &layout {
            Layout::Chunked(manifest) => manifest.total_size(),
            // Written between our two reads.
            Layout::Single => return Box::pin(self.read_range(hash, offset, length)).await,
        };
        check_range(hash, offset, length, size)?;
        let end = if length == 0 { size } else { offset + length };
        let chunks = match layout {
            Layout::Single => vec![(*hash, size)],
            Layout::Chunked(manifest) => manifest.chunks,
        };
        // The chunks overlapping [offset, end), with the slice of each to return.
        let mut wanted = Vec::new();
        let mut position = 0u64;
        for (chunk, chunk_size) in chunks {
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
        let store = self.clone();
        let concurrency = self.limits.concurrency;
        Ok(stream::iter(wanted)
            .map(move |(chunk, chunk_size, from, to)| {
                let store = store.clone();
                async move {
                    let data = store.get_chunk(&chunk).await?;
                    if data.len() as u64 != chunk_size {
                        return Err(StoreError::Corrupt {
                            object: chunk_path(&chunk).to_string(),
                            detail: format!(
                                "manifest says {chunk_size} bytes, object holds {}",
                                data.len()
                            ),
                        });
                    }
                    Ok(data.slice(from..to))
                }
            })
            .buffered(concurrency)
            .boxed())
    }

    /// Reads a whole blob into memory.
    pub async fn get_bytes(&self, hash: &Hash) -> Result<Bytes, StoreError> {
        let mut stream = self.read_range(hash, 0, 0).await?;
        let mut first: Option<Bytes> = None;
        let mut buffer = BytesMut::new();
        while let Some(piece) = stream.try_next().await? {
            match first.take() {
                None if buffer.is_empty() => first = Some(piece),
                Some(previous) => {
                    buffer.extend_from_slice(&previous);
                    buffer.extend_from_slice(&piece);
                }
                None => buffer.extend_from_slice(&piece),
            }
        }
        // One-chunk blobs (the common case) are returned without a copy.
        Ok(first.unwrap_or_else(|| buffer.freeze()))
    }

    /// The backend, for tests and benchmarks that compare against raw calls.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }
}

fn check_range(hash: &Hash, offset: u64, length: u64, size: u64) -> Result<(), StoreError> {
    if offset > size || (length > 0 && offset.saturating_add(length) > size) {
        return Err(StoreError::OutOfRange {
            hash: hash.to_hex(),
            offset,
            length,
            size,
        });
    }
    Ok(())
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
