//! Tar archives: exporting a tree and importing one, with hostile input in mind.
//!
//! Archives carry what the tree holds: regular files, directories and symlinks with their
//! modes and modification times (whole seconds in the header, nanoseconds in a PAX `mtime`
//! record when needed), so an export extracts to the same bytes and times and imports back to
//! the same tree. Imports refuse hard links, devices and fifos (a workspace cannot hold them),
//! and paths that are absolute, contain "..", NUL or invalid UTF-8, with INVALID_ARGUMENT and
//! nothing changed. Symlink targets are stored as given and never followed here; `aether get`
//! refuses to write through one.
//!
//! Both directions stream (promise 6, sizes are bounded: what a request costs in memory does
//! not grow with its archive). An import reads the archive as it arrives ([`read_tar`]): every
//! header is checked before its entry is read (its declared size against what the archive
//! limit leaves, name records against the path limit, PAX records against
//! [`MAX_PAX_BYTES`]), and each file's bytes go to the content store as they pass, so at most
//! one piece of the request and a few chunks are held. An export ([`tar_stream`]) builds
//! each entry's header when the reader asks for it and streams file contents from the store.

use std::collections::VecDeque;

use aether_core::path::MAX_PATH_BYTES;
use aether_core::{EntryKind, Hash, TreeEntry, WorkspacePath, MAX_SYMLINK_TARGET_BYTES};
use aether_store::Blobs;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::sessions::{check_expected_version, Effect, Prepared, Sessions};
use crate::trees::{TreeEditor, Trees};

/// Largest archive accepted for import or produced by export.
pub const MAX_ARCHIVE_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Most entries in one archive, imported or exported.
pub const MAX_ARCHIVE_ENTRIES: usize = 1_000_000;
/// Largest set of PAX records for one entry (`path`, `linkpath`, times, extended attributes).
pub const MAX_PAX_BYTES: u64 = 1024 * 1024;
/// Largest GNU long name or long link record: a path of [`MAX_PATH_BYTES`] with room for a
/// "./" prefix, a trailing "/" and the terminating NUL.
const MAX_NAME_RECORD_BYTES: u64 = MAX_PATH_BYTES as u64 + 4;

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const BLOCK: usize = 512;
static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// The zero bytes that pad an entry of `size` bytes to a whole block.
fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

// ---- Export -----------------------------------------------------------------------------

/// The tree at `root` as a POSIX tar, streamed. The tree is walked and the archive's size
/// checked against [`MAX_ARCHIVE_BYTES`] before the first byte; then each entry's header is
/// built when the reader pulls it and file contents are read from the store piece by piece
/// (back-pressure: nothing is read ahead of the reader but the store's own chunk read-ahead).
/// Dropping the stream cancels the store reads in flight.
pub async fn tar_stream(trees: &Trees, root: &Hash) -> Result<BoxStream<'static, Result<Bytes>>> {
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
    let total = entries
        .iter()
        .filter(|(_, entry)| entry.kind == EntryKind::File)
        .fold(0u64, |total, (_, entry)| total.saturating_add(entry.size));
    if total > MAX_ARCHIVE_BYTES {
        return Err(Error::ResourceExhausted(format!(
            "archive would exceed {MAX_ARCHIVE_BYTES} bytes; export a subdirectory"
        )));
    }
    let writer = TarWriter {
        blobs: trees.blobs().clone(),
        entries: entries.into(),
        builder: Some(tar::Builder::new(Vec::new())),
        body: None,
    };
    Ok(stream::try_unfold(writer, TarWriter::next).boxed())
}

/// The state of an export between two pieces.
struct TarWriter {
    blobs: std::sync::Arc<dyn Blobs>,
    entries: VecDeque<(WorkspacePath, TreeEntry)>,
    /// Writes headers (GNU long names and PAX records included) into its buffer, which is
    /// taken after each entry; None once the end-of-archive blocks were sent.
    builder: Option<tar::Builder<Vec<u8>>>,
    /// The file whose content is being sent.
    body: Option<Body>,
}

struct Body {
    path: WorkspacePath,
    hash: Hash,
    pieces: BoxStream<'static, std::result::Result<Bytes, aether_store::StoreError>>,
    /// Bytes the header promised and the store has not yet given.
    left: u64,
    padding: usize,
}

fn tar_error(e: std::io::Error) -> Error {
    Error::Internal(format!("tar: {e}"))
}

