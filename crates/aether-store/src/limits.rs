//! The store's explicit bounds (design §4, promise 6): what one request may ask of it, and the
//! memory it may use for it. Each is a flag with an `AETHER_STORE_*` variable, and each error
//! that enforces one names its value.

/// Bounds on what one request may ask of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest blob accepted by PutBlob (RESOURCE_EXHAUSTED beyond it).
    pub max_blob_bytes: u64,
    /// Largest gRPC message accepted or sent (RESOURCE_EXHAUSTED beyond it).
    pub max_message_bytes: usize,
    /// Size of the data messages GetBlob sends.
    pub stream_chunk_bytes: usize,
    /// Most hashes in one HasBlobs call (INVALID_ARGUMENT beyond it).
    pub max_batch: usize,
    /// Object reads or writes in flight per request.
    pub concurrency: usize,
    /// Bytes of verified manifests kept in memory (0 turns the cache off).
    pub manifest_cache_bytes: usize,
    /// Bytes of chunks being written at once, across every upload of the process: past it an
    /// upload waits for a write to finish (and so stops reading its stream) instead of
    /// holding more. At least one chunk (8 MiB).
    pub upload_buffer_bytes: usize,
}

/// Room for the framing around the data of a stream message (field tags, offset).
const MESSAGE_OVERHEAD: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blob_bytes: 4 * 1024 * 1024 * 1024,
            max_message_bytes: 4 * 1024 * 1024 + 64 * 1024,
            stream_chunk_bytes: 1024 * 1024,
            max_batch: 10_000,
            concurrency: 8,
            manifest_cache_bytes: 16 * 1024 * 1024,
            upload_buffer_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Checks that the limits fit together; Err says which flag to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_message_bytes < 64 * 1024 {
            return Err(format!(
                "--store-max-message-bytes {} is too small: it must be at least 65536",
                self.max_message_bytes
            ));
        }
        if self.stream_chunk_bytes == 0
            || self.stream_chunk_bytes + MESSAGE_OVERHEAD > self.max_message_bytes
        {
            return Err(format!(
                "--store-stream-chunk-bytes {} must be between 1 and --store-max-message-bytes ({}) minus {MESSAGE_OVERHEAD}",
                self.stream_chunk_bytes, self.max_message_bytes
            ));
        }
        if self.max_batch == 0 {
            return Err("--store-max-batch must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("--store-concurrency must be at least 1".into());
        }
        let chunk = crate::blobs::MAX_CHUNK;
        if self.upload_buffer_bytes < chunk || self.upload_buffer_bytes > u32::MAX as usize {
            return Err(format!(
                "--store-upload-buffer-bytes {} must be between one chunk ({chunk}) and {}",
                self.upload_buffer_bytes,
                u32::MAX
            ));
        }
        Ok(())
    }
}

/// The limits as `aetherd store` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct LimitsArgs {
    /// Largest blob PutBlob accepts, in bytes.
    #[arg(long, env = "AETHER_STORE_MAX_BLOB_BYTES", default_value_t = Limits::default().max_blob_bytes)]
    pub store_max_blob_bytes: u64,
    /// Largest gRPC message the store accepts or sends, in bytes (PutBlob data messages must fit).
    #[arg(long, env = "AETHER_STORE_MAX_MESSAGE_BYTES", default_value_t = Limits::default().max_message_bytes)]
    pub store_max_message_bytes: usize,
    /// Size of the data messages GetBlob sends, in bytes.
    #[arg(long, env = "AETHER_STORE_STREAM_CHUNK_BYTES", default_value_t = Limits::default().stream_chunk_bytes)]
    pub store_stream_chunk_bytes: usize,
    /// Most hashes in one HasBlobs request.
    #[arg(long, env = "AETHER_STORE_MAX_BATCH", default_value_t = Limits::default().max_batch)]
    pub store_max_batch: usize,
    /// Object reads or writes in flight per request.
    #[arg(long, env = "AETHER_STORE_CONCURRENCY", default_value_t = Limits::default().concurrency)]
    pub store_concurrency: usize,
    /// Bytes of verified chunk manifests kept in memory, to read large blobs with fewer
    /// object store round trips (0 turns the cache off).
    #[arg(long, env = "AETHER_STORE_MANIFEST_CACHE_BYTES", default_value_t = Limits::default().manifest_cache_bytes)]
    pub store_manifest_cache_bytes: usize,
    /// Bytes of chunks being written at once across all uploads; past it uploads wait (and
    /// stop reading their streams) rather than hold more.
    #[arg(long, env = "AETHER_STORE_UPLOAD_BUFFER_BYTES", default_value_t = Limits::default().upload_buffer_bytes)]
    pub store_upload_buffer_bytes: usize,
}

