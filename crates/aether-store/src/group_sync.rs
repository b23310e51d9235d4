//! Group commit for the local filesystem backend.
//!
//! Objects are written and linked into place without an fsync of their own; a write is
//! acknowledged once a `syncfs(2)` that started after it has finished. Concurrent writes share
//! one sync, so a batch of small objects costs one flush instead of one per object (12 × 4 KiB
//! objects, measured here: 2.5–3.8 ms with an fsync each, 1.2 ms written then one syncfs).
//! syncfs also makes the directory entries durable, which an fsync of the file alone does not.
//!
//! A read that finds an object (`head`, `get`, a create that finds it already there) while
//! some write is not yet synced waits for the next sync too: an object another writer has
//! linked but not synced must not be reported as stored and then referenced by a commit that
//! outlives a power loss the object does not.
//!
//! The cost: syncfs flushes every dirty page of the filesystem, other programs' too. On a
//! filesystem shared with heavy writers, `--local-sync object` (an fsync per object) bounds
//! each write's flush to its own file.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

/// How long a sync waits for writes in progress to finish before it starts without them.
const MAX_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Flushes everything written so far to stable storage.
pub type Flush = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// The flush of the filesystem holding `dir`: `syncfs(2)` on it.
pub fn syncfs_of(dir: &std::path::Path) -> std::io::Result<Flush> {
    let dir = std::fs::File::open(dir)?;
    Ok(Arc::new(move || {
        nix::unistd::syncfs(&dir).map_err(std::io::Error::from)
    }))
}

/// Tickets order writes and syncs: a sync covers every ticket issued before it started.
struct SyncGroup {
    flush: Flush,
    /// Tickets issued so far.
    issued: AtomicU64,
    /// Writes started whose ticket is not issued yet.
    writing: AtomicU64,
    /// The highest ticket of a finished write.
    last_write: AtomicU64,
    /// Every ticket up to this one is covered by a finished sync.
    synced: AtomicU64,
    /// Syncs run one at a time; callers queued behind one are often covered by the next.
    running: tokio::sync::Mutex<()>,
    /// Notified when no write is in progress.
    idle: tokio::sync::Notify,
    /// Syncs run so far.
    flushes: AtomicU64,
}

impl SyncGroup {
    fn ticket(&self) -> u64 {
        self.issued.fetch_add(1, SeqCst) + 1
    }

    /// Returns once a sync that started after `ticket` was issued has finished.
    async fn wait(&self, ticket: u64) -> Result<()> {
        if self.synced.load(SeqCst) >= ticket {
            return Ok(());
        }
        let _running = self.running.lock().await;
        if self.synced.load(SeqCst) >= ticket {
            return Ok(());
        }
        self.writes_settle().await;
        let covers = self.issued.load(SeqCst);
        let flush = self.flush.clone();
        tokio::task::spawn_blocking(move || flush())
            .await
            .map_err(|e| generic(std::io::Error::other(e)))?
            .map_err(generic)?;
        self.flushes.fetch_add(1, SeqCst);
        self.synced.fetch_max(covers, SeqCst);
        Ok(())
    }

    /// Waits, at most [`MAX_LINGER`], for the writes in progress to finish, so that one sync
    /// covers a whole batch instead of its first write alone and then the rest.
    async fn writes_settle(&self) {
        let deadline = tokio::time::Instant::now() + MAX_LINGER;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.writing.load(SeqCst) == 0 {
                return;
            }
            tokio::select! {
                _ = idle => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    fn write_ended(&self) {
        if self.writing.fetch_sub(1, SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// A write is about to start; it counts as unsynced from now on.
    fn start_write(self: &Arc<Self>) -> PendingWrite {
        self.writing.fetch_add(1, SeqCst);
        PendingWrite(Some(self.clone()))
    }

    /// Something already stored was observed: waits until nothing unsynced could be it.
    async fn observed(&self) -> Result<()> {
        if self.writing.load(SeqCst) == 0
            && self.last_write.load(SeqCst) <= self.synced.load(SeqCst)
        {
            return Ok(());
        }
        self.wait(self.ticket()).await
    }
}

/// A write in progress; `finished` issues its ticket.
struct PendingWrite(Option<Arc<SyncGroup>>);

impl PendingWrite {
    fn finished(mut self) -> (Arc<SyncGroup>, u64) {
        let group = self.0.take().expect("finished once");
        let ticket = group.ticket();
        group.last_write.fetch_max(ticket, SeqCst);
        group.write_ended();
        (group, ticket)
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            group.write_ended();
        }
    }
}

fn generic(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(std::io::Error::new(
            e.kind(),
            format!("syncing the filesystem failed: {e}"),
        )),
    }
}

/// An object store whose writes are acknowledged durable by group commit (see the module doc).
/// The inner store must not sync on its own.
pub struct GroupSynced<S> {
    inner: S,
    group: Arc<SyncGroup>,
}

impl<S: ObjectStore> GroupSynced<S> {
    pub fn new(inner: S, flush: Flush) -> Self {
        Self {
            inner,
            group: Arc::new(SyncGroup {
                flush,
                issued: AtomicU64::new(0),
                writing: AtomicU64::new(0),
                last_write: AtomicU64::new(0),
                synced: AtomicU64::new(0),
                running: tokio::sync::Mutex::new(()),
                idle: tokio::sync::Notify::new(),
                flushes: AtomicU64::new(0),
            }),
        }
    }

    /// Syncs run so far.
    pub fn flushes(&self) -> u64 {
        self.group.flushes.load(SeqCst)
    }
}

impl<S> fmt::Display for GroupSynced<S>
where
    S: fmt::Display,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupSynced({})", self.inner)
    }
}

