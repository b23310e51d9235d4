//! Builds the `object_store` backend from configuration: the local filesystem by default,
//! S3-compatible for clusters, memory for tests.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::group_sync::{syncfs_of, GroupSynced};

/// Default for `--s3-timeout-secs`: an outage turns into UNAVAILABLE within a few seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 5;

/// Which backend holds the objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Files under --data-dir.
    Local,
    /// An S3-compatible server.
    S3,
    /// Process memory (tests only: lost on exit).
    Memory,
}

/// How the local backend makes a write durable before acknowledging it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LocalSync {
    /// Concurrent writes share one `syncfs` of the data directory's filesystem (group commit,
    /// see [`crate::group_sync`]). Fastest; also flushes other programs' writes there.
    Group,
    /// Each object is fsynced on its own before it is linked into place.
    Object,
}

/// Object store flags, shared by every service that keeps objects.
#[derive(Clone, Debug, clap::Args)]
pub struct BackendArgs {
    /// Where objects live.
    #[arg(
        long,
        env = "AETHER_STORE_BACKEND",
        value_enum,
        default_value = "local"
    )]
    pub store_backend: BackendKind,
    /// Directory for the local backend.
    #[arg(long, env = "AETHER_DATA_DIR", default_value = "./aether-data")]
    pub data_dir: std::path::PathBuf,
    /// How the local backend makes writes durable: `group` (one syncfs shared by concurrent
    /// writes) or `object` (an fsync per object; for a filesystem shared with heavy writers).
    #[arg(long, env = "AETHER_LOCAL_SYNC", value_enum, default_value = "group")]
    pub local_sync: LocalSync,
    /// S3 endpoint, e.g. http://127.0.0.1:9000 (empty for AWS).
    #[arg(long, env = "AETHER_S3_ENDPOINT", default_value = "")]
    pub s3_endpoint: String,
    /// S3 bucket.
    #[arg(long, env = "AETHER_S3_BUCKET", default_value = "aetherfs")]
    pub s3_bucket: String,
    /// S3 region.
    #[arg(long, env = "AETHER_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// S3 access key id.
    #[arg(long, env = "AETHER_S3_ACCESS_KEY", default_value = "")]
    pub s3_access_key: String,
    /// S3 secret access key.
    #[arg(
        long,
        env = "AETHER_S3_SECRET_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub s3_secret_key: String,
    /// Allow plain http to the S3 endpoint (local S3 servers).
    #[arg(long, env = "AETHER_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,
    /// Time budget of one object store call, retries included, in seconds: past it the call
    /// fails as UNAVAILABLE. Objects are at most a few MiB, so a healthy server needs far less.
    #[arg(long, env = "AETHER_S3_TIMEOUT_SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub s3_timeout_secs: u64,
}

impl BackendArgs {
    /// The local backend rooted at `dir`.
    pub fn local(dir: std::path::PathBuf) -> Self {
        Self {
            store_backend: BackendKind::Local,
            data_dir: dir,
            local_sync: LocalSync::Group,
            s3_endpoint: String::new(),
            s3_bucket: "aetherfs".into(),
            s3_region: "us-east-1".into(),
            s3_access_key: String::new(),
            s3_secret_key: String::new(),
            s3_allow_http: false,
            s3_timeout_secs: DEFAULT_TIMEOUT_SECS,
        }
    }

    /// Builds the backend, rooted at `subdir` of the data dir for the local backend and under
    /// the `subdir/` prefix for the others.
    pub fn build(&self, subdir: &str) -> Result<Arc<dyn ObjectStore>, String> {
        let store: Arc<dyn ObjectStore> = match self.store_backend {
            BackendKind::Local => {
                let dir = self.data_dir.join(subdir);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
                let local = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| format!("cannot use {}: {e}", dir.display()))?;
                // Acknowledged means durable (promise 1): survive power loss too.
                match self.local_sync {
                    LocalSync::Object => Arc::new(local.with_fsync(true)),
                    LocalSync::Group => {
                        let flush = syncfs_of(&dir)
                            .map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
                        Arc::new(GroupSynced::new(local, flush))
                    }
                }
            }
            BackendKind::Memory => Arc::new(InMemory::new()),
            BackendKind::S3 => {
                let timeout = Duration::from_secs(self.s3_timeout_secs.max(1));
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&self.s3_bucket)
                    .with_region(&self.s3_region)
                    .with_allow_http(self.s3_allow_http)
                    .with_virtual_hosted_style_request(false)
                    .with_client_options(
                        ClientOptions::new()
                            .with_timeout(timeout)
                            .with_connect_timeout(Duration::from_secs(2))
                            .with_allow_http(self.s3_allow_http),
                    )
                    // Transient errors (5xx, throttling, dropped connections) are retried
                    // with backoff inside object_store, but no retry starts once the timeout
                    // has passed: a server that stops answering costs one timeout, not four.
                    // What is left after that reaches callers as UNAVAILABLE.
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: Duration::from_millis(50),
                            max_backoff: Duration::from_secs(1),
                            base: 2.0,
                        },
                        max_retries: 3,
                        retry_timeout: timeout,
                    });
                if !self.s3_endpoint.is_empty() {
                    builder = builder.with_endpoint(&self.s3_endpoint);
                }
                if !self.s3_access_key.is_empty() {
                    builder = builder
                        .with_access_key_id(&self.s3_access_key)
                        .with_secret_access_key(&self.s3_secret_key);
                }
                let s3 = builder
                    .build()
                    .map_err(|e| format!("invalid S3 configuration: {e}"))?;
                Arc::new(object_store::prefix::PrefixStore::new(s3, subdir))
            }
        };
        Ok(store)
    }
}
