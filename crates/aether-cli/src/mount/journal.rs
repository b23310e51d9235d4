//! The mount's journal: every change queued for the session is also written to a local file
//! as it is queued, a file's content as it was at its close or fsync. The session gets the
//! changes in batches a commit interval later; a `kill -9` of the mount in between loses
//! nothing that was closed: the next `aether mount` of the session with the same cache
//! directory sends what the killed one had not, before it serves a single request.
//!
//! Layout, under `<cache>/journal/<session>/`: one `<mount>.lock` per running mount, locked
//! (flock) for as long as it runs, so a lock anyone can take belongs to a dead mount; and the
//! mount's segments `<mount>.<n>.log`. The flusher starts a new segment each time it takes
//! the queue, so segment `n` holds exactly the changes of the batch it sends as request id
//! `<mount>-<n>`. A recovering mount sends a dead mount's segments in order under those same
//! ids: the coordinator answers a batch that did apply with its recorded outcome instead of
//! applying it again (design promise 9), so nothing applies twice.
//!
//! The journal is not synced: it survives the mount process, not the machine (fsync is what
//! makes changes durable against that: it waits for the session). Its bytes are checked like
//! any bytes read from disk: a record longer than [`MAX_RECORD_BYTES`], cut short or whose
//! checksum does not match ends the segment there (a kill mid-append leaves such a tail).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use aether_client::proto as pb;
use prost::Message;

/// Content up to this size is kept in the record; larger content beside it in a data file.
pub const INLINE_CONTENT_BYTES: u64 = aether_client::MAX_INLINE_BYTES;
/// The largest record read back: inline content plus its path and attributes.
pub const MAX_RECORD_BYTES: u32 = INLINE_CONTENT_BYTES as u32 + 64 * 1024;
/// Bytes before each record: its length and the first bytes of its BLAKE3 hash.
const FRAME_BYTES: usize = 4 + 8;

const KIND_CHANGE: u8 = 1;
const KIND_LARGE_WRITE: u8 = 2;
/// One change of the batch as built and sent.
const KIND_SENT_CHANGE: u8 = 3;
/// The end of the sent block: how many changes it holds.
const KIND_SENT_END: u8 = 4;

/// One record of a segment.
#[derive(Debug, PartialEq)]
pub enum Entry {
    /// A change as it goes to the session, content inline.
    Change(pb::Change),
    /// A write whose content is in the data file beside the segment.
    LargeWrite {
        write: pb::WriteOp,
        content: PathBuf,
    },
    /// A change of the batch as it was built and sent.
    Sent(pb::Change),
    /// The end of the sent block, of this many changes.
    SentEnd(u64),
}

/// The journal of a running mount.
pub struct Journal {
    dir: PathBuf,
    mount: String,
    /// Held (locked) while the mount runs.
    _lock: File,
    segment: u64,
    file: File,
    /// Records in the current segment.
    records: u64,
}

impl Journal {
    /// Starts the journal of a new mount of `session` under `cache`.
    pub fn open(cache: &Path, session: &str) -> std::io::Result<Journal> {
        let dir = cache.join("journal").join(session);
        std::fs::create_dir_all(&dir)?;
        let mount = uuid::Uuid::new_v4().simple().to_string();
        // Locked before it has the name a recovering mount looks for, so none takes it for a
        // dead mount's.
        let locking = dir.join(format!("{mount}.locking"));
        let lock = File::create(&locking)?;
        if !try_lock(&lock)? {
            return Err(std::io::Error::other(
                "a new journal lock is held by another",
            ));
        }
        std::fs::rename(&locking, dir.join(format!("{mount}.lock")))?;
        let file = create_segment(&dir, &mount, 0)?;
        Ok(Journal {
            dir,
            mount,
            _lock: lock,
            segment: 0,
            file,
            records: 0,
        })
    }

    /// The request id of the batch that sends segment `segment`.
    pub fn batch_id(&self, segment: u64) -> String {
        format!("{}-{segment}", self.mount)
    }

