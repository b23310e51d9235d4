//! Where file bytes live on the mounting machine.
//!
//! - The *staging* ([`super::staging`]) holds what was written through the mount, per inode,
//!   until its content is in the session (and after, as the local copy). It is this mount's
//!   own and is removed when the mount ends.
//! - The *cache* holds session content by hash. Content is immutable, so a cached file is
//!   always valid and is shared by every mount on the machine that uses the same directory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use aether_client::{Rev, SessionHandle};

/// Session content cached on this machine.
pub struct LocalContent {
    cache: PathBuf,
}

impl LocalContent {
    /// Creates (or reuses) the directory.
    pub fn open(cache: PathBuf) -> std::io::Result<LocalContent> {
        std::fs::create_dir_all(&cache)?;
        Ok(LocalContent { cache })
    }

    /// The cached file of `hash`, if present and `size` bytes long. Hashes come from the
    /// session: only hex is used as a file name. A file is cached only once its content was
    /// checked against its hash, but without an fsync (a cache is not worth one per file), so
    /// after a crash of the machine a cached file may be cut short: its size is checked on
    /// every use, and one of the wrong size is fetched again.
    pub fn cached(&self, hash: &str, size: u64) -> Option<PathBuf> {
        if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self.cache.join(hash);
        let metadata = std::fs::symlink_metadata(&path).ok()?;
        (metadata.is_file() && metadata.len() == size).then_some(path)
    }

    /// Reads the file at `path` of the session head into the cache; returns the hash the
    /// session reported (which names the cached file) and the file's size.
    pub async fn fetch(
        &self,
        session: &SessionHandle,
        path: &str,
    ) -> aether_client::Result<(String, u64)> {
        let mut stream = session.open_read(path, &Rev::Head, 0, 0).await?;
        let temp = tempfile::NamedTempFile::new_in(&self.cache)
            .map_err(|e| aether_client::Error::io(&self.cache, e))?;
        let mut file = temp
            .reopen()
            .map_err(|e| aether_client::Error::io(temp.path(), e))?;
        let mut entry = None;
        let mut size = 0u64;
        while let Some(message) = stream.message().await? {
            if entry.is_none() {
                entry = message.entry;
            }
            file.write_all(&message.data)
                .map_err(|e| aether_client::Error::io(temp.path(), e))?;
            size += message.data.len() as u64;
        }
        let Some(entry) = entry else {
            return Err(aether_client::Error::Status {
                code: tonic::Code::Internal,
                message: format!("ReadFile of \"{path}\" sent no entry"),
            });
        };
        if !entry.hash.bytes().all(|b| b.is_ascii_hexdigit()) || entry.hash.len() != 64 {
            return Err(aether_client::Error::Status {
                code: tonic::Code::Internal,
                message: format!("ReadFile of \"{path}\" named content {:?}", entry.hash),
            });
        }
        // What the cache holds is trusted by every later read of every mount sharing it:
        // only content that is what the session names goes in.
        let (actual, actual_size) = aether_client::content_hash(temp.path()).await?;
        if actual.to_hex() != entry.hash || actual_size != entry.size || size != entry.size {
            return Err(aether_client::Error::Status {
                code: tonic::Code::DataLoss,
                message: format!(
                    "ReadFile of \"{path}\" sent {size} bytes hashing to {actual} where the session names {} of {} bytes; not cached",
                    entry.hash, entry.size
                ),
            });
        }
        let target = self.cache.join(&entry.hash);
        temp.persist(&target)
            .map_err(|e| aether_client::Error::io(&target, e.error))?;
        Ok((entry.hash, size))
    }
}

/// Opens a file for reading and writing without following symlinks.
pub fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}
