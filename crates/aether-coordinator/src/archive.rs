//! Tar archives: exporting a tree and importing one, with hostile input in mind.
//!
//! Imports accept only regular files and directories with valid relative paths; symlinks,
//! hard links, devices and paths that are absolute, contain "..", NUL or invalid UTF-8 are
//! rejected with INVALID_ARGUMENT and nothing is changed. Archives are held in memory, so
//! their size is bounded by [`MAX_ARCHIVE_BYTES`].

use std::io::Read;

use aether_core::{EntryKind, Hash, WorkspacePath};
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::sessions::Sessions;
use crate::trees::{TreeEditor, Trees};

/// Largest archive accepted for import or produced by export.
pub const MAX_ARCHIVE_BYTES: u64 = 1024 * 1024 * 1024;
/// Most entries in one imported archive.
pub const MAX_ARCHIVE_ENTRIES: usize = 1_000_000;

/// Writes the tree at `root` as a POSIX tar.
pub async fn build_tar(trees: &Trees, root: &Hash) -> Result<Vec<u8>> {
    let mut entries = Vec::new();
    trees
        .walk(
            *root,
            WorkspacePath::root(),
            true,
            &mut entries,
            MAX_ARCHIVE_ENTRIES,
        )
        .await?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut total: u64 = 0;
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(entry.mode);
        header.set_mtime(0);
        match entry.kind {
            EntryKind::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .map_err(|e| Error::Internal(format!("tar: {e}")))?;
            }
            EntryKind::File => {
                total += entry.size;
                if total > MAX_ARCHIVE_BYTES {
                    return Err(Error::ResourceExhausted(format!(
                        "archive would exceed {MAX_ARCHIVE_BYTES} bytes; export a subdirectory"
                    )));
                }
                let data = trees.blobs().get(&entry.hash).await?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path.as_str(), &data[..])
                    .map_err(|e| Error::Internal(format!("tar: {e}")))?;
            }
        }
    }
    builder
        .into_inner()
        .map_err(|e| Error::Internal(format!("tar: {e}")))
}

/// One regular file or directory read from an archive.
pub enum ArchiveItem {
    File {
        path: WorkspacePath,
        data: Vec<u8>,
        mode: u32,
    },
    Directory {
        path: WorkspacePath,
    },
}

/// Parses and validates a tar fully before anything is written.
pub fn parse_tar(bytes: &[u8], under: &WorkspacePath) -> Result<Vec<ArchiveItem>> {
    let bad = |what: String| Error::InvalidArgument(format!("archive rejected: {what}"));
    let mut archive = tar::Archive::new(bytes);
    let mut items = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar file: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("malformed tar: {e}")))?;
        if items.len() >= MAX_ARCHIVE_ENTRIES {
            return Err(Error::ResourceExhausted(format!(
                "archive has more than {MAX_ARCHIVE_ENTRIES} entries"
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let name = std::str::from_utf8(&raw).map_err(|_| {
            bad(format!(
                "entry name {:?} is not valid UTF-8",
                String::from_utf8_lossy(&raw)
            ))
        })?;
        let name = name.strip_prefix("./").unwrap_or(name);
        let name = name.trim_end_matches('/');
        if name.is_empty() || name == "." {
            continue;
        }
        let relative = WorkspacePath::parse(name).map_err(|e| bad(e.to_string()))?;
        let mut path = under.clone();
        for component in relative.components() {
            path = path.join(component)?;
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => items.push(ArchiveItem::Directory { path }),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| bad(format!("truncated entry \"{path}\": {e}")))?;
                items.push(ArchiveItem::File { path, data, mode });
            }
            // PAX/GNU metadata records are consumed by the tar crate; anything else left is a
            // link or a device, which a workspace cannot hold safely.
            other => {
                return Err(bad(format!(
                "entry \"{name}\" is a {other:?}; only regular files and directories are accepted"
            )))
            }
        }
    }
    Ok(items)
}

/// Applies parsed archive items to an editor: (files, directories, bytes).
pub async fn apply_items(
    trees: &Trees,
    editor: &mut TreeEditor,
    items: Vec<ArchiveItem>,
) -> Result<(u64, u64, u64)> {
    let (mut files, mut dirs, mut bytes) = (0, 0, 0);
    for item in items {
        match item {
            ArchiveItem::Directory { path } => {
                editor.make_directory(&path, true).await?;
                dirs += 1;
            }
            ArchiveItem::File { path, data, mode } => {
                let size = data.len() as u64;
                let hash = trees.blobs().put(Bytes::from(data)).await?;
                editor.write_file(&path, hash, size, mode).await?;
                files += 1;
                bytes += size;
            }
        }
    }
    Ok((files, dirs, bytes))
}

/// Builds a root from a tar already uploaded to the content store (CreateSession from archive).
pub async fn import_blob(sessions: &Sessions, blob_hash: &str) -> Result<Hash> {
    let hash = Hash::from_hex(blob_hash)
        .map_err(|e| Error::InvalidArgument(format!("archive blob_hash: {e}")))?;
    let trees = &sessions.trees;
    let size = match trees.blobs().size(&hash).await {
        Ok(size) => size,
        Err(aether_store::StoreError::NotFound(_)) => {
            return Err(Error::NotFound(format!(
                "archive blob {blob_hash} not found; upload it with PutBlob first"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if size > MAX_ARCHIVE_BYTES {
        return Err(Error::ResourceExhausted(format!(
            "archive of {size} bytes exceeds the limit of {MAX_ARCHIVE_BYTES}"
        )));
    }
    let bytes = trees.blobs().get(&hash).await?;
    let items = parse_tar(&bytes, &WorkspacePath::root())?;
    let empty = trees.ensure_empty().await?;
    let mut editor = TreeEditor::open(trees, &empty).await?;
    apply_items(trees, &mut editor, items).await?;
    editor.finish().await
}