    /// Appends a change whose content (if any) is inline.
    pub fn append(&mut self, change: &pb::Change) -> std::io::Result<()> {
        let mut payload = vec![KIND_CHANGE];
        change.encode(&mut payload).expect("a Vec grows");
        self.write_record(&payload)
    }

    /// Appends a write of `size` bytes whose content is the file at `content` (a staged file,
    /// copied beside the segment: the staged file changes with later writes).
    pub fn append_large_write(
        &mut self,
        write: &pb::WriteOp,
        content: &Path,
        size: u64,
    ) -> std::io::Result<()> {
        let data = self.data_path(self.segment, self.records);
        let copied = std::fs::copy(content, &data)?;
        if copied < size {
            return Err(std::io::Error::other(format!(
                "staged content is {copied} bytes, the file {size}"
            )));
        }
        OpenOptions::new().write(true).open(&data)?.set_len(size)?;
        let mut payload = vec![KIND_LARGE_WRITE];
        write.encode(&mut payload).expect("a Vec grows");
        self.write_record(&payload)
    }

    /// Starts a new segment and returns the number of the one that holds what was queued so
    /// far: a batch's, whose request id it names (so every batch has its own).
    pub fn rotate(&mut self) -> std::io::Result<u64> {
        let taken = self.segment;
        self.file = create_segment(&self.dir, &self.mount, taken + 1)?;
        self.segment = taken + 1;
        self.records = 0;
        Ok(taken)
    }

    /// Where segment `segment` is.
    pub fn segment_path(&self, segment: u64) -> PathBuf {
        segment_path(&self.dir, &self.mount, segment)
    }

    /// Forgets segments up to `segment` (never the current one): the session has their
    /// changes.
    pub fn remove_through(&mut self, segment: u64) {
        for (number, path) in segments(&self.dir, &self.mount) {
            if number <= segment && number != self.segment {
                remove_segment(&path);
            }
        }
    }

    /// Removes everything of this mount: it ended with the session holding every change.
    pub fn close(self) {
        for (_, path) in segments(&self.dir, &self.mount) {
            remove_segment(&path);
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{}.lock", self.mount)));
    }

    fn write_record(&mut self, payload: &[u8]) -> std::io::Result<()> {
        write_record(&mut self.file, payload)?;
        self.records += 1;
        Ok(())
    }

    fn data_path(&self, segment: u64, record: u64) -> PathBuf {
        data_path(&segment_path(&self.dir, &self.mount, segment), record)
    }
}

/// Appends the sent block of a batch, `changes` as built, to the (taken) segment at `path`:
/// written whole before the batch is first sent, so a recovering mount sends the very same
/// requests.
pub fn write_sent(path: &Path, changes: &[pb::Change]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().append(true).open(path)?;
    let mut payload = Vec::new();
    for change in changes {
        payload.clear();
        payload.push(KIND_SENT_CHANGE);
        change.encode(&mut payload).expect("a Vec grows");
        write_record(&mut file, &payload)?;
    }
    let mut end = vec![KIND_SENT_END];
    end.extend_from_slice(&(changes.len() as u64).to_le_bytes());
    write_record(&mut file, &end)
}

/// Writes one framed record; one write, so a kill leaves whole records and at most one torn
/// tail.
fn write_record(file: &mut File, payload: &[u8]) -> std::io::Result<()> {
    if payload.len() > MAX_RECORD_BYTES as usize {
        return Err(std::io::Error::other(format!(
            "a journal record of {} bytes is over the limit of {MAX_RECORD_BYTES}",
            payload.len()
        )));
    }
    let mut record = Vec::with_capacity(FRAME_BYTES + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&checksum(payload));
    record.extend_from_slice(payload);
    file.write_all(&record)
}

/// A dead mount's journal, locked while it is recovered.
pub struct Orphan {
    pub mount: String,
    dir: PathBuf,
    _lock: File,
    /// Its segments, in order.
    pub segments: Vec<(u64, PathBuf)>,
}

impl Orphan {
    /// The request id its batch of segment `segment` was (or would have been) sent as.
    pub fn batch_id(&self, segment: u64) -> String {
        format!("{}-{segment}", self.mount)
    }