impl TarWriter {
    /// The next piece of the archive.
    async fn next(mut self) -> Result<Option<(Bytes, Self)>> {
        loop {
            if let Some(body) = self.body.as_mut() {
                match body.pieces.next().await {
                    Some(piece) => {
                        let piece = piece?;
                        if piece.len() as u64 > body.left {
                            return Err(body.wrong_size());
                        }
                        body.left -= piece.len() as u64;
                        if !piece.is_empty() {
                            return Ok(Some((piece, self)));
                        }
                    }
                    None if body.left > 0 => return Err(body.wrong_size()),
                    None => {
                        let padding = body.padding;
                        self.body = None;
                        if padding > 0 {
                            return Ok(Some((Bytes::from_static(&ZEROS[..padding]), self)));
                        }
                    }
                }
                continue;
            }
            if self.builder.is_none() {
                return Ok(None);
            }
            let piece = match self.entries.pop_front() {
                Some((path, entry)) => {
                    self.append(path, entry).await?;
                    std::mem::take(self.builder.as_mut().expect("builder").get_mut())
                }
                // The two zero blocks that end an archive.
                None => (self.builder.take().expect("builder"))
                    .into_inner()
                    .map_err(tar_error)?,
            };
            return Ok(Some((Bytes::from(piece), self)));
        }
    }

    /// Writes one entry's header records, and opens a file's content.
    async fn append(&mut self, path: WorkspacePath, entry: TreeEntry) -> Result<()> {
        let builder = self.builder.as_mut().expect("builder");
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
                let target = self.blobs.get(&entry.hash).await?;
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
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size);
                // The header alone: the content follows from the store, then the padding.
                builder
                    .append_data(&mut header, path.as_str(), std::io::empty())
                    .map_err(tar_error)?;
                let pieces = self.blobs.read(&entry.hash, 0, 0).await?;
                self.body = Some(Body {
                    path,
                    hash: entry.hash,
                    pieces,
                    left: entry.size,
                    padding: padding(entry.size) as usize,
                });
            }
        }
        Ok(())
    }
}

