//! The AetherFS data model and its pure logic: content hashes, validated workspace paths,
//! directory trees and their diff, chunk manifests, labels and selectors, and the other
//! user-chosen names.
//!
//! Nothing here does I/O. Every validator keeps promise 6 of the design (bad input gets a
//! message that says what to fix): each error message is written to be returned to the caller
//! as-is, as a gRPC `INVALID_ARGUMENT` message.

pub mod hash;
pub mod labels;
pub mod manifest;
pub mod names;
pub mod path;
pub mod tree;

pub use hash::Hash;
pub use labels::{validate_labels, validate_metadata, LabelError, LabelSelector};
pub use manifest::{ChunkManifest, ManifestError};
pub use path::{PathError, WorkspacePath};
pub use tree::{
    diff_trees, Changed, EntryChange, EntryKind, Tree, TreeEntry, TreeError,
    MAX_SYMLINK_TARGET_BYTES,
};

/// Renders user input for an error message: at most `max_chars` characters (then "..."), with
/// control characters escaped so a message never carries raw NULs or terminal escapes.
pub fn excerpt(input: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in input.chars().enumerate() {
        if i == max_chars {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn excerpt_truncates_and_escapes() {
        assert_eq!(excerpt("abc", 3), "abc");
        assert_eq!(excerpt("abcd", 3), "abc...");
        assert_eq!(excerpt("a\0b\u{7f}\n", 10), "a\\0b\\u{7f}\\n");
        assert_eq!(excerpt("ééé", 2), "éé...");
    }
}
