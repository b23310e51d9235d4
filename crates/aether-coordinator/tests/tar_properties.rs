//! Fuzzing tar import (promise 6): the streaming reader never panics, whatever it accepts is
//! only regular files, directories and symlinks at clean paths under the import directory, and
//! what it makes of an archive does not depend on how the archive's bytes were split into
//! messages. Inputs are random bytes, and real archives with hostile names, types and link
//! targets, then mutated.

use std::sync::Arc;

use aether_coordinator::archive::{read_tar, ArchiveItem};
use aether_coordinator::trees::Trees;
use aether_coordinator::Error;
use aether_core::WorkspacePath;
use aether_store::backend::{BackendArgs, BackendKind};
use aether_store::{BlobStore, Limits};
use bytes::Bytes;
use proptest::prelude::*;

/// Reads `bytes`, split at `cuts` (offsets, any order), into an in-memory store.
fn parse_split(
    bytes: &[u8],
    cuts: &[usize],
    under: &WorkspacePath,
) -> Result<Vec<ArchiveItem>, Error> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.extend([0, bytes.len()]);
    cuts.sort_unstable();
    cuts.dedup();
    let bytes = Bytes::copy_from_slice(bytes);
    let pieces: Vec<Result<Bytes, Error>> = cuts
        .windows(2)
        .map(|w| Ok(bytes.slice(w[0]..w[1])))
        .collect();
    let backend = BackendArgs {
        store_backend: BackendKind::Memory,
        ..BackendArgs::local(std::path::PathBuf::new())
    };
    let store = BlobStore::new(backend.build("objects").unwrap(), Limits::default());
    let trees = Trees::new(Arc::new(store));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(read_tar(futures::stream::iter(pieces), under, &trees))
}

fn parse_tar(bytes: &[u8], under: &WorkspacePath) -> Result<Vec<ArchiveItem>, Error> {
    parse_split(bytes, &[], under)
}

/// One raw tar entry: name bytes, type flag, link target, content.
type RawEntry = (Vec<u8>, u8, Vec<u8>, Vec<u8>);

fn entry() -> impl Strategy<Value = RawEntry> {
    let name = prop_oneof![
        "[a-z]{1,8}(/[a-z]{1,8}){0,3}".prop_map(String::into_bytes),
        prop::sample::select(vec![
            "..",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/./b",
            ".",
            "",
            "a\\b",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 1..100),
    ];
    // Regular, hard link, symlink, char, block, dir, fifo, and arbitrary flags.
    let kind = prop_oneof![
        prop::sample::select(vec![b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'\0']),
        any::<u8>(),
    ];
    let link = prop_oneof![
        Just(Vec::new()),
        prop::sample::select(vec!["../../etc/passwd", "/etc/shadow", "x"])
            .prop_map(|s| s.as_bytes().to_vec()),
    ];
    let data = prop::collection::vec(any::<u8>(), 0..600);
    (name, kind, link, data)
}

/// An entry with a printable name and a known type flag, so the tar reader sees exactly the
/// name and type given (no NULs cutting names short, no extension records renaming entries).
fn plain_entry() -> impl Strategy<Value = RawEntry> {
    let name = prop_oneof![
        "[a-z]{1,8}(/[a-z]{1,8}){0,3}",
        prop::sample::select(vec!["..", "../x", "a/../../x", "/etc/passwd", "/x", "a/.."])
            .prop_map(String::from),
    ];
    let kind = prop::sample::select(vec![b'0', b'1', b'2', b'3', b'4', b'5', b'6']);
    let link = prop::sample::select(vec!["../../etc/passwd", "/etc/shadow", "x"]);
    (name, kind, link, prop::collection::vec(any::<u8>(), 0..100)).prop_map(
        |(name, kind, link, data)| (name.into_bytes(), kind, link.as_bytes().to_vec(), data),
    )
}

fn build(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().expect("a GNU header");
        let n = name.len().min(gnu.name.len());
        gnu.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(gnu.linkname.len());
        gnu.linkname[..l].copy_from_slice(&link[..l]);
        gnu.typeflag[0] = *kind;
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn check_accepted(items: &[ArchiveItem], under: &WorkspacePath) -> Result<(), TestCaseError> {
    for item in items {
        let path = match item {
            ArchiveItem::File { path, .. }
            | ArchiveItem::Directory { path, .. }
            | ArchiveItem::Symlink { path, .. } => path,
        };
        // Clean: re-parsing the path gives the same path, and it sits under the import dir.
        prop_assert_eq!(&WorkspacePath::parse(path.as_str()).unwrap(), path);
        let prefix = format!("{}/", under.as_str());
        prop_assert!(
            path.as_str().starts_with(&prefix),
            "{} is outside {}",
            path,
            under
        );
        prop_assert!(!path
            .as_str()
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let under = WorkspacePath::parse("in").unwrap();
        if let Ok(items) = parse_tar(&bytes, &under) {
            check_accepted(&items, &under)?;
        }
    }

    #[test]
    fn hostile_archives_are_refused_or_clean(
        entries in prop::collection::vec(entry(), 1..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let under = WorkspacePath::parse("in").unwrap();
        let mut bytes = build(&entries);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(items) = parse_tar(&bytes, &under) {
            check_accepted(&items, &under)?;
        }
    }

    #[test]
    fn how_the_bytes_arrive_changes_nothing(
        entries in prop::collection::vec(entry(), 1..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..2),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let under = WorkspacePath::parse("in").unwrap();
        let mut bytes = build(&entries);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let whole = parse_tar(&bytes, &under);
        let split = parse_split(&bytes, &cuts, &under);
        prop_assert_eq!(format!("{whole:?}"), format!("{split:?}"));
    }

    #[test]
    fn links_devices_and_escapes_are_always_refused(
        entries in prop::collection::vec(plain_entry(), 1..6),
    ) {
        let under = WorkspacePath::parse("in").unwrap();
        let hostile = entries.iter().any(|(name, kind, _, _)| {
            let name = String::from_utf8_lossy(name);
            // Hard links, devices and FIFOs; symlinks ('2') are accepted as data.
            let links_or_devices = matches!(kind, b'1' | b'3' | b'4' | b'6');
            let escapes = name.starts_with('/') || name.split('/').any(|c| c == "..");
            links_or_devices || escapes
        });
        let result = parse_tar(&build(&entries), &under);
        if hostile {
            prop_assert!(result.is_err(), "accepted a hostile archive: {:?}", entries);
        }
    }
}
