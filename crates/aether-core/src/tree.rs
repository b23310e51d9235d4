//! Directory trees: one directory level as sorted entries, its deterministic binary encoding,
//! and the one-level diff of two trees.
//!
//! A tree is content-addressed by the hash of its encoding, so equal directories have equal
//! hashes; that is what lets fork, checkpoint and restore move one root hash, and lets diff
//! skip every shared subtree. [`Tree::decode`] is strict: it accepts only what
//! [`Tree::encode`] produces, so one directory has exactly one encoding and one name.
//!
//! Two encodings, and exactly one fits a given directory:
//! - `AFT1` (trees written before symlinks and times existed, and any directory of files and
//!   directories whose times are all zero): magic `b"AFT1"`, `u32` LE entry count, then per
//!   entry: `u8` kind (1 file, 2 directory), `u32` LE mode, `u64` LE size, 32-byte hash,
//!   `u16` LE name length, name bytes.
//! - `AFT2` (everything else): the same with kind 3 (symlink) allowed and an `i64` LE
//!   modification time in nanoseconds since the Unix epoch after the size.
//!
//! Choosing `AFT1` whenever it can express a directory keeps the names of old trees: a tree
//! read, left unchanged and hashed again keeps its hash, so old sessions, checkpoints and
//! commits still read and share subtrees with new ones.

use std::cmp::Ordering;

use crate::hash::Hash;
use crate::path::{validate_name, PathError};

const MAGIC_V1: &[u8; 4] = b"AFT1";
const MAGIC_V2: &[u8; 4] = b"AFT2";
/// Bytes of an `AFT1` entry before its name: kind, mode, size, hash, name length.
const ENTRY_HEADER_BYTES: usize = 1 + 4 + 8 + 32 + 2;
/// `AFT2` adds the modification time.
const ENTRY_HEADER_BYTES_V2: usize = ENTRY_HEADER_BYTES + 8;
const KIND_FILE: u8 = 1;
const KIND_DIRECTORY: u8 = 2;
const KIND_SYMLINK: u8 = 3;
/// Longest symlink target, as Linux's PATH_MAX (the target is the entry's content).
pub const MAX_SYMLINK_TARGET_BYTES: usize = 4095;

/// What an entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// A file; its hash names its content (a blob or a chunk manifest).
    File,
    /// A directory; its hash names its [`Tree`].
    Directory,
    /// A symbolic link; its content (named by its hash, `size` bytes) is the target path,
    /// stored as given and never followed by the service.
    Symlink,
}

/// One name in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// A valid single path component (see [`validate_name`]).
    pub name: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Unix permission bits.
    pub mode: u32,
    /// File size in bytes; for a directory, the total file bytes of its subtree; for a
    /// symlink, the length of its target.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch; 0 when unknown (trees written
    /// before times were kept).
    pub mtime_ns: i64,
    /// The content hash (file, symlink target) or tree hash (directory).
    pub hash: Hash,
}

/// One directory level. Invariant: entries sorted by name in byte order, names unique and
/// valid.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    entries: Vec<TreeEntry>,
}

/// Why entries or bytes do not form a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// Two entries share a name.
    #[error("duplicate entry name \"{name}\": names in a directory must be unique")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// An entry name is not a valid path component.
    #[error("invalid entry name: {0}")]
    InvalidName(#[source] PathError),
    /// The encoding does not start with `AFT1` or `AFT2`.
    #[error("not a tree encoding: expected magic \"AFT1\" or \"AFT2\" in the first 4 bytes")]
    BadMagic,
    /// An `AFT2` encoding of a directory that `AFT1` expresses: not the canonical bytes.
    #[error("tree encoding is AFT2 but holds only files and directories without times: the canonical encoding is AFT1")]
    NotCanonical,
    /// The encoding ends early.
    #[error("tree encoding is truncated: {what} needs {needed} bytes at offset {offset}, but the input is {len} bytes")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// How many bytes it needs.
        needed: usize,
        /// The input length.
        len: usize,
    },
    /// The entry count cannot fit in the bytes that follow it.
    #[error("tree encoding declares {count} entries but only {remaining} bytes follow: each entry needs at least {min} bytes")]
    CountTooLarge {
        /// The declared count.
        count: u32,
        /// Bytes after the count.
        remaining: usize,
        /// The smallest possible entry.
        min: usize,
    },
    /// An entry's kind byte is not 1 (file), 2 (directory) or, in `AFT2`, 3 (symlink).
    #[error("tree entry {index} has unknown kind {kind}: expected 1 (file), 2 (directory) or 3 (symlink, AFT2 only)")]
    UnknownKind {
        /// The entry's position.
        index: usize,
        /// The kind byte.
        kind: u8,
    },
    /// An entry's name is not UTF-8.
    #[error("tree entry {index} has a name that is not valid UTF-8")]
    NameNotUtf8 {
        /// The entry's position.
        index: usize,
    },
    /// An entry's name does not sort after the previous entry's.
    #[error("tree entry {index} \"{name}\" is out of order: entries must be sorted by name in strictly increasing byte order")]
    Unsorted {
        /// The entry's position.
        index: usize,
        /// Its name.
        name: String,
    },
    /// Bytes remain after the last entry.
    #[error("tree encoding has {count} trailing bytes after the last entry: remove them")]
    TrailingBytes {
        /// How many bytes remain.
        count: usize,
    },
}

