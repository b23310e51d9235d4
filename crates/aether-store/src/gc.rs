//! The sweep half of garbage collection (design promise 7): delete the chunks and manifests
//! that no live blob needs, once they are older than a grace period.
//!
//! The caller (the coordinator's mark phase) names the live blobs; this expands live manifests
//! into their chunks and deletes every other object older than `grace`. Objects younger than
//! the grace period are never deleted: that protects uploads in flight and trees written by a
//! change that has not committed yet. Content that deduplicates against an old unreferenced
//! object is protected by renewing that object's age when a writer relies on it (a put that
//! finds it already stored, or HasBlobs reporting it present).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_core::{ChunkManifest, Hash};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use crate::blobs::{chunk_path, manifest_path};
use crate::{BlobStore, StoreError};

/// A reused object older than this has its age renewed (see [`BlobStore::refresh_if_old`]).
pub const REFRESH_AFTER: Duration = Duration::from_secs(15 * 60);

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub live_objects: u64,
    pub kept_young: u64,
    pub deleted_objects: u64,
    pub deleted_bytes: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The hash an object path names, if it is a chunk or manifest path.
fn hash_of(path: &Path) -> Option<Hash> {
    let name = path.filename()?;
    Hash::from_hex(name).ok()
}

impl BlobStore {
    /// Deletes unreferenced chunks and manifests older than `grace`. `live` holds blob names
    /// (single-chunk blobs and manifests alike). Errors stop the sweep before any deletion
    /// whose safety depends on data it could not read.
    pub async fn sweep(
        &self,
        live: &HashSet<Hash>,
        grace: Duration,
    ) -> Result<SweepReport, StoreError> {
        let cutoff = now_ms() - grace.as_millis() as i64;
        let mut report = SweepReport::default();
        let live_chunks = self.live_chunks(live).await?;
        for prefix in ["chunks", "manifests"] {
            let listed: Vec<_> = self
                .objects()
                .list(Some(&Path::from(prefix)))
                .try_collect()
                .await
                .map_err(|e| StoreError::from_object_store(e, prefix))?;
            for meta in listed {
                let Some(hash) = hash_of(&meta.location) else {
                    continue;
                };
                let keep = if prefix == "chunks" {
                    live_chunks.contains(&hash)
                } else {
                    live.contains(&hash)
                };
                if keep {
                    report.live_objects += 1;
                } else if meta.last_modified.timestamp_millis() > cutoff {
                    report.kept_young += 1;
                } else {
                    self.delete_if_still_old(&meta, cutoff, &mut report).await?;
                }
            }
        }
        Ok(report)
    }

    /// The live blobs with the chunks of every live manifest: what a sweep keeps.
    async fn live_chunks(&self, live: &HashSet<Hash>) -> Result<HashSet<Hash>, StoreError> {
        let mut live_chunks: HashSet<Hash> = live.clone();
        // Every live manifest keeps its chunks.
        for hash in live {
            let path = manifest_path(hash);
            match self.objects().get(&path).await {
                Ok(result) => {
                    let bytes = result
                        .bytes()
                        .await
                        .map_err(|e| StoreError::from_object_store(e, path.as_ref()))?;
                    let manifest =
                        ChunkManifest::decode(&bytes).map_err(|e| StoreError::Corrupt {
                            object: path.to_string(),
                            detail: e.to_string(),
                        })?;
                    live_chunks.extend(manifest.chunks.iter().map(|(h, _)| *h));
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(StoreError::from_object_store(e, path.as_ref())),
            }
        }
        Ok(live_chunks)
    }

    /// Deletes one unreferenced object the listing showed older than `cutoff`, unless it has
    /// been renewed or removed since, and counts the outcome in `report`.
    async fn delete_if_still_old(
        &self,
        meta: &object_store::ObjectMeta,
        cutoff: i64,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        // Look again right before deleting: a writer may have renewed it since
        // the listing (object stores have no conditional delete to close this).
        match self.objects().head(&meta.location).await {
            Ok(now) if now.last_modified.timestamp_millis() > cutoff => {
                report.kept_young += 1;
                return Ok(());
            }
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            // Whether a writer renewed it is unknown: stop rather than delete it.
            Err(e) => return Err(StoreError::from_object_store(e, meta.location.as_ref())),
        }
        match self.objects().delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                report.deleted_objects += 1;
                report.deleted_bytes += meta.size;
                Ok(())
            }
            Err(e) => Err(StoreError::from_object_store(e, meta.location.as_ref())),
        }
    }

    /// Renews the age of one object if it is older than [`REFRESH_AFTER`], by writing its
    /// bytes again (`data` when the caller has them), so a sweep cannot delete content a
    /// writer has just decided to reuse.
    pub(crate) async fn refresh_path(
        &self,
        path: &Path,
        data: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let Some(bytes) = self.refresh_object(path, data).await? else {
            return Ok(());
        };
        // A renewed manifest is only as safe as its chunks: renew those too.
        if path.as_ref().starts_with("manifests/") {
            let manifest = ChunkManifest::decode(&bytes).map_err(|e| StoreError::Corrupt {
                object: path.to_string(),
                detail: e.to_string(),
            })?;
            for (chunk, _) in &manifest.chunks {
                self.refresh_object(&chunk_path(chunk), None).await?;
            }
        }
        Ok(())
    }

    /// Rewrites one object if it is old; returns its bytes when it did.
    async fn refresh_object(
        &self,
        path: &Path,
        data: Option<Bytes>,
    ) -> Result<Option<Bytes>, StoreError> {
        let meta = match self.objects().head(path).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(StoreError::from_object_store(e, path.as_ref())),
        };
        if !is_old(&meta) {
            return Ok(None);
        }
        let bytes = match data {
            Some(bytes) => bytes,
            None => self
                .objects()
                .get(path)
                .await
                .map_err(|e| StoreError::from_object_store(e, path.as_ref()))?
                .bytes()
                .await
                .map_err(|e| StoreError::from_object_store(e, path.as_ref()))?,
        };
        self.objects()
            .put(path, bytes.clone().into())
            .await
            .map_err(|e| StoreError::from_object_store(e, path.as_ref()))?;
        Ok(Some(bytes))
    }
}

/// Whether an object is old enough that a writer relying on it must renew it.
pub(crate) fn is_old(meta: &object_store::ObjectMeta) -> bool {
    meta.last_modified.timestamp_millis() < now_ms() - REFRESH_AFTER.as_millis() as i64
}
