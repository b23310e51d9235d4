//! Tar archives: exporting a tree and importing one, with hostile input in mind.
//!
//! Archives carry what the tree holds: regular files, directories and symlinks with their
//! modes and modification times (whole seconds in the header, nanoseconds in a PAX `mtime`
//! record when needed), so an export extracts to the same bytes and times and imports back to
//! the same tree. Imports refuse hard links, devices and fifos (a workspace cannot hold them),
//! and paths that are absolute, contain "..", NUL or invalid UTF-8, with INVALID_ARGUMENT and
//! nothing changed. Symlink targets are stored as given and never followed here; `aether get`
//! refuses to write through one. Every declared size is checked against the bytes actually
//! present before anything is read or allocated. Archives are held in memory, so their size is
//! bounded by [`MAX_ARCHIVE_BYTES`].

use std::io::Read;

use aether_core::{EntryKind, Hash, WorkspacePath, MAX_SYMLINK_TARGET_BYTES};
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::sessions::Sessions;
use crate::trees::{TreeEditor, Trees};

/// Largest archive accepted for import or produced by export.
pub const MAX_ARCHIVE_BYTES: u64 = 1024 * 1024 * 1024;
/// Most entries in one imported archive.
pub const MAX_ARCHIVE_ENTRIES: usize = 1_000_000;

const NANOS_PER_SECOND: i64 = 1_000_000_000;

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
    let tar_error = |e: std::io::Error| Error::Internal(format!("tar: {e}"));
    let mut builder = tar::Builder::new(Vec::new());
    let mut total: u64 = 0;
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(entry.mode);
        let seconds = entry.mtime_ns.div_euclid(NANOS_PER_SECOND);
        header.set_mtime(seconds.max(0) as u64);
        if entry.mtime_ns.rem_euclid(NANOS_PER_SECOND) != 0 || seconds < 0 {
            let value = pax_time(entry.mtime_ns);
            builder
                .append_pax_extensions([("mtime", value.as_bytes())])
                .map_err(tar_error)?;
        }
        match entry.kind {
            EntryKind::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .map_err(tar_error)?;
            }
            EntryKind::Symlink => {
                let target = trees.blobs().get(&entry.hash).await?;
                let target = std::str::from_utf8(&target).map_err(|_| {
                    Error::DataLoss(format!("symlink \"{path}\" has a target that is not UTF-8"))
                })?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, path.as_str(), target)
                    .map_err(tar_error)?;
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
                    .map_err(tar_error)?;
            }
        }
    }
    builder.into_inner().map_err(tar_error)
}

/// A PAX `mtime` value: seconds with a nine-digit fraction, negative before 1970.
fn pax_time(mtime_ns: i64) -> String {
    let sign = if mtime_ns < 0 { "-" } else { "" };
    let magnitude = mtime_ns.unsigned_abs();
    format!(
        "{sign}{}.{:09}",
        magnitude / NANOS_PER_SECOND as u64,
        magnitude % NANOS_PER_SECOND as u64
    )
}

/// Parses a PAX `mtime` value (decimal seconds, optional sign and fraction) to nanoseconds.
fn parse_pax_time(value: &str) -> Option<i64> {
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    // Digits past nanoseconds are dropped, as GNU tar does.
    let mut nanos: i64 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10i64.pow(8 - i as u32);
    }
    let total = seconds.checked_mul(NANOS_PER_SECOND)?.checked_add(nanos)?;
    Some(if negative { -total } else { total })
}