impl Body {
    fn wrong_size(&self) -> Error {
        Error::DataLoss(format!(
            "content {} of \"{}\" does not have the size its tree entry records",
            self.hash, self.path
        ))
    }
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

// ---- Import -----------------------------------------------------------------------------

/// One entry read from an archive; a file's content is already in the store.
#[derive(Debug)]
pub enum ArchiveItem {
    File {
        path: WorkspacePath,
        hash: Hash,
        size: u64,
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

impl ArchiveItem {
    /// Memory this item takes while an import gathers its entries (its strings and the rest).
    fn held_bytes(&self) -> usize {
        let strings = match self {
            ArchiveItem::File { path, .. } | ArchiveItem::Directory { path, .. } => {
                path.as_str().len()
            }
            ArchiveItem::Symlink { path, target, .. } => path.as_str().len() + target.len(),
        };
        strings + std::mem::size_of::<ArchiveItem>()
    }
}

/// Memory an import's gathered entries may take (names and targets are held until the tree is
/// built): a million entries of 200-byte paths fit.
pub const MAX_IMPORT_HELD_BYTES: usize = 512 * 1024 * 1024;

/// An archive's bytes as they arrive, read in order: at most one piece of the source is held,
/// and every byte received counts against `limit` (RESOURCE_EXHAUSTED past it).
struct ArchiveBytes<S> {
    source: S,
    /// The unread rest of the current piece.
    piece: Bytes,
    received: u64,
    /// Offset of the next unread byte.
    position: u64,
    limit: u64,
}

impl<S, E> ArchiveBytes<S>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: From<Error> + Send,
{
    /// Makes the current piece non-empty; false at the end of the archive.
    async fn fill(&mut self) -> std::result::Result<bool, E> {
        while self.piece.is_empty() {
            let Some(piece) = self.source.next().await else {
                return Ok(false);
            };
            let piece = piece?;
            self.received += piece.len() as u64;
            if self.received > self.limit {
                return Err(Error::ResourceExhausted(format!(
                    "archive exceeds the limit of {} bytes",
                    self.limit
                ))
                .into());
            }
            self.piece = piece;
        }
        Ok(true)
    }

    /// The next at most `max` bytes (a slice of the current piece), or None at the end.
    async fn take(&mut self, max: u64) -> std::result::Result<Option<Bytes>, E> {
        if max == 0 || !self.fill().await? {
            return Ok(None);
        }
        let n = (self.piece.len() as u64).min(max) as usize;
        self.position += n as u64;
        Ok(Some(self.piece.split_to(n)))
    }

    /// Fills `buffer` as far as the archive goes; returns the bytes read.
    async fn read(&mut self, buffer: &mut [u8]) -> std::result::Result<usize, E> {
        let mut filled = 0;
        while filled < buffer.len() {
            let Some(piece) = self.take((buffer.len() - filled) as u64).await? else {
                break;
            };
            buffer[filled..filled + piece.len()].copy_from_slice(&piece);
            filled += piece.len();
        }
        Ok(filled)
    }

    /// Passes over `n` bytes; returns how many there were.
    async fn skip(&mut self, n: u64) -> std::result::Result<u64, E> {
        let mut skipped = 0;
        while skipped < n {
            let Some(piece) = self.take(n - skipped).await? else {
                break;
            };
            skipped += piece.len() as u64;
        }
        Ok(skipped)
    }

    /// What the limit leaves for the rest of the archive.
    fn room(&self) -> u64 {
        self.limit.saturating_sub(self.position)
    }
}

/// Records that describe the next entry (GNU long name and long link, PAX).
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Pax>,
}

impl Extensions {
    fn any(&self) -> bool {
        self.long_name.is_some() || self.long_link.is_some() || self.pax.is_some()
    }
}

/// The PAX records AetherFS reads (the first of each key counts, as in the `tar` crate).
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<String>,
}

fn parse_pax(records: &[u8]) -> std::result::Result<Pax, String> {
    let mut pax = Pax::default();
    for record in tar::PaxExtensions::new(records) {
        let record = record.map_err(|e| format!("malformed PAX record: {e}"))?;
        match record.key_bytes() {
            b"path" if pax.path.is_none() => pax.path = Some(record.value_bytes().to_vec()),
            b"linkpath" if pax.linkpath.is_none() => {
                pax.linkpath = Some(record.value_bytes().to_vec())
            }
            b"size" if pax.size.is_none() => {
                let value = String::from_utf8_lossy(record.value_bytes());
                pax.size = Some(
                    value
                        .parse()
                        .map_err(|_| format!("PAX size {value:?} is not a size in bytes"))?,
                );
            }
            b"mtime" if pax.mtime.is_none() => {
                let value = record
                    .value()
                    .map_err(|_| "PAX mtime is not UTF-8".to_string())?;
                pax.mtime = Some(value.to_string());
            }
            _ => {}
        }
    }
    Ok(pax)
}

/// A name record's bytes without their terminating NUL.
fn trim_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Reads and validates a tar as it arrives, storing each regular file's bytes through the
/// content store's streaming put as they pass; returns the entries to apply. Any refusal is
/// INVALID_ARGUMENT ("archive rejected: ...") or RESOURCE_EXHAUSTED, and the caller changes
/// nothing: content stored by then is referenced by nothing, and garbage collection takes it.
/// Errors of `source` are returned as they came.
pub async fn read_tar<S, E>(
    source: S,
    under: &WorkspacePath,
    trees: &Trees,
) -> std::result::Result<Vec<ArchiveItem>, E>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: From<Error> + Send,
{
    let mut input = ArchiveBytes {
        source,
        piece: Bytes::new(),
        received: 0,
        position: 0,
        limit: MAX_ARCHIVE_BYTES,
    };
    let mut items = Vec::new();
    let mut held = 0usize;
    let mut pending = Extensions::default();
    while let Some(header) = read_header(&mut input).await? {
        // Refused before the entry is read (and a file's content stored).
        if items.len() >= MAX_ARCHIVE_ENTRIES {
            return Err(Error::ResourceExhausted(format!(
                "archive has more than {MAX_ARCHIVE_ENTRIES} entries"
            ))
            .into());
        }
        if let Some(item) = read_entry(&mut input, header, &mut pending, under, trees).await? {
            held += item.held_bytes();
            if held > MAX_IMPORT_HELD_BYTES {
                return Err(Error::ResourceExhausted(format!(
                    "archive's entries take more than {MAX_IMPORT_HELD_BYTES} bytes of names to \
                     import at once: split it, or import it under a shorter path"
                ))
                .into());
            }
            items.push(item);
        }
    }
    if pending.any() {
        return Err(rejected(
            "malformed tar: members found describing a future member but no future member found",
        )
        .into());
    }
    // The end-of-archive blocks and any record padding: read, within the limit, and ignored.
    while input.take(u64::MAX).await?.is_some() {}
    Ok(items)
}

fn rejected(what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("archive rejected: {what}"))
}