    /// Moves the journal into a directory of its own beside the others (where no mount looks
    /// for it), for someone to read; returns that directory.
    pub fn set_aside(&self) -> PathBuf {
        let aside = self.dir.join(format!("set-aside-{}", self.mount));
        let _ = std::fs::create_dir_all(&aside);
        let prefix = format!("{}.", self.mount);
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::rename(entry.path(), aside.join(entry.file_name()));
            }
        }
        aside
    }

    /// Removes the journal: the session has all of it.
    pub fn remove(self) {
        for (_, path) in &self.segments {
            remove_segment(path);
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{}.lock", self.mount)));
    }
}

/// The journals of mounts of `session` that ended without sending everything (their lock is
/// free), oldest first.
pub fn orphans(cache: &Path, session: &str) -> std::io::Result<Vec<Orphan>> {
    let dir = cache.join("journal").join(session);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Another mount may recover (and remove) the same journal meanwhile: gone is skipped.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        if name.ends_with(".locking") {
            // A mount killed while it started its journal left this; nothing refers to it.
            match File::open(entry.path()) {
                Ok(lock) if try_lock(&lock)? => {
                    let _ = std::fs::remove_file(entry.path());
                }
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let Some(mount) = name.strip_suffix(".lock") else {
            continue;
        };
        let lock = match File::open(entry.path()) {
            Ok(lock) => lock,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        if !try_lock(&lock)? {
            continue; // a running mount
        }
        let modified = match lock.metadata() {
            Ok(meta) => meta.modified()?,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let segments = segments(&dir, mount);
        found.push((
            modified,
            Orphan {
                mount: mount.to_string(),
                dir: dir.clone(),
                _lock: lock,
                segments,
            },
        ));
    }
    found.sort_by_key(|(modified, _)| *modified);
    Ok(found.into_iter().map(|(_, orphan)| orphan).collect())
}

/// Reads a segment one record at a time; stops at the first record that is cut short or
/// damaged (after which [`SegmentReader::whole`] is false).
pub struct SegmentReader {
    path: PathBuf,
    file: std::io::BufReader<File>,
    left: u64,
    index: u64,
    damaged: bool,
}

impl SegmentReader {
    pub fn open(path: &Path) -> std::io::Result<SegmentReader> {
        let file = File::open(path)?;
        let left = file.metadata()?.len();
        Ok(SegmentReader {
            path: path.to_path_buf(),
            file: std::io::BufReader::new(file),
            left,
            index: 0,
            damaged: false,
        })
    }

    /// The next record; `None` at the end or at damage.
    pub fn next_entry(&mut self) -> std::io::Result<Option<Entry>> {
        if self.damaged || self.left == 0 {
            return Ok(None);
        }
        let mut frame = [0u8; FRAME_BYTES];
        if self.left < FRAME_BYTES as u64 {
            return self.damage();
        }
        self.file.read_exact(&mut frame)?;
        self.left -= FRAME_BYTES as u64;
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
        // Checked before anything is allocated for it.
        if len > MAX_RECORD_BYTES || u64::from(len) > self.left {
            return self.damage();
        }
        let mut payload = vec![0u8; len as usize];
        self.file.read_exact(&mut payload)?;
        self.left -= u64::from(len);
        if checksum(&payload) != frame[4..] {
            return self.damage();
        }
        let Some(entry) = decode(&payload, &self.path, self.index) else {
            return self.damage();
        };
        self.index += 1;
        Ok(Some(entry))
    }

    /// Whether every byte of the segment read back as records.
    pub fn whole(&self) -> bool {
        !self.damaged
    }

    fn damage(&mut self) -> std::io::Result<Option<Entry>> {
        self.damaged = true;
        Ok(None)
    }
}

/// Whether a segment holds a whole sent block (its batch went out, or was about to, as
/// built), read without keeping its records.
pub fn has_sent_block(path: &Path) -> std::io::Result<bool> {
    let mut reader = SegmentReader::open(path)?;
    let mut sent = 0u64;
    while let Some(entry) = reader.next_entry()? {
        match entry {
            Entry::Sent(_) => sent += 1,
            Entry::SentEnd(count) => return Ok(count == sent),
            _ => {}
        }
    }
    Ok(false)
}

fn decode(payload: &[u8], segment: &Path, index: u64) -> Option<Entry> {
    let (kind, body) = payload.split_first()?;
    match *kind {
        KIND_CHANGE => pb::Change::decode(body).ok().map(Entry::Change),
        KIND_LARGE_WRITE => {
            let write = pb::WriteOp::decode(body).ok()?;
            let content = data_path(segment, index);
            Some(Entry::LargeWrite { write, content })
        }
        KIND_SENT_CHANGE => pb::Change::decode(body).ok().map(Entry::Sent),
        KIND_SENT_END => Some(Entry::SentEnd(u64::from_le_bytes(body.try_into().ok()?))),
        _ => None,
    }
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    blake3::hash(payload).as_bytes()[..8]
        .try_into()
        .expect("8 bytes")
}

/// Takes the exclusive lock (flock) on `file` if nobody holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn segment_path(dir: &Path, mount: &str, segment: u64) -> PathBuf {
    dir.join(format!("{mount}.{segment:010}.log"))
}

fn data_path(segment: &Path, record: u64) -> PathBuf {
    segment.with_extension(format!("log.{record}.data"))
}

fn create_segment(dir: &Path, mount: &str, segment: u64) -> std::io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, mount, segment))
}