/// One entry read from an archive.
pub enum ArchiveItem {
    File {
        path: WorkspacePath,
        data: Vec<u8>,
        mode: u32,
        mtime_ns: i64,
    },
    Directory {
        path: WorkspacePath,
        mode: u32,
        mtime_ns: i64,
    },
    Symlink {
        path: WorkspacePath,
        target: String,
        mtime_ns: i64,
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
        let kind = entry.header().entry_type();
        // A global PAX header (git archive writes one with the commit id) describes the
        // archive, not a path.
        if kind == tar::EntryType::XGlobalHeader {
            continue;
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
        let mtime_ns =
            entry_mtime(&mut entry).map_err(|e| bad(format!("entry \"{path}\": {e}")))?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        match kind {
            tar::EntryType::Directory => items.push(ArchiveItem::Directory {
                path,
                mode,
                mtime_ns,
            }),
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(format!("symlink \"{path}\" has no target")))?;
                let target = std::str::from_utf8(&target)
                    .map_err(|_| bad(format!("symlink \"{path}\" has a target that is not UTF-8")))?;
                if target.is_empty() || target.len() > MAX_SYMLINK_TARGET_BYTES || target.contains('\0') {
                    return Err(bad(format!(
                        "symlink \"{path}\" has a target that is empty, longer than {MAX_SYMLINK_TARGET_BYTES} bytes or contains NUL"
                    )));
                }
                items.push(ArchiveItem::Symlink {
                    path,
                    target: target.to_string(),
                    mtime_ns,
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let data = read_entry(&mut entry, bytes.len() as u64)
                    .map_err(|e| bad(format!("entry \"{path}\" {e}")))?;
                items.push(ArchiveItem::File {
                    path,
                    data,
                    mode,
                    mtime_ns,
                });
            }
            // PAX/GNU metadata records are consumed by the tar crate; anything else left is a
            // hard link, a device or a fifo, which a workspace cannot hold.
            other => {
                return Err(bad(format!(
                    "entry \"{name}\" is a {other:?}; only regular files, directories and symlinks are accepted"
                )))
            }
        }
    }
    Ok(items)
}

/// An entry's modification time: the PAX `mtime` record when present, else the header's.
fn entry_mtime(entry: &mut tar::Entry<'_, &[u8]>) -> std::result::Result<i64, String> {
    if let Ok(Some(extensions)) = entry.pax_extensions() {
        for extension in extensions {
            let extension = extension.map_err(|e| format!("malformed PAX record: {e}"))?;
            if extension.key() == Ok("mtime") {
                let value = extension
                    .value()
                    .map_err(|_| "PAX mtime is not UTF-8".to_string())?;
                return parse_pax_time(value)
                    .ok_or_else(|| format!("PAX mtime {value:?} is not a time"));
            }
        }
    }
    let seconds = entry
        .header()
        .mtime()
        .map_err(|e| format!("malformed mtime: {e}"))?;
    i64::try_from(seconds)
        .ok()
        .and_then(|s| s.checked_mul(NANOS_PER_SECOND))
        .ok_or_else(|| format!("mtime {seconds} is out of range"))
}

/// Reads a regular entry's bytes. The declared size is hostile until checked: an entry
/// cannot hold more bytes than the archive, and nothing is allocated from the header.
fn read_entry(
    entry: &mut tar::Entry<'_, &[u8]>,
    archive_bytes: u64,
) -> std::result::Result<Vec<u8>, String> {
    let declared = entry.size();
    if declared > archive_bytes {
        return Err(format!(
            "declares {declared} bytes but the whole archive is {archive_bytes} bytes"
        ));
    }
    let mut data = Vec::new();
    entry
        .take(declared)
        .read_to_end(&mut data)
        .map_err(|e| format!("is truncated: {e}"))?;
    if data.len() as u64 != declared {
        return Err(format!(
            "is truncated: {declared} bytes declared, {} present",
            data.len()
        ));
    }
    Ok(data)
}

/// Applies parsed archive items to an editor: (files, directories, bytes). Directory modes
/// and times are set last, as tar does, so the entries created inside them do not change them.
pub async fn apply_items(
    trees: &Trees,
    editor: &mut TreeEditor,
    items: Vec<ArchiveItem>,
) -> Result<(u64, u64, u64)> {
    let (mut files, mut dirs, mut bytes) = (0, 0, 0);
    let mut directory_attributes = Vec::new();
    for item in items {
        match item {
            ArchiveItem::Directory {
                path,
                mode,
                mtime_ns,
            } => {
                editor.make_directory(&path, true).await?;
                directory_attributes.push((path, mode, mtime_ns));
                dirs += 1;
            }
            ArchiveItem::File {
                path,
                data,
                mode,
                mtime_ns,
            } => {
                let size = data.len() as u64;
                let hash = trees.blobs().put(Bytes::from(data)).await?;
                editor.write_file(&path, hash, size, mode, mtime_ns).await?;
                files += 1;
                bytes += size;
            }
            ArchiveItem::Symlink {
                path,
                target,
                mtime_ns,
            } => {
                let size = target.len() as u64;
                let hash = trees.blobs().put(Bytes::from(target)).await?;
                editor.symlink(&path, hash, size, mtime_ns).await?;
                files += 1;
            }
        }
    }
    for (path, mode, mtime_ns) in directory_attributes {
        let mode = if mode == 0 { None } else { Some(mode) };
        let mtime_ns = if mtime_ns == 0 { None } else { Some(mtime_ns) };
        if mode.is_some() || mtime_ns.is_some() {
            editor.set_attributes(&path, mode, mtime_ns).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_round_trip() {
        for ns in [
            0,
            1,
            1_700_000_000_123_456_789,
            -1,
            -1_500_000_000,
            i64::MAX,
            i64::MIN + 1,
        ] {
            assert_eq!(parse_pax_time(&pax_time(ns)), Some(ns), "{ns}");
        }
        assert_eq!(parse_pax_time("12"), Some(12 * NANOS_PER_SECOND));
        assert_eq!(parse_pax_time("1.5"), Some(1_500_000_000));
        assert_eq!(parse_pax_time("1.1234567891"), Some(1_123_456_789));
        for bad in ["", "-", ".5", "1.x", "x", "99999999999999999999", "1e9"] {
            assert_eq!(parse_pax_time(bad), None, "{bad}");
        }
    }
}