/// The next header, checksum verified; None at the end of the archive (its end, or a block
/// of zeros).
async fn read_header<S, E>(
    input: &mut ArchiveBytes<S>,
) -> std::result::Result<Option<tar::Header>, E>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: From<Error> + Send,
{
    let mut header = tar::Header::new_old();
    let read = input.read(header.as_mut_bytes()).await?;
    if read == 0 {
        return Ok(None);
    }
    if read < BLOCK {
        return Err(rejected(format!(
            "malformed tar: the archive ends {read} bytes into a 512-byte header"
        ))
        .into());
    }
    if header.as_bytes().iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let bytes = header.as_bytes();
    let sum = bytes[..148]
        .iter()
        .chain(&bytes[156..])
        .fold(0u32, |sum, b| sum + u32::from(*b))
        + 8 * 32;
    let recorded = header
        .cksum()
        .map_err(|e| rejected(format!("malformed tar: {e}")))?;
    if sum != recorded {
        return Err(rejected("malformed tar: archive header checksum mismatch").into());
    }
    Ok(Some(header))
}

/// Handles the entry `header` starts: an extension record is kept in `pending` for the next
/// entry; an entry AetherFS holds is returned, a file's content stored; everything else is
/// refused or passed over. Every size is checked before a byte of the entry is read.
async fn read_entry<S, E>(
    input: &mut ArchiveBytes<S>,
    header: tar::Header,
    pending: &mut Extensions,
    under: &WorkspacePath,
    trees: &Trees,
) -> std::result::Result<Option<ArchiveItem>, E>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: From<Error> + Send,
{
    let kind = header.entry_type();
    // As the `tar` crate reads them: extension records count only in ustar and GNU headers.
    let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
    let extension = recognized
        && (kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions());
    let size = entry_size(&header, extension, pending, input.room())?;
    if extension {
        read_extension(input, kind, size, pending).await?;
        return Ok(None);
    }
    let extensions = std::mem::take(pending);
    // A global PAX header (git archive writes one with the commit id) describes the archive,
    // not a path.
    if kind == tar::EntryType::XGlobalHeader {
        skip_entry(input, size).await?;
        return Ok(None);
    }
    let Some((path, name)) = entry_path(&header, &extensions, under)? else {
        skip_entry(input, size).await?;
        return Ok(None);
    };
    let mtime_ns = entry_mtime(&header, extensions.pax.as_ref())
        .map_err(|e| rejected(format!("entry \"{path}\": {e}")))?;
    let mode = header.mode().unwrap_or(0o644) & 0o7777;
    let item = match kind {
        tar::EntryType::Directory => ArchiveItem::Directory {
            path,
            mode,
            mtime_ns,
        },
        tar::EntryType::Symlink => ArchiveItem::Symlink {
            target: symlink_target(&header, extensions, &path)?,
            path,
            mtime_ns,
        },
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let (hash, stored) = store_file(input, size, &path, trees).await?;
            debug_assert_eq!(stored, size);
            skip_padding(input, size).await?;
            return Ok(Some(ArchiveItem::File {
                path,
                hash,
                size,
                mode,
                mtime_ns,
            }));
        }
        // What is left is a hard link, a device, a fifo or a sparse file, which a workspace
        // cannot hold.
        other => {
            return Err(rejected(format!(
                "entry \"{name}\" is a {other:?}; only regular files, directories and symlinks are accepted"
            ))
            .into())
        }
    };
    skip_entry(input, size).await?;
    Ok(Some(item))
}

/// The size of the entry's content: a PAX size overrides the header's (both ways: two readers
/// must see one archive). Refused past `room`, what the archive limit leaves.
fn entry_size(
    header: &tar::Header,
    extension: bool,
    pending: &Extensions,
    room: u64,
) -> Result<u64> {
    let mut size = header
        .entry_size()
        .map_err(|e| rejected(format!("malformed tar: {e}")))?;
    if !extension && !header.entry_type().is_pax_global_extensions() {
        if let Some(pax_size) = pending.pax.as_ref().and_then(|pax| pax.size) {
            size = pax_size;
        }
    }
    if size > room {
        let name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
        return Err(rejected(format!(
            "entry \"{name}\" declares {size} bytes, more than the {room} bytes the archive limit of {MAX_ARCHIVE_BYTES} leaves"
        )));
    }
    Ok(size)
}