/// The segment files of `mount`, in order.
fn segments(dir: &Path, mount: &str) -> Vec<(u64, PathBuf)> {
    let prefix = format!("{mount}.");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let number = name.strip_prefix(&prefix)?.strip_suffix(".log")?;
            Some((number.parse().ok()?, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// Removes a segment and the data files beside it.
fn remove_segment(path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    if let Some(dir) = path.parent() {
        let data_prefix = format!("{name}.");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let other = entry.file_name().to_string_lossy().into_owned();
            if other.starts_with(&data_prefix) && other.ends_with(".data") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries of a segment, up to the first record that is cut short or damaged.
    fn read_segment(path: &Path) -> std::io::Result<Vec<Entry>> {
        let mut reader = SegmentReader::open(path)?;
        let mut entries = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            entries.push(entry);
        }
        Ok(entries)
    }

    #[test]
    fn a_sent_block_counts_only_when_whole() {
        let cache = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(cache.path(), "s1").unwrap();
        journal.append(&write("a", b"one")).unwrap();
        let taken = journal.rotate().unwrap();
        let path = journal.segment_path(taken);
        assert!(!has_sent_block(&path).unwrap());
        let built = [write("a", b"one"), write("b", b"two")];
        write_sent(&path, &built).unwrap();
        assert!(has_sent_block(&path).unwrap());
        let entries = read_segment(&path).unwrap();
        assert_eq!(
            entries[1..],
            [
                Entry::Sent(built[0].clone()),
                Entry::Sent(built[1].clone()),
                Entry::SentEnd(2)
            ]
        );
        // Cut before its end record (a kill while it was written): not a sent block.
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 5]).unwrap();
        assert!(!has_sent_block(&path).unwrap());
    }

    fn write(path: &str, content: &[u8]) -> pb::Change {
        pb::Change {
            op: Some(pb::change::Op::Write(pb::WriteOp {
                path: path.into(),
                content: content.to_vec().into(),
                mode: 0o644,
                ..Default::default()
            })),
            precondition: None,
        }
    }

    #[test]
    fn records_read_back_in_order_and_segments_rotate_and_go() {
        let cache = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(cache.path(), "s1").unwrap();
        journal.append(&write("a", b"one")).unwrap();
        journal.append(&write("b", b"two")).unwrap();
        let staged = cache.path().join("staged");
        std::fs::write(&staged, vec![7u8; 3000]).unwrap();
        let large = pb::WriteOp {
            path: "big".into(),
            ..Default::default()
        };
        journal.append_large_write(&large, &staged, 3000).unwrap();
        assert_eq!(journal.rotate().unwrap(), 0);
        journal.append(&write("c", b"three")).unwrap();
        // The mount is killed: its lock goes with it.
        let mount = journal.mount.clone();
        drop(journal);

        let orphans = orphans(cache.path(), "s1").unwrap();
        assert_eq!(orphans.len(), 1);
        let orphan = &orphans[0];
        assert_eq!(orphan.mount, mount);
        assert_eq!(orphan.batch_id(1), format!("{mount}-1"));
        let numbers: Vec<u64> = orphan.segments.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [0, 1]);
        let first = read_segment(&orphan.segments[0].1).unwrap();
        assert_eq!(first[0], Entry::Change(write("a", b"one")));
        assert_eq!(first[1], Entry::Change(write("b", b"two")));
        match &first[2] {
            Entry::LargeWrite { write, content } => {
                assert_eq!(write.path, "big");
                assert_eq!(std::fs::read(content).unwrap(), vec![7u8; 3000]);
            }
            other => panic!("{other:?}"),
        }
        let second = read_segment(&orphan.segments[1].1).unwrap();
        assert_eq!(second, [Entry::Change(write("c", b"three"))]);
        for orphan in orphans {
            orphan.remove();
        }
        let left: Vec<_> = std::fs::read_dir(cache.path().join("journal/s1"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_running_mounts_journal_is_not_an_orphan_and_acknowledged_segments_go() {
        let cache = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(cache.path(), "s1").unwrap();
        journal.append(&write("a", b"one")).unwrap();
        let taken = journal.rotate().unwrap();
        journal.append(&write("b", b"two")).unwrap();
        assert!(orphans(cache.path(), "s1").unwrap().is_empty());
        journal.remove_through(taken + 5);
        let left = segments(&journal.dir, &journal.mount);
        assert_eq!(left.len(), 1, "the current segment stays: {left:?}");
        assert_eq!(
            read_segment(&left[0].1).unwrap(),
            [Entry::Change(write("b", b"two"))]
        );
        journal.close();
        assert!(orphans(cache.path(), "s1").unwrap().is_empty());
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_segment_without_allocating_its_size() {
        let cache = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(cache.path(), "s1").unwrap();
        journal.append(&write("a", b"one")).unwrap();
        journal.append(&write("b", b"two")).unwrap();
        let path = segment_path(&journal.dir, &journal.mount, 0);
        drop(journal);
        let whole = std::fs::read(&path).unwrap();
        let first_len = FRAME_BYTES + u32::from_le_bytes(whole[..4].try_into().unwrap()) as usize;

        // Cut inside the second record: the first reads back.
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        assert_eq!(read_segment(&path).unwrap().len(), 1);
        // A flipped byte in the second record's payload: its checksum fails.
        let mut damaged = whole.clone();
        *damaged.last_mut().unwrap() ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        assert_eq!(read_segment(&path).unwrap().len(), 1);
        // A length of 4 GiB in the second frame: refused before it is allocated.
        let mut hostile = whole[..first_len].to_vec();
        hostile.extend_from_slice(&u32::MAX.to_le_bytes());
        hostile.extend_from_slice(&[0u8; 8]);
        std::fs::write(&path, &hostile).unwrap();
        assert_eq!(read_segment(&path).unwrap().len(), 1);
        // An unknown kind with a good checksum ends it too.
        let mut unknown = whole[..first_len].to_vec();
        let payload = [9u8, 1, 2];
        unknown.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        unknown.extend_from_slice(&checksum(&payload));
        unknown.extend_from_slice(&payload);
        std::fs::write(&path, &unknown).unwrap();
        assert_eq!(read_segment(&path).unwrap().len(), 1);
    }
}
