//! Validated workspace paths.
//!
//! A [`WorkspacePath`] is the only way a path enters the data model, which keeps the path half
//! of promise 6: no `..`, no absolute paths, no NUL or control characters, bounded lengths. The
//! root is the empty path; any other path is `/`-separated names like `a/b/c`.

use std::fmt;
use std::str::FromStr;

/// The longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// The longest accepted single name (path component), in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// How many characters of a rejected path an error message repeats.
const EXCERPT_CHARS: usize = 200;

/// Why a path or name was rejected. `path` holds the offending input, truncated to 200
/// characters with control characters escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path starts with '/'.
    #[error(
        "path \"{path}\" is absolute: paths are relative to the session root, drop the leading '/'"
    )]
    Absolute {
        /// The rejected path.
        path: String,
    },
    /// The path has an empty component ("a//b", or a trailing '/').
    #[error("path \"{path}\" has an empty component: remove the doubled or trailing '/'")]
    EmptyComponent {
        /// The rejected path.
        path: String,
    },
    /// The path has a "." component.
    #[error("path \"{path}\" has a \".\" component: remove it, paths must be normalized")]
    DotComponent {
        /// The rejected path.
        path: String,
    },
    /// The path has a ".." component.
    #[error("path \"{path}\" has a \"..\" component: paths may not climb to a parent, give the normalized path from the session root")]
    DotDotComponent {
        /// The rejected path.
        path: String,
    },
    /// The path contains a NUL byte.
    #[error("path \"{path}\" contains a NUL byte: remove it")]
    Nul {
        /// The rejected path.
        path: String,
    },
    /// The path contains an ASCII control character other than NUL.
    #[error("path \"{path}\" contains an ASCII control character: remove it")]
    ControlCharacter {
        /// The rejected path.
        path: String,
    },
    /// The whole path is longer than [`MAX_PATH_BYTES`].
    #[error("path \"{path}\" is {len} bytes long: the limit is {MAX_PATH_BYTES} bytes, use a shorter path")]
    TooLong {
        /// The rejected path.
        path: String,
        /// Its length in bytes.
        len: usize,
    },
    /// One component is longer than [`MAX_NAME_BYTES`].
    #[error("path \"{path}\" has a name of {len} bytes: each name is limited to {MAX_NAME_BYTES} bytes, use a shorter name")]
    NameTooLong {
        /// The rejected path.
        path: String,
        /// The length of the long component in bytes.
        len: usize,
    },
    /// A single name was expected but the input is empty.
    #[error("name is empty: give a non-empty file or directory name")]
    EmptyName,
    /// A single name was expected but the input contains '/'.
    #[error("name \"{name}\" contains '/': a name is one path component, pass a path instead")]
    NameContainsSlash {
        /// The rejected name.
        name: String,
    },
}

/// A validated, normalized path relative to a session's root. The empty path is the root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct WorkspacePath(String);

impl WorkspacePath {
    /// The root of the session.
    pub fn root() -> Self {
        WorkspacePath(String::new())
    }

    /// Validates `s`: "" is the root; otherwise relative `/`-separated names, each non-empty,
    /// not "." or "..", at most [`MAX_NAME_BYTES`], with no NUL or ASCII control characters,
    /// and at most [`MAX_PATH_BYTES`] in total. Backslash is an ordinary character.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        let path = || crate::excerpt(s, EXCERPT_CHARS);
        if s.is_empty() {
            return Ok(Self::root());
        }
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                path: path(),
                len: s.len(),
            });
        }
        check_characters(s)?;
        if s.starts_with('/') {
            return Err(PathError::Absolute { path: path() });
        }
        for name in s.split('/') {
            match name {
                "" => return Err(PathError::EmptyComponent { path: path() }),
                "." => return Err(PathError::DotComponent { path: path() }),
                ".." => return Err(PathError::DotDotComponent { path: path() }),
                _ if name.len() > MAX_NAME_BYTES => {
                    return Err(PathError::NameTooLong {
                        path: path(),
                        len: name.len(),
                    })
                }
                _ => {}
            }
        }
        Ok(WorkspacePath(s.to_owned()))
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as text ("" for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The names from the root down; empty for the root.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        // Only the root has an empty component, so filtering them skips exactly the root's.
        self.0.split('/').filter(|name| !name.is_empty())
    }

    /// The containing directory: `None` for the root, the root for a top-level name.
    pub fn parent(&self) -> Option<WorkspacePath> {
        if self.is_root() {
            return None;
        }
        match self.0.rfind('/') {
            Some(i) => Some(WorkspacePath(self.0[..i].to_owned())),
            None => Some(Self::root()),
        }
    }

    /// The last name; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        if self.is_root() {
            None
        } else {
            self.0.rsplit('/').next()
        }
    }

    /// This path extended by one name, which is validated with [`validate_name`].
    pub fn join(&self, name: &str) -> Result<WorkspacePath, PathError> {
        validate_name(name)?;
        let joined = if self.is_root() {
            name.to_owned()
        } else {
            format!("{}/{}", self.0, name)
        };
        if joined.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                path: crate::excerpt(&joined, EXCERPT_CHARS),
                len: joined.len(),
            });
        }
        Ok(WorkspacePath(joined))
    }

    /// Whether `prefix` is this path or one of its ancestors, compared by whole names: every
    /// path starts with the root, and "ab" does not start with "a".
    pub fn starts_with(&self, prefix: &WorkspacePath) -> bool {
        prefix.is_root()
            || self.0 == prefix.0
            || (self.0.starts_with(&prefix.0) && self.0.as_bytes()[prefix.0.len()] == b'/')
    }

    /// The rest of this path below `prefix` (the root if they are equal); `None` if this path
    /// does not start with `prefix`.
    pub fn strip_prefix(&self, prefix: &WorkspacePath) -> Option<WorkspacePath> {
        if !self.starts_with(prefix) {
            None
        } else if prefix.is_root() {
            Some(self.clone())
        } else if self.0 == prefix.0 {
            Some(Self::root())
        } else {
            Some(WorkspacePath(self.0[prefix.0.len() + 1..].to_owned()))
        }
    }
}