impl LimitsArgs {
    /// The validated limits; Err says which flag to change.
    pub fn limits(&self) -> Result<Limits, String> {
        let limits = Limits {
            max_blob_bytes: self.store_max_blob_bytes,
            max_message_bytes: self.store_max_message_bytes,
            stream_chunk_bytes: self.store_stream_chunk_bytes,
            max_batch: self.store_max_batch,
            concurrency: self.store_concurrency,
            manifest_cache_bytes: self.store_manifest_cache_bytes,
            upload_buffer_bytes: self.store_upload_buffer_bytes,
        };
        limits.validate()?;
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitsArgs,
    }

    #[test]
    fn flags_default_to_the_documented_limits() {
        let cli = Cli::try_parse_from(["store"]).unwrap();
        assert_eq!(cli.limits.limits().unwrap(), Limits::default());
    }

    #[test]
    fn flags_set_each_limit() {
        let cli = Cli::try_parse_from([
            "store",
            "--store-max-blob-bytes",
            "1000",
            "--store-max-message-bytes",
            "100000",
            "--store-stream-chunk-bytes",
            "4096",
            "--store-max-batch",
            "3",
            "--store-concurrency",
            "2",
            "--store-manifest-cache-bytes",
            "0",
            "--store-upload-buffer-bytes",
            "16777216",
        ])
        .unwrap();
        let limits = cli.limits.limits().unwrap();
        assert_eq!(
            limits,
            Limits {
                max_blob_bytes: 1000,
                max_message_bytes: 100_000,
                stream_chunk_bytes: 4096,
                max_batch: 3,
                concurrency: 2,
                manifest_cache_bytes: 0,
                upload_buffer_bytes: 16 * 1024 * 1024,
            }
        );
    }

    #[test]
    fn every_flag_has_an_aether_store_variable() {
        use clap::CommandFactory;
        let command = Cli::command();
        let mut names = Vec::new();
        for arg in command.get_arguments().filter(|a| a.get_long().is_some()) {
            let env = arg.get_env().expect("every limit flag has an env variable");
            let env = env.to_string_lossy().into_owned();
            let long = arg.get_long().unwrap().to_uppercase().replace('-', "_");
            assert_eq!(env, format!("AETHER_{long}"));
            names.push(env);
        }
        assert_eq!(names.len(), 7, "{names:?}");
    }

    #[test]
    fn inconsistent_limits_are_rejected_naming_the_flag() {
        let cli = Cli::try_parse_from([
            "store",
            "--store-max-message-bytes",
            "100000",
            "--store-stream-chunk-bytes",
            "100000",
        ])
        .unwrap();
        let error = cli.limits.limits().unwrap_err();
        assert!(error.contains("--store-stream-chunk-bytes"), "{error}");
        let cli = Cli::try_parse_from(["store", "--store-concurrency", "0"]).unwrap();
        assert!(cli
            .limits
            .limits()
            .unwrap_err()
            .contains("--store-concurrency"));
        let cli = Cli::try_parse_from(["store", "--store-upload-buffer-bytes", "1000"]).unwrap();
        assert!(cli
            .limits
            .limits()
            .unwrap_err()
            .contains("--store-upload-buffer-bytes"));
    }
}