/// Reads an extension record (GNU long name or link, PAX records) of `size` bytes into
/// `pending`, for the entry that follows; each kind is bounded and may come once per entry.
async fn read_extension<S, E>(
    input: &mut ArchiveBytes<S>,
    kind: tar::EntryType,
    size: u64,
    pending: &mut Extensions,
) -> std::result::Result<(), E>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: From<Error> + Send,
{
    let (bound, what) = if kind.is_pax_local_extensions() {
        (MAX_PAX_BYTES, "PAX records")
    } else if kind.is_gnu_longname() {
        (MAX_NAME_RECORD_BYTES, "GNU long name")
    } else {
        (MAX_NAME_RECORD_BYTES, "GNU long link")
    };
    if size > bound {
        return Err(rejected(format!(
            "{what} of {size} bytes exceeds the limit of {bound} bytes"
        ))
        .into());
    }
    let record = read_record(input, size).await?;
    let repeated = if kind.is_gnu_longname() {
        pending.long_name.replace(trim_nul(record)).is_some()
    } else if kind.is_gnu_longlink() {
        pending.long_link.replace(trim_nul(record)).is_some()
    } else {
        let pax = parse_pax(&record).map_err(rejected)?;
        pending.pax.replace(pax).is_some()
    };
    if repeated {
        return Err(rejected(
            "malformed tar: two extension records of one kind describe the same member",
        )
        .into());
    }
    Ok(())
}

/// Where the entry goes below `under`, and its name in the archive; `None` for the archive's
/// own root ("", "."), which is passed over. Named as the `tar` crate names an entry: a GNU
/// long name, else a PAX path, else the header's.
fn entry_path(
    header: &tar::Header,
    extensions: &Extensions,
    under: &WorkspacePath,
) -> Result<Option<(WorkspacePath, String)>> {
    let raw = extensions
        .long_name
        .clone()
        .or_else(|| extensions.pax.as_ref().and_then(|pax| pax.path.clone()))
        .unwrap_or_else(|| header.path_bytes().into_owned());
    let name = std::str::from_utf8(&raw).map_err(|_| {
        rejected(format!(
            "entry name {:?} is not valid UTF-8",
            String::from_utf8_lossy(&raw)
        ))
    })?;
    let name = name.strip_prefix("./").unwrap_or(name);
    let name = name.trim_end_matches('/');
    if name.is_empty() || name == "." {
        return Ok(None);
    }
    let relative = WorkspacePath::parse(name).map_err(rejected)?;
    let mut path = under.clone();
    for component in relative.components() {
        path = path.join(component)?;
    }
    Ok(Some((path, name.to_string())))
}

/// A symlink entry's target: a GNU long link, else a PAX linkpath, else the header's; UTF-8,
/// not empty, bounded, without NUL.
fn symlink_target(
    header: &tar::Header,
    extensions: Extensions,
    path: &WorkspacePath,
) -> Result<String> {
    let target = extensions
        .long_link
        .or_else(|| extensions.pax.and_then(|pax| pax.linkpath))
        .or_else(|| header.link_name_bytes().map(|target| target.into_owned()))
        .ok_or_else(|| rejected(format!("symlink \"{path}\" has no target")))?;
    let target = String::from_utf8(target)
        .map_err(|_| rejected(format!("symlink \"{path}\" has a target that is not UTF-8")))?;
    if target.is_empty() || target.len() > MAX_SYMLINK_TARGET_BYTES || target.contains('\0') {
        return Err(rejected(format!(
            "symlink \"{path}\" has a target that is empty, longer than {MAX_SYMLINK_TARGET_BYTES} bytes or contains NUL"
        )));
    }
    Ok(target)
}

/// Streams a regular entry's `size` bytes into the store; an entry that ends early is
/// refused.
async fn store_file<S, E>(
    input: &mut ArchiveBytes<S>,
    size: u64,
    path: &WorkspacePath,
    trees: &Trees,
) -> std::result::Result<(Hash, u64), E>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: From<Error> + Send,
{
    let body = stream::try_unfold((input, 0u64), move |(input, read)| async move {
        if read == size {
            return Ok(None);
        }
        match input.take(size - read).await? {
            Some(piece) => {
                let read = read + piece.len() as u64;
                Ok(Some((piece, (input, read))))
            }
            None => Err(E::from(rejected(format!(
                "entry \"{path}\" is truncated: {size} bytes declared, {read} present"
            )))),
        }
    });
    trees.put_stream(Box::pin(body)).await
}

