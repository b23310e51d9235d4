//! Property tests for trees, diff, manifests and paths. They are also the project's fuzz
//! targets for path validation and tree decoding: decoders and validators must never panic on
//! any input and must accept exactly the canonical forms.

use std::collections::BTreeMap;

use aether_core::hash::Hash;
use aether_core::path::{validate_name, MAX_NAME_BYTES, MAX_PATH_BYTES};
use aether_core::{
    diff_trees, ChunkManifest, EntryChange, EntryKind, Tree, TreeEntry, WorkspacePath,
};
use proptest::prelude::*;

/// A valid entry name: mostly short ASCII, sometimes multi-byte.
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._é-]{1,12}".prop_filter("not . or ..", |n| n != "." && n != "..")
}

/// An entry whose size follows from its hash, as in a real tree: equal content, equal size.
fn entry(name: impl Strategy<Value = String>) -> impl Strategy<Value = TreeEntry> {
    (
        name,
        0u8..3,
        prop::sample::select(vec![0o644u32, 0o755, 0o600]),
        0u8..8,
        prop::sample::select(vec![0i64, 1, -1_000_000_007, 1_700_000_000_123_456_789]),
    )
        .prop_map(|(name, kind, mode, content, mtime_ns)| TreeEntry {
            name,
            kind: match kind {
                0 => EntryKind::File,
                1 => EntryKind::Directory,
                _ => EntryKind::Symlink,
            },
            mode,
            size: u64::from(content) * 1000,
            mtime_ns,
            hash: Hash::of(&[content]),
        })
}

fn tree_from(entries: Vec<TreeEntry>) -> Tree {
    // Keep the last entry of each name so `from_entries` sees unique names.
    let unique: BTreeMap<String, TreeEntry> =
        entries.into_iter().map(|e| (e.name.clone(), e)).collect();
    Tree::from_entries(unique.into_values().collect()).expect("names are valid and unique")
}

fn tree() -> impl Strategy<Value = Tree> {
    prop::collection::vec(entry(name()), 0..24).prop_map(tree_from)
}

/// Trees over a few names, so two of them share, change and miss names often.
fn small_tree() -> impl Strategy<Value = Tree> {
    prop::collection::vec(entry("[a-f]"), 0..6).prop_map(tree_from)
}

/// Input for `Tree::decode`: random bytes, random bytes after the magic, or a valid encoding
/// with some bytes overwritten and maybe truncated.
fn tree_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(any::<u8>(), 0..256)
            .prop_map(|rest| [b"AFT1".as_slice(), &rest].concat()),
        (
            tree(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<prop::sample::Index>(),
            any::<bool>(),
        )
            .prop_map(|(tree, edits, cut, truncate)| {
                let mut bytes = tree.encode();
                for (at, byte) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            }),
    ]
}

/// Strings built from the characters and components path validation cares about.
fn path_like() -> impl Strategy<Value = String> {
    let chars = prop::sample::select(vec![
        'a', 'b', '/', '.', '\0', '\u{7f}', '\n', '\\', 'é', ' ',
    ]);
    let components = prop::sample::select(vec![
        "a", "b.c", "...", "é", "a\\b", " ", "", ".", "..", "x\0", "\u{7f}",
    ]);
    prop_oneof![
        any::<String>(),
        prop::collection::vec(chars, 0..24).prop_map(String::from_iter),
        (any::<bool>(), prop::collection::vec(components, 1..6)).prop_map(|(absolute, parts)| {
            let path = parts.join("/");
            if absolute {
                format!("/{path}")
            } else {
                path
            }
        }),
        // Around the path length limit, with the odd name over the name limit.
        prop::collection::vec(100usize..=260, 16..=30).prop_map(|lens| {
            let names: Vec<String> = lens.iter().map(|&n| "a".repeat(n)).collect();
            names.join("/")
        }),
        prop::collection::vec(prop::sample::select(vec!['a', 'é']), 120..140)
            .prop_map(String::from_iter),
    ]
}