impl Tree {
    /// The empty directory.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Builds a tree from entries in any order; rejects invalid or duplicate names.
    pub fn from_entries(mut entries: Vec<TreeEntry>) -> Result<Tree, TreeError> {
        for entry in &entries {
            validate_name(&entry.name).map_err(TreeError::InvalidName)?;
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(TreeError::DuplicateName {
                name: pair[0].name.clone(),
            });
        }
        Ok(Tree { entries })
    }

    /// The entries, sorted by name.
    pub fn entries(&self) -> &[TreeEntry] {
        &self.entries
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&TreeEntry> {
        self.position(name).ok().map(|i| &self.entries[i])
    }

    /// Inserts `entry`, replacing and returning any entry of the same name.
    ///
    /// # Panics
    ///
    /// If `entry.name` is not a valid name (see [`validate_name`]). Names taken from a
    /// [`WorkspacePath`](crate::WorkspacePath) are always valid; a tree with an invalid name
    /// would encode to bytes that [`Tree::decode`] rejects.
    pub fn insert(&mut self, entry: TreeEntry) -> Option<TreeEntry> {
        if let Err(err) = validate_name(&entry.name) {
            panic!("Tree::insert called with an invalid name: {err}");
        }
        match self.position(&entry.name) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i], entry)),
            Err(i) => {
                self.entries.insert(i, entry);
                None
            }
        }
    }

    /// Removes and returns the entry called `name`.
    pub fn remove(&mut self, name: &str) -> Option<TreeEntry> {
        self.position(name).ok().map(|i| self.entries.remove(i))
    }

    /// Whether the directory has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The sum of the entries' sizes (saturating), i.e. the file bytes under this directory.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, entry| sum.saturating_add(entry.size))
    }

    /// Whether `AFT1` can express this directory (see the module docs).
    fn fits_v1(&self) -> bool {
        self.entries
            .iter()
            .all(|e| e.kind != EntryKind::Symlink && e.mtime_ns == 0)
    }

    /// The canonical binary encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let v1 = self.fits_v1();
        let names: usize = self.entries.iter().map(|e| e.name.len()).sum();
        let per_entry = if v1 {
            ENTRY_HEADER_BYTES
        } else {
            ENTRY_HEADER_BYTES_V2
        };
        let mut out = Vec::with_capacity(8 + self.entries.len() * per_entry + names);
        out.extend_from_slice(if v1 { MAGIC_V1 } else { MAGIC_V2 });
        let count = u32::try_from(self.entries.len()).expect("a tree has at most u32::MAX entries");
        out.extend_from_slice(&count.to_le_bytes());
        for entry in &self.entries {
            out.push(match entry.kind {
                EntryKind::File => KIND_FILE,
                EntryKind::Directory => KIND_DIRECTORY,
                EntryKind::Symlink => KIND_SYMLINK,
            });
            out.extend_from_slice(&entry.mode.to_le_bytes());
            out.extend_from_slice(&entry.size.to_le_bytes());
            if !v1 {
                out.extend_from_slice(&entry.mtime_ns.to_le_bytes());
            }
            out.extend_from_slice(entry.hash.as_bytes());
            // Valid names are at most MAX_NAME_BYTES (255) long, so this never truncates.
            out.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
            out.extend_from_slice(entry.name.as_bytes());
        }
        out
    }

    /// Parses an encoding, accepting only the exact bytes [`Tree::encode`] would produce.
    /// Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Tree, TreeError> {
        let mut reader = Reader { bytes, offset: 0 };
        let (v1, count) = reader.header()?;
        let mut entries: Vec<TreeEntry> = Vec::with_capacity(count);
        for index in 0..count {
            let entry = reader.entry(v1, index)?;
            if let Some(previous) = entries.last() {
                check_order(previous, &entry.name, index)?;
            }
            entries.push(entry);
        }
        let trailing = bytes.len() - reader.offset;
        if trailing != 0 {
            return Err(TreeError::TrailingBytes { count: trailing });
        }
        let tree = Tree { entries };
        if !v1 && tree.fits_v1() {
            return Err(TreeError::NotCanonical);
        }
        Ok(tree)
    }

    /// The tree's name: the hash of its encoding.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.encode())
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|entry| entry.name.as_str().cmp(name))
    }
}

