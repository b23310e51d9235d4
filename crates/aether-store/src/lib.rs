//! The content store: every byte of AetherFS, as immutable blobs named by BLAKE3-256.
//!
//! - [`backend`] builds the `object_store` backend (local filesystem, S3-compatible, memory).
//! - [`group_sync`] makes local writes durable by group commit (one `syncfs` per batch).
//! - [`blobs`] is the store itself: FastCDC chunking, deduplication, verification on read.
//! - [`limits`] bounds what one request may ask (flags `--store-*`, `AETHER_STORE_*`).
//! - [`service`] is the `ContentService` gRPC adapter over it.
//! - [`remote`] is the client other services use to reach a store process.
//!
//! Promises kept here (design §4): 1 — a blob is acknowledged only once every object it needs
//! is written, and an upload that fails or is abandoned leaves nothing visible; 5 — every read
//! is verified against its hash and fails with `DATA_LOSS` instead of returning wrong bytes;
//! 6 — sizes are bounded and each limit is named in the error that enforces it.

pub mod backend;
pub mod blobs;
mod cache;
pub mod error;
pub mod gc;
pub mod group_sync;
pub mod limits;
pub mod remote;
pub mod service;
mod task;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use aether_core::Hash;
pub use blobs::BlobStore;
pub use error::StoreError;
pub use limits::{Limits, LimitsArgs};
pub use remote::RemoteBlobs;

/// Blob access as the coordinator and bus need it, in-process or over gRPC.
#[async_trait]
pub trait Blobs: Send + Sync + 'static {
    /// Stores a whole blob and returns its name.
    async fn put(&self, data: Bytes) -> Result<Hash, StoreError>;

    /// Stores a blob whose bytes arrive as pieces of any size, its total not known in
    /// advance, and returns its name and size. Memory stays bounded by a few chunks whatever
    /// the blob's size (the pieces are pulled as the store takes them: back-pressure), and the
    /// name is the one [`Blobs::put`] gives the same bytes. An `Err` from `data` abandons the
    /// upload and is returned as it came; the blob is then not stored (chunks already
    /// written are unreferenced garbage for GC).
    async fn put_stream(
        &self,
        data: BoxStream<'_, Result<Bytes, StoreError>>,
    ) -> Result<(Hash, u64), StoreError>;

    /// Reads a whole blob, verified.
    async fn get(&self, hash: &Hash) -> Result<Bytes, StoreError>;

    /// Streams `length` bytes (0 = to the end) from `offset`, verified.
    async fn read(
        &self,
        hash: &Hash,
        offset: u64,
        length: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError>;

    /// The blob's size in bytes.
    async fn size(&self, hash: &Hash) -> Result<u64, StoreError>;

    /// The subset of `hashes` the store does not hold, in input order.
    async fn missing(&self, hashes: &[Hash]) -> Result<Vec<Hash>, StoreError>;
}