impl<S> fmt::Debug for GroupSynced<S>
where
    S: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupSynced")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for GroupSynced<S> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let write = self.group.start_write();
        match self.inner.put_opts(location, payload, opts).await {
            Ok(result) => {
                let (group, ticket) = write.finished();
                group.wait(ticket).await?;
                Ok(result)
            }
            Err(
                e @ (object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }),
            ) => {
                drop(write);
                self.group.observed().await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(GroupSyncedUpload {
            inner,
            group: self.group.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let result = self.inner.get_opts(location, options).await?;
        self.group.observed().await?;
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let result = self.inner.get_ranges(location, ranges).await?;
        self.group.observed().await?;
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let write = self.group.start_write();
        self.inner.copy_opts(from, to, options).await?;
        let (group, ticket) = write.finished();
        group.wait(ticket).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let write = self.group.start_write();
        self.inner.rename_opts(from, to, options).await?;
        let (group, ticket) = write.finished();
        group.wait(ticket).await
    }
}

/// A multipart upload acknowledged like a put: on `complete`, after a sync.
#[derive(Debug)]
struct GroupSyncedUpload {
    inner: Box<dyn MultipartUpload>,
    group: Arc<SyncGroup>,
}

impl fmt::Debug for SyncGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncGroup")
            .field("synced", &self.synced.load(SeqCst))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MultipartUpload for GroupSyncedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let write = self.group.start_write();
        let result = self.inner.complete().await?;
        let (group, ticket) = write.finished();
        group.wait(ticket).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutMode};

    use super::*;

    /// A flush that counts itself and, while `hold` is set, blocks until it is cleared.
    fn counting_flush() -> (Flush, Arc<AtomicU64>, Arc<AtomicBool>) {
        let count = Arc::new(AtomicU64::new(0));
        let hold = Arc::new(AtomicBool::new(false));
        let (c, h) = (count.clone(), hold.clone());
        let flush: Flush = Arc::new(move || {
            while h.load(SeqCst) {
                std::thread::yield_now();
            }
            c.fetch_add(1, SeqCst);
            Ok(())
        });
        (flush, count, hold)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_write_waits_for_a_sync_and_concurrent_writes_share_them() {
        let (flush, count, _) = counting_flush();
        let store = Arc::new(GroupSynced::new(InMemory::new(), flush));
        store.put(&Path::from("a"), "a".into()).await.unwrap();
        assert_eq!(
            count.load(SeqCst),
            1,
            "a lone write is synced before it returns"
        );

        let writes: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .put(&Path::from(format!("o{i}")), vec![i as u8; 64].into())
                        .await
                })
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        let syncs = count.load(SeqCst) - 1;
        assert!(syncs >= 1, "64 writes need at least one sync");
        assert!(
            syncs < 64,
            "64 concurrent writes shared syncs, but {syncs} ran"
        );
        assert_eq!(store.flushes(), count.load(SeqCst));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_wait_only_while_something_is_unsynced() {
        let (flush, count, hold) = counting_flush();
        let store = Arc::new(GroupSynced::new(InMemory::new(), flush));
        store.put(&Path::from("old"), "old".into()).await.unwrap();
        let before = count.load(SeqCst);
        store.head(&Path::from("old")).await.unwrap();
        store.get(&Path::from("old")).await.unwrap();
        assert_eq!(count.load(SeqCst), before, "idle reads cost no sync");

        // A write whose sync is held: the object is visible but not yet durable.
        hold.store(true, SeqCst);
        let written_before = store.group.last_write.load(SeqCst);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move { store.put(&Path::from("new"), "new".into()).await })
        };
        while store.group.last_write.load(SeqCst) == written_before {
            tokio::task::yield_now().await;
        }
        let create = {
            let store = store.clone();
            tokio::spawn(async move {
                let opts = PutOptions::from(PutMode::Create);
                store.put_opts(&Path::from("new"), "new".into(), opts).await
            })
        };
        // Neither the writer nor the create that found the object may finish before a sync.
        tokio::task::yield_now().await;
        assert!(!writer.is_finished() && !create.is_finished());
        hold.store(false, SeqCst);
        writer.await.unwrap().unwrap();
        let found = create.await.unwrap();
        assert!(matches!(
            found,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        assert!(count.load(SeqCst) > before);
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_write() {
        let flush: Flush = Arc::new(|| Err(std::io::Error::other("disk on fire")));
        let store = GroupSynced::new(InMemory::new(), flush);
        let error = store.put(&Path::from("a"), "a".into()).await.unwrap_err();
        assert!(error.to_string().contains("disk on fire"), "{error}");
    }

    #[tokio::test]
    async fn syncfs_works_on_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let store = GroupSynced::new(local, syncfs_of(dir.path()).unwrap());
        store.put(&Path::from("x/y"), "data".into()).await.unwrap();
        assert_eq!(store.flushes(), 1);
        let read = store.get(&Path::from("x/y")).await.unwrap().bytes().await;
        assert_eq!(read.unwrap(), "data");
    }
}