/// The hash of the empty tree, a constant users see for empty sessions.
pub fn empty_tree_hash() -> Hash {
    Tree::new().hash()
}

/// How one name differs between two directory levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryChange {
    /// The name exists only in the new tree.
    Added(TreeEntry),
    /// The name exists only in the old tree.
    Deleted(TreeEntry),
    /// The name exists in both with a different kind, mode, modification time or hash.
    Modified {
        /// The entry in the old tree.
        old: TreeEntry,
        /// The entry in the new tree.
        new: TreeEntry,
    },
}

/// One-level diff of two trees in name order, skipping entries with equal (kind, mode, hash,
/// modification time). [`EntryChange::what`] tells a content change from a time-only one.
/// Callers recurse into directories that differ, so shared subtrees are never visited.
pub fn diff_trees(old: &Tree, new: &Tree) -> Vec<EntryChange> {
    let mut changes = Vec::new();
    let mut olds = old.entries.iter().peekable();
    let mut news = new.entries.iter().peekable();
    loop {
        let order = match (olds.peek(), news.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(o), Some(n)) => o.name.cmp(&n.name),
        };
        match order {
            Ordering::Less => changes.extend(olds.next().cloned().map(EntryChange::Deleted)),
            Ordering::Greater => changes.extend(news.next().cloned().map(EntryChange::Added)),
            Ordering::Equal => {
                let (o, n) = (olds.next().unwrap(), news.next().unwrap());
                if (o.kind, o.mode, o.hash, o.mtime_ns) != (n.kind, n.mode, n.hash, n.mtime_ns) {
                    changes.push(EntryChange::Modified {
                        old: o.clone(),
                        new: n.clone(),
                    });
                }
            }
        }
    }
    changes
}

/// Which attributes of an entry differ between two versions of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// The content (file bytes, symlink target or subtree) differs.
    pub content: bool,
    /// The permission bits differ.
    pub mode: bool,
    /// File, directory and symlink are different kinds.
    pub kind: bool,
    /// The modification time differs.
    pub mtime: bool,
}

impl Changed {
    /// Compares two versions of one entry.
    pub fn between(old: &TreeEntry, new: &TreeEntry) -> Changed {
        Changed {
            content: old.hash != new.hash,
            mode: old.mode != new.mode,
            kind: old.kind != new.kind,
            mtime: old.mtime_ns != new.mtime_ns,
        }
    }

    /// Only the modification time differs.
    pub fn mtime_only(&self) -> bool {
        self.mtime && !self.content && !self.mode && !self.kind
    }
}

