//! Downloads of files and whole trees to the local filesystem, with their permission bits.
//!
//! A tree is listed once (every page from one root) and its files are then read at the same
//! revision, a few at a time. Paths from the server are checked to stay inside the target
//! directory before anything is written.

use std::path::{Component, Path, PathBuf};

use aether_proto as pb;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::revision::Rev;
use crate::session::SessionHandle;

/// Files read at once.
const CONCURRENCY: usize = 4;

/// What a download did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownloadReport {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}

/// `path` below `remote` (a session directory; empty for the root) as a relative local path,
/// refusing anything that could leave the target directory.
fn relative(remote: &str, path: &str) -> Result<PathBuf> {
    let rest = if remote.is_empty() {
        path
    } else {
        path.strip_prefix(remote)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the server listed {path:?}, which is not below {remote:?}"
                ))
            })?
    };
    let relative = PathBuf::from(rest);
    if rest.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Error::InvalidArgument(format!(
            "refusing to write the listed path {path:?} outside the target directory"
        )));
    }
    Ok(relative)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if mode == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))
        .map_err(|e| Error::io(path, e))
}

impl SessionHandle {
    /// Downloads one file to `local` (created or replaced), with its mode bits.
    pub async fn download_file(
        &self,
        path: &str,
        at: &Rev,
        local: &Path,
        progress: &dyn Progress,
    ) -> Result<pb::Entry> {
        self.download_one(path, at, local, progress, true).await
    }

    async fn download_one(
        &self,
        path: &str,
        at: &Rev,
        local: &Path,
        progress: &dyn Progress,
        announce: bool,
    ) -> Result<pb::Entry> {
        let file = tokio::fs::File::create(local)
            .await
            .map_err(|e| Error::io(local, e))?;
        let mut writer = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
        let entry = self
            .read_into(path, at, &mut writer, progress, announce)
            .await?;
        writer.flush().await.map_err(|e| Error::io(local, e))?;
        set_mode(local, entry.mode)?;
        Ok(entry)
    }

    /// Downloads directory `remote` (empty for the root) at a revision into `local`, which is
    /// created if missing: `local` ends up holding what `remote` holds.
    pub async fn download_directory(
        &self,
        remote: &str,
        at: &Rev,
        local: &Path,
        progress: &dyn Progress,
    ) -> Result<DownloadReport> {
        let remote = remote.trim_matches('/');
        let entries = self.list(remote, true, at).await?;
        tokio::fs::create_dir_all(local)
            .await
            .map_err(|e| Error::io(local, e))?;
        let mut report = DownloadReport::default();
        let mut files = Vec::new();
        for entry in entries {
            let target = local.join(relative(remote, &entry.path)?);
            if entry.kind == pb::EntryKind::Directory as i32 {
                tokio::fs::create_dir_all(&target)
                    .await
                    .map_err(|e| Error::io(&target, e))?;
                report.directories += 1;
            } else {
                report.bytes += entry.size;
                files.push((entry, target));
            }
        }
        report.files = files.len() as u64;
        progress.phase("downloading", Some(report.bytes));
        // Parents first: a listing is in path order, but be safe for files whose parent
        // directory entry was not listed.
        for (_, target) in &files {
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| Error::io(parent, e))?;
            }
        }
        futures::stream::iter(files.iter())
            .map(|(entry, target)| self.download_one(&entry.path, at, target, progress, false))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(relative("", "a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(relative("src", "src/a").unwrap(), PathBuf::from("a"));
        assert!(relative("src", "srcx/a").is_err());
        assert!(relative("", "../etc/passwd").is_err());
        assert!(relative("", "/etc/passwd").is_err());
        assert!(relative("src", "src").is_err());
    }
}