/// Validates one path component: non-empty, no '/', not "." or "..", at most
/// [`MAX_NAME_BYTES`], no NUL or ASCII control characters.
pub fn validate_name(name: &str) -> Result<(), PathError> {
    let shown = || crate::excerpt(name, EXCERPT_CHARS);
    match name {
        "" => return Err(PathError::EmptyName),
        "." => return Err(PathError::DotComponent { path: shown() }),
        ".." => return Err(PathError::DotDotComponent { path: shown() }),
        _ => {}
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(PathError::NameTooLong {
            path: shown(),
            len: name.len(),
        });
    }
    check_characters(name)?;
    if name.contains('/') {
        return Err(PathError::NameContainsSlash { name: shown() });
    }
    Ok(())
}

/// Rejects NUL and other ASCII control characters (including DEL).
fn check_characters(s: &str) -> Result<(), PathError> {
    if s.contains('\0') {
        return Err(PathError::Nul {
            path: crate::excerpt(s, EXCERPT_CHARS),
        });
    }
    if s.chars().any(|c| c.is_ascii_control()) {
        return Err(PathError::ControlCharacter {
            path: crate::excerpt(s, EXCERPT_CHARS),
        });
    }
    Ok(())
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for WorkspacePath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, PathError> {
        WorkspacePath::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> WorkspacePath {
        WorkspacePath::parse(s).unwrap()
    }

    #[test]
    fn accepts_ordinary_paths() {
        assert!(p("").is_root());
        assert_eq!(p("a").as_str(), "a");
        assert_eq!(p("a/b/c").to_string(), "a/b/c");
        assert_eq!(p("dir\\file").as_str(), "dir\\file");
        assert_eq!(p(".hidden/..x/...").as_str(), ".hidden/..x/...");
        assert_eq!(p("ünïcode/名前").as_str(), "ünïcode/名前");
        assert_eq!("a/b".parse::<WorkspacePath>(), Ok(p("a/b")));
    }

    #[test]
    fn rejects_each_rule() {
        use PathError::*;
        let path = |s: &str| s.to_string();
        let cases = [
            ("/etc", Absolute { path: path("/etc") }),
            ("/", Absolute { path: path("/") }),
            ("//", Absolute { path: path("//") }),
            ("a//b", EmptyComponent { path: path("a//b") }),
            ("a/", EmptyComponent { path: path("a/") }),
            (".", DotComponent { path: path(".") }),
            (
                "a/./b",
                DotComponent {
                    path: path("a/./b"),
                },
            ),
            ("..", DotDotComponent { path: path("..") }),
            ("a/..", DotDotComponent { path: path("a/..") }),
            ("../a", DotDotComponent { path: path("../a") }),
            (
                "a\0b",
                Nul {
                    path: path("a\\0b"),
                },
            ),
            (
                "a\u{7f}",
                ControlCharacter {
                    path: path("a\\u{7f}"),
                },
            ),
            (
                "a\nb",
                ControlCharacter {
                    path: path("a\\nb"),
                },
            ),
            ("\t", ControlCharacter { path: path("\\t") }),
        ];
        for (input, expected) in cases {
            assert_eq!(WorkspacePath::parse(input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn messages_say_what_to_fix() {
        assert_eq!(
            WorkspacePath::parse("/etc").unwrap_err().to_string(),
            "path \"/etc\" is absolute: paths are relative to the session root, drop the leading '/'"
        );
        let err = WorkspacePath::parse("a\0b").unwrap_err();
        assert_eq!(
            err,
            PathError::Nul {
                path: "a\\0b".into()
            }
        );
        assert!(!err.to_string().contains('\0'));
    }

    /// A valid path of exactly `len` bytes: names of about 100 bytes.
    fn path_of_len(len: usize) -> String {
        let mut s = "x".repeat(len);
        for i in (100..len).step_by(100) {
            s.replace_range(i..=i, "/");
        }
        s
    }

    #[test]
    fn path_length_bound() {
        let exact = path_of_len(MAX_PATH_BYTES);
        assert_eq!(exact.len(), 4096);
        assert!(WorkspacePath::parse(&exact).is_ok());

        let over = path_of_len(MAX_PATH_BYTES + 1);
        let err = WorkspacePath::parse(&over).unwrap_err();
        let PathError::TooLong { path, len } = err else {
            panic!("expected TooLong, got {err:?}");
        };
        assert_eq!(len, 4097);
        // The message repeats at most 200 characters of the path, then "...".
        assert_eq!(path.chars().count(), 203);
    }

    #[test]
    fn name_length_bound() {
        assert!(WorkspacePath::parse(&"n".repeat(255)).is_ok());
        assert!(matches!(
            WorkspacePath::parse(&format!("a/{}", "n".repeat(256))),
            Err(PathError::NameTooLong { len: 256, .. })
        ));
        assert!(validate_name(&"n".repeat(255)).is_ok());
        assert!(matches!(
            validate_name(&"n".repeat(256)),
            Err(PathError::NameTooLong { len: 256, .. })
        ));
    }

    #[test]
    fn validate_name_rules() {
        assert!(validate_name("file.txt").is_ok());
        assert!(validate_name("a\\b").is_ok());
        assert_eq!(validate_name(""), Err(PathError::EmptyName));
        assert!(matches!(
            validate_name("a/b"),
            Err(PathError::NameContainsSlash { .. })
        ));
        assert!(matches!(
            validate_name("."),
            Err(PathError::DotComponent { .. })
        ));
        assert!(matches!(
            validate_name(".."),
            Err(PathError::DotDotComponent { .. })
        ));
        assert!(matches!(validate_name("a\0"), Err(PathError::Nul { .. })));
        assert!(matches!(
            validate_name("\u{1b}[31m"),
            Err(PathError::ControlCharacter { .. })
        ));
    }

    #[test]
    fn navigation() {
        let root = WorkspacePath::root();
        assert_eq!(root.components().count(), 0);
        assert_eq!(root.parent(), None);
        assert_eq!(root.file_name(), None);

        let abc = p("a/b/c");
        assert_eq!(abc.components().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(abc.parent(), Some(p("a/b")));
        assert_eq!(p("a").parent(), Some(root.clone()));
        assert_eq!(abc.file_name(), Some("c"));
        assert_eq!(p("a").file_name(), Some("a"));
    }

    #[test]
    fn join_validates() {
        let root = WorkspacePath::root();
        assert_eq!(root.join("a").unwrap(), p("a"));
        assert_eq!(p("a").join("b").unwrap(), p("a/b"));
        assert!(p("a").join("").is_err());
        assert!(p("a").join("..").is_err());
        assert!(p("a").join("b/c").is_err());
        assert!(p(&path_of_len(4094)).join("x").is_ok());
        assert!(matches!(
            p(&path_of_len(4095)).join("x"),
            Err(PathError::TooLong { len: 4097, .. })
        ));
    }

    #[test]
    fn prefixes_compare_whole_names() {
        let root = WorkspacePath::root();
        let a = p("a");
        let ab = p("a/b");
        assert!(ab.starts_with(&root));
        assert!(root.starts_with(&root));
        assert!(ab.starts_with(&a));
        assert!(ab.starts_with(&ab));
        assert!(!p("ab").starts_with(&a));
        assert!(!a.starts_with(&ab));
        assert!(!root.starts_with(&a));

        assert_eq!(ab.strip_prefix(&a), Some(p("b")));
        assert_eq!(ab.strip_prefix(&root), Some(ab.clone()));
        assert_eq!(ab.strip_prefix(&ab), Some(root.clone()));
        assert_eq!(p("ab").strip_prefix(&a), None);
        assert_eq!(p("a/b/c").strip_prefix(&a), Some(p("b/c")));
    }
}