/// A bounds-checked cursor over the input of [`Tree::decode`].
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, needed: usize, what: &'static str) -> Result<&'a [u8], TreeError> {
        let field = self
            .bytes
            .get(self.offset..)
            .and_then(|rest| rest.get(..needed))
            .ok_or(TreeError::Truncated {
                what,
                offset: self.offset,
                needed,
                len: self.bytes.len(),
            })?;
        self.offset += needed;
        Ok(field)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], TreeError> {
        let field = self.take(N, what)?;
        Ok(field.try_into().expect("take returns exactly N bytes"))
    }

    /// The magic and the entry count: whether the encoding is `AFT1`, and how many entries
    /// follow (at most what the remaining bytes can hold).
    fn header(&mut self) -> Result<(bool, usize), TreeError> {
        let v1 = match self.take(4, "magic").ok() {
            Some(magic) if magic == MAGIC_V1.as_slice() => true,
            Some(magic) if magic == MAGIC_V2.as_slice() => false,
            _ => return Err(TreeError::BadMagic),
        };
        let count = u32::from_le_bytes(self.array("entry count")?);
        // Every entry has a header and a name of at least one byte; checking this first
        // bounds the caller's allocation by the input size.
        let min = if v1 {
            ENTRY_HEADER_BYTES
        } else {
            ENTRY_HEADER_BYTES_V2
        } + 1;
        let remaining = self.bytes.len() - self.offset;
        if count as usize > remaining / min {
            return Err(TreeError::CountTooLarge {
                count,
                remaining,
                min,
            });
        }
        Ok((v1, count as usize))
    }

    /// Entry `index`, its name validated (but not yet checked against its predecessor).
    fn entry(&mut self, v1: bool, index: usize) -> Result<TreeEntry, TreeError> {
        let kind = match self.array::<1>("entry kind")?[0] {
            KIND_FILE => EntryKind::File,
            KIND_DIRECTORY => EntryKind::Directory,
            KIND_SYMLINK if !v1 => EntryKind::Symlink,
            kind => return Err(TreeError::UnknownKind { index, kind }),
        };
        let mode = u32::from_le_bytes(self.array("entry mode")?);
        let size = u64::from_le_bytes(self.array("entry size")?);
        let mtime_ns = if v1 {
            0
        } else {
            i64::from_le_bytes(self.array("entry modification time")?)
        };
        let hash = Hash(self.array("entry hash")?);
        let name_len = u16::from_le_bytes(self.array("entry name length")?);
        let name = self.take(name_len as usize, "entry name")?;
        let name = std::str::from_utf8(name).map_err(|_| TreeError::NameNotUtf8 { index })?;
        validate_name(name).map_err(TreeError::InvalidName)?;
        Ok(TreeEntry {
            name: name.to_owned(),
            kind,
            mode,
            size,
            mtime_ns,
            hash,
        })
    }
}