proptest! {
    #[test]
    fn tree_decode_never_panics_and_accepts_only_canonical_bytes(bytes in tree_bytes()) {
        if let Ok(tree) = Tree::decode(&bytes) {
            prop_assert_eq!(tree.encode(), bytes);
        }
    }

    #[test]
    fn valid_trees_round_trip(tree in tree()) {
        let bytes = tree.encode();
        prop_assert_eq!(Tree::decode(&bytes), Ok(tree.clone()));
        prop_assert_eq!(tree.hash(), Hash::of(&bytes));
        let names: Vec<&str> = tree.entries().iter().map(|e| e.name.as_str()).collect();
        prop_assert!(names.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn path_parse_never_panics_and_accepts_only_clean_paths(s in path_like()) {
        let model_accepts = s.is_empty()
            || (s.len() <= MAX_PATH_BYTES && s.split('/').all(|c| validate_name(c).is_ok()));
        match WorkspacePath::parse(&s) {
            Ok(path) => {
                prop_assert!(model_accepts);
                prop_assert_eq!(path.as_str(), s.as_str());
                prop_assert!(!s.contains('\0'));
                prop_assert!(!s.chars().any(|c| c.is_ascii_control()));
                prop_assert!(s.len() <= MAX_PATH_BYTES);
                for c in path.components() {
                    prop_assert!(!c.is_empty() && c != "." && c != "..");
                    prop_assert!(c.len() <= MAX_NAME_BYTES);
                }
                prop_assert_eq!(path.components().collect::<Vec<_>>().join("/"), s.clone());
                prop_assert_eq!(WorkspacePath::parse(path.as_str()), Ok(path.clone()));
                if let (Some(parent), Some(file_name)) = (path.parent(), path.file_name()) {
                    prop_assert!(path.starts_with(&parent));
                    prop_assert_eq!(parent.join(file_name), Ok(path.clone()));
                    prop_assert_eq!(
                        path.strip_prefix(&parent).map(|rest| rest.to_string()),
                        Some(file_name.to_string())
                    );
                }
            }
            Err(err) => {
                prop_assert!(!model_accepts, "rejected {:?}: {}", s, err);
                prop_assert!(!err.to_string().contains('\0'));
            }
        }
    }

    #[test]
    fn applying_the_diff_turns_old_into_new(old in small_tree(), new in small_tree()) {
        let changes = diff_trees(&old, &new);
        let mut patched = old.clone();
        for change in changes.iter().cloned() {
            match change {
                EntryChange::Added(entry) => prop_assert!(patched.insert(entry).is_none()),
                EntryChange::Deleted(entry) => prop_assert_eq!(patched.remove(&entry.name), Some(entry)),
                EntryChange::Modified { old, new } => prop_assert_eq!(patched.insert(new), Some(old)),
            }
        }
        prop_assert_eq!(&patched, &new);
        prop_assert_eq!(changes.is_empty(), old == new);
        let names: Vec<&str> = changes
            .iter()
            .map(|c| match c {
                EntryChange::Added(e) | EntryChange::Deleted(e) | EntryChange::Modified { new: e, .. } => e.name.as_str(),
            })
            .collect();
        prop_assert!(names.windows(2).all(|w| w[0] < w[1]), "changes out of name order");
    }

    #[test]
    fn manifests_round_trip_and_decode_never_panics(
        chunks in prop::collection::vec((any::<[u8; 32]>(), 1u64..1 << 40), 1..16),
        noise in prop::collection::vec(any::<u8>(), 0..128),
        offset in any::<u64>(),
    ) {
        let manifest = ChunkManifest { chunks: chunks.into_iter().map(|(h, s)| (Hash(h), s)).collect() };
        let bytes = manifest.encode();
        prop_assert_eq!(ChunkManifest::decode(&bytes), Ok(manifest.clone()));
        if let Ok(decoded) = ChunkManifest::decode(&[b"AFM1".as_slice(), &noise].concat()) {
            prop_assert_eq!(decoded.encode(), [b"AFM1".as_slice(), &noise].concat());
        }
        let offset = offset % (manifest.total_size() + 1);
        match manifest.locate(offset) {
            Some((index, start)) => {
                prop_assert!(start <= offset && offset < start + manifest.chunks[index].1);
            }
            None => prop_assert_eq!(offset, manifest.total_size()),
        }
    }
}