/// Reads a metadata record of `size` bytes (already checked against its bound) and its padding.
async fn read_record<S, E>(
    input: &mut ArchiveBytes<S>,
    size: u64,
) -> std::result::Result<Vec<u8>, E>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: From<Error> + Send,
{
    let mut record = vec![0; size as usize];
    let read = input.read(&mut record).await?;
    if read as u64 != size {
        return Err(rejected(format!(
            "malformed tar: an extension record is truncated: {size} bytes declared, {read} present"
        ))
        .into());
    }
    skip_padding(input, size).await?;
    Ok(record)
}

/// Passes over an entry's content and padding, which AetherFS does not keep.
async fn skip_entry<S, E>(input: &mut ArchiveBytes<S>, size: u64) -> std::result::Result<(), E>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: From<Error> + Send,
{
    let skipped = input.skip(size).await?;
    if skipped != size {
        return Err(rejected(format!(
            "malformed tar: an entry is truncated: {size} bytes declared, {skipped} present"
        ))
        .into());
    }
    skip_padding(input, size).await
}

/// Passes over the padding after `size` bytes of content. An archive may end within it.
async fn skip_padding<S, E>(input: &mut ArchiveBytes<S>, size: u64) -> std::result::Result<(), E>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
    E: From<Error> + Send,
{
    input.skip(padding(size)).await?;
    Ok(())
}

/// An entry's modification time: the PAX `mtime` record when present, else the header's.
fn entry_mtime(header: &tar::Header, pax: Option<&Pax>) -> std::result::Result<i64, String> {
    if let Some(value) = pax.and_then(|pax| pax.mtime.as_deref()) {
        return parse_pax_time(value).ok_or_else(|| format!("PAX mtime {value:?} is not a time"));
    }
    let seconds = header
        .mtime()
        .map_err(|e| format!("malformed mtime: {e}"))?;
    i64::try_from(seconds)
        .ok()
        .and_then(|s| s.checked_mul(NANOS_PER_SECOND))
        .ok_or_else(|| format!("mtime {seconds} is out of range"))
}

/// What an import added: counts of the archive's files and directories, and its bytes.
pub struct Imported {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}

impl Sessions {
    /// Applies the items of an archive already read (and its content stored) below `under`
    /// to the head of session `session_id`, as one change to commit with
    /// [`Sessions::finish`].
    pub async fn import(
        &self,
        caller: &Caller,
        session_id: &str,
        expected_version: u64,
        under: &WorkspacePath,
        items: Vec<ArchiveItem>,
    ) -> Result<(Prepared, Imported)> {
        let mut mutation = self.begin_active(caller, session_id).await?;
        check_expected_version(&mutation.record, expected_version)?;
        let old_root = Sessions::root(&mutation.record.head_root)?;
        let mut editor = TreeEditor::open(&self.trees, &old_root).await?;
        let (files, directories, bytes) = apply_items(&self.trees, &mut editor, items).await?;
        let imported = Imported {
            files,
            directories,
            bytes,
        };
        let touched = editor.touched().to_vec();
        let new_root = editor.finish().await?;
        if new_root == old_root {
            return Ok((Prepared::unchanged(mutation), imported));
        }
        mutation.record.head_root = new_root.to_hex();
        mutation.record.head_version += 1;
        let effect = Effect::new(caller.name(), "workspace.import", under.to_string())
            .detail("files", files.to_string())
            .event(Event::FilesChanged {
                paths: touched,
                operation: "import".into(),
            });
        Ok((Prepared::changed(mutation, effect), imported))
    }
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
                hash,
                size,
                mode,
                mtime_ns,
            } => {
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

/// Builds a root from a tar already uploaded to the content store (CreateSession from archive),
/// reading it from the store as it is parsed.
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
    let pieces = trees
        .blobs()
        .read(&hash, 0, 0)
        .await?
        .map(|piece| piece.map_err(Error::from));
    let items = read_tar(pieces, &WorkspacePath::root(), trees).await?;
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