/// Entry `index`, called `name`, must sort strictly after `previous`.
fn check_order(previous: &TreeEntry, name: &str, index: usize) -> Result<(), TreeError> {
    match previous.name.as_str().cmp(name) {
        Ordering::Less => Ok(()),
        Ordering::Equal => Err(TreeError::DuplicateName {
            name: name.to_owned(),
        }),
        Ordering::Greater => Err(TreeError::Unsorted {
            index,
            name: name.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &[u8]) -> TreeEntry {
        TreeEntry {
            name: name.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: content.len() as u64,
            mtime_ns: 0,
            hash: Hash::of(content),
        }
    }

    fn dir(name: &str, tree: &Tree) -> TreeEntry {
        TreeEntry {
            name: name.into(),
            kind: EntryKind::Directory,
            mode: 0o755,
            size: tree.total_size(),
            mtime_ns: 0,
            hash: tree.hash(),
        }
    }

    fn sample() -> Tree {
        let sub = Tree::from_entries(vec![file("inner.txt", b"inner")]).unwrap();
        Tree::from_entries(vec![
            file("b.txt", b"bee"),
            dir("sub", &sub),
            file("a.txt", b"a"),
        ])
        .unwrap()
    }

    #[test]
    fn from_entries_sorts_and_validates() {
        let tree = sample();
        let names: Vec<_> = tree.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt", "sub"]);
        assert_eq!(tree.len(), 3);
        assert!(!tree.is_empty());
        assert_eq!(tree.total_size(), 1 + 3 + 5);

        let dup = Tree::from_entries(vec![file("x", b"1"), file("x", b"2")]);
        assert_eq!(dup, Err(TreeError::DuplicateName { name: "x".into() }));
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(matches!(
                Tree::from_entries(vec![file(bad, b"")]),
                Err(TreeError::InvalidName(_))
            ));
        }
    }

    #[test]
    fn names_sort_by_bytes() {
        let tree =
            Tree::from_entries(vec![file("b", b""), file("B", b""), file("é", b"")]).unwrap();
        let names: Vec<_> = tree.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["B", "b", "é"]);
    }

    #[test]
    fn get_insert_remove() {
        let mut tree = sample();
        assert_eq!(tree.get("b.txt"), Some(&file("b.txt", b"bee")));
        assert_eq!(tree.get("missing"), None);

        assert_eq!(tree.insert(file("c.txt", b"c")), None);
        assert_eq!(
            tree.insert(file("a.txt", b"new")),
            Some(file("a.txt", b"a"))
        );
        let names: Vec<_> = tree.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt", "c.txt", "sub"]);
        assert_eq!(tree.get("a.txt"), Some(&file("a.txt", b"new")));

        assert_eq!(tree.remove("b.txt"), Some(file("b.txt", b"bee")));
        assert_eq!(tree.remove("b.txt"), None);
        assert_eq!(tree.len(), 3);
    }

    #[test]
    #[should_panic(expected = "invalid name")]
    fn insert_rejects_invalid_name() {
        Tree::new().insert(file("a/b", b""));
    }

    #[test]
    fn encode_decode_round_trip() {
        let tree = sample();
        let bytes = tree.encode();
        assert_eq!(&bytes[..4], b"AFT1");
        assert_eq!(Tree::decode(&bytes), Ok(tree.clone()));
        assert_eq!(tree.hash(), Hash::of(&bytes));
        assert_eq!(Tree::decode(&Tree::new().encode()), Ok(Tree::new()));
    }

    #[test]
    fn encoding_layout() {
        let tree = Tree::from_entries(vec![file("a", b"xy")]).unwrap();
        let mut expected = b"AFT1".to_vec();
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.push(1);
        expected.extend_from_slice(&0o644u32.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(Hash::of(b"xy").as_bytes());
        expected.extend_from_slice(&1u16.to_le_bytes());
        expected.push(b'a');
        assert_eq!(tree.encode(), expected);
    }

    #[test]
    fn empty_tree_hash_is_stable() {
        assert_eq!(empty_tree_hash(), Hash::of(b"AFT1\0\0\0\0"));
        assert_eq!(empty_tree_hash(), Tree::new().hash());
    }

    #[test]
    fn decode_rejects_every_truncation() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                Tree::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn decode_rejects_garbage() {
        assert_eq!(Tree::decode(b""), Err(TreeError::BadMagic));
        assert_eq!(Tree::decode(b"AFT3\0\0\0\0"), Err(TreeError::BadMagic));
        assert_eq!(Tree::decode(b"AFT2\0\0\0\0"), Err(TreeError::NotCanonical));
        assert!(matches!(
            Tree::decode(b"AFT1\xff\xff\xff\xff"),
            Err(TreeError::CountTooLarge {
                count: u32::MAX,
                ..
            })
        ));

        let mut trailing = sample().encode();
        trailing.push(0);
        assert_eq!(
            Tree::decode(&trailing),
            Err(TreeError::TrailingBytes { count: 1 })
        );
    }

    /// Encodes one entry by hand so tests can build encodings `encode` never would.
    fn raw_entry(kind: u8, name: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&[0; 32]);
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out
    }

    fn raw_tree(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"AFT1".to_vec();
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        entries.iter().for_each(|e| out.extend_from_slice(e));
        out
    }

    #[test]
    fn decode_rejects_bad_entries() {
        assert!(Tree::decode(&raw_tree(&[raw_entry(1, b"a")])).is_ok());
        assert_eq!(
            Tree::decode(&raw_tree(&[raw_entry(3, b"a")])),
            Err(TreeError::UnknownKind { index: 0, kind: 3 })
        );
        assert_eq!(
            Tree::decode(&raw_tree(&[raw_entry(0, b"a")])),
            Err(TreeError::UnknownKind { index: 0, kind: 0 })
        );
        assert_eq!(
            Tree::decode(&raw_tree(&[raw_entry(1, b"\xff")])),
            Err(TreeError::NameNotUtf8 { index: 0 })
        );
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0", b"\x7f"] {
            assert!(matches!(
                Tree::decode(&raw_tree(&[raw_entry(1, bad)])),
                Err(TreeError::InvalidName(_) | TreeError::CountTooLarge { .. })
            ));
        }
        assert_eq!(
            Tree::decode(&raw_tree(&[raw_entry(1, b"b"), raw_entry(1, b"a")])),
            Err(TreeError::Unsorted {
                index: 1,
                name: "a".into()
            })
        );
        assert_eq!(
            Tree::decode(&raw_tree(&[raw_entry(1, b"a"), raw_entry(2, b"a")])),
            Err(TreeError::DuplicateName { name: "a".into() })
        );
    }

    #[test]
    fn decode_rejects_name_running_past_the_end() {
        let mut bytes = raw_tree(&[raw_entry(1, b"abc")]);
        let len_at = bytes.len() - 5;
        bytes[len_at..len_at + 2].copy_from_slice(&9u16.to_le_bytes());
        let err = Tree::decode(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                TreeError::Truncated {
                    what: "entry name",
                    needed: 9,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn diff_reports_changes_in_name_order() {
        let old = sample();
        let mut new = old.clone();
        new.remove("a.txt");
        new.insert(file("b.txt", b"changed"));
        new.insert(file("c.txt", b"c"));
        let sub = old.get("sub").unwrap().clone();
        new.insert(TreeEntry {
            mode: 0o700,
            ..sub.clone()
        });

        let changes = diff_trees(&old, &new);
        assert_eq!(
            changes,
            vec![
                EntryChange::Deleted(file("a.txt", b"a")),
                EntryChange::Modified {
                    old: file("b.txt", b"bee"),
                    new: file("b.txt", b"changed"),
                },
                EntryChange::Added(file("c.txt", b"c")),
                EntryChange::Modified {
                    old: sub.clone(),
                    new: TreeEntry { mode: 0o700, ..sub },
                },
            ]
        );
        assert!(diff_trees(&old, &old).is_empty());
        assert!(diff_trees(&Tree::new(), &Tree::new()).is_empty());
    }

    #[test]
    fn diff_sees_kind_change_and_ignores_size_only_change() {
        let old = Tree::from_entries(vec![file("x", b"1")]).unwrap();
        let as_dir = Tree::from_entries(vec![TreeEntry {
            kind: EntryKind::Directory,
            ..file("x", b"1")
        }])
        .unwrap();
        assert_eq!(diff_trees(&old, &as_dir).len(), 1);
        let resized = Tree::from_entries(vec![TreeEntry {
            size: 99,
            ..file("x", b"1")
        }])
        .unwrap();
        assert!(diff_trees(&old, &resized).is_empty());
    }

    #[test]
    fn error_messages_are_precise() {
        assert_eq!(
            TreeError::UnknownKind { index: 2, kind: 7 }.to_string(),
            "tree entry 2 has unknown kind 7: expected 1 (file), 2 (directory) or 3 (symlink, AFT2 only)"
        );
        let err = Tree::from_entries(vec![file("..", b"")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid entry name: path \"..\""),
            "{err}"
        );
    }

    fn symlink(name: &str, target: &str, mtime_ns: i64) -> TreeEntry {
        TreeEntry {
            name: name.into(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: target.len() as u64,
            mtime_ns,
            hash: Hash::of(target.as_bytes()),
        }
    }

    #[test]
    fn times_and_symlinks_use_aft2_and_round_trip() {
        let timed = Tree::from_entries(vec![TreeEntry {
            mtime_ns: 1_700_000_000_123_456_789,
            ..file("a", b"x")
        }])
        .unwrap();
        let bytes = timed.encode();
        assert_eq!(&bytes[..4], b"AFT2");
        assert_eq!(Tree::decode(&bytes), Ok(timed.clone()));
        let linked = Tree::from_entries(vec![symlink("l", "../t", 0), file("f", b"")]).unwrap();
        let bytes = linked.encode();
        assert_eq!(&bytes[..4], b"AFT2");
        assert_eq!(Tree::decode(&bytes), Ok(linked));
        // Negative times (before 1970) are kept.
        let old = Tree::from_entries(vec![symlink("l", "t", -5)]).unwrap();
        assert_eq!(Tree::decode(&old.encode()), Ok(old));
    }

    #[test]
    fn old_trees_keep_their_names() {
        // A tree without times or symlinks encodes exactly as before AFT2 existed.
        assert_eq!(&sample().encode()[..4], b"AFT1");
        let mut v2 = sample().encode();
        v2[..4].copy_from_slice(b"AFT2");
        assert!(Tree::decode(&v2).is_err());
    }

    #[test]
    fn symlinks_are_refused_in_aft1() {
        assert_eq!(
            Tree::decode(&raw_tree(&[raw_entry(3, b"a")])),
            Err(TreeError::UnknownKind { index: 0, kind: 3 })
        );
    }

    #[test]
    fn changed_tells_time_only_changes_apart() {
        let old = file("a", b"x");
        let touched = TreeEntry {
            mtime_ns: 5,
            ..old.clone()
        };
        assert!(Changed::between(&old, &touched).mtime_only());
        let edited = TreeEntry {
            mtime_ns: 5,
            ..file("a", b"y")
        };
        let changed = Changed::between(&old, &edited);
        assert!(changed.content && changed.mtime && !changed.mtime_only());
        assert_eq!(
            diff_trees(
                &Tree::from_entries(vec![old]).unwrap(),
                &Tree::from_entries(vec![touched]).unwrap()
            )
            .len(),
            1
        );
    }
}
