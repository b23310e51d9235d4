//! Naming file states in text: `head`, `base`, `ckpt:NAME` (or `checkpoint:NAME`) and
//! `commit:ID`, the spelling the CLI and configuration files use.

use aether_proto as pb;

use crate::error::{Error, Result};

/// A file state of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Rev {
    /// The current, mutable state.
    #[default]
    Head,
    /// The state the session was created from.
    Base,
    /// A named checkpoint.
    Checkpoint(String),
    /// A commit, by id.
    Commit(String),
}

impl Rev {
    /// Parses `head`, `base`, `ckpt:NAME`, `checkpoint:NAME` or `commit:ID`.
    pub fn parse(text: &str) -> Result<Rev> {
        let bad = || {
            Error::InvalidArgument(format!(
                "unknown revision {text:?}: expected head, base, ckpt:NAME or commit:ID"
            ))
        };
        match text {
            "head" | "HEAD" => return Ok(Rev::Head),
            "base" => return Ok(Rev::Base),
            _ => {}
        }
        let (kind, name) = text.split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "ckpt" | "checkpoint" => Ok(Rev::Checkpoint(name.to_string())),
            "commit" => Ok(Rev::Commit(name.to_string())),
            _ => Err(bad()),
        }
    }

    /// The API form; `None` for the head (the API's default).
    pub fn to_proto(&self) -> Option<pb::Revision> {
        let (kind, name) = match self {
            Rev::Head => return None,
            Rev::Base => (pb::RevisionKind::Base, String::new()),
            Rev::Checkpoint(name) => (pb::RevisionKind::Checkpoint, name.clone()),
            Rev::Commit(id) => (pb::RevisionKind::Commit, id.clone()),
        };
        Some(pb::Revision {
            kind: kind as i32,
            name,
        })
    }
}

impl std::str::FromStr for Rev {
    type Err = Error;
    fn from_str(s: &str) -> Result<Rev> {
        Rev::parse(s)
    }
}

impl std::fmt::Display for Rev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rev::Head => write!(f, "head"),
            Rev::Base => write!(f, "base"),
            Rev::Checkpoint(name) => write!(f, "ckpt:{name}"),
            Rev::Commit(id) => write!(f, "commit:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!(Rev::parse("head").unwrap(), Rev::Head);
        assert_eq!(Rev::parse("base").unwrap(), Rev::Base);
        assert_eq!(Rev::parse("ckpt:v1").unwrap(), Rev::Checkpoint("v1".into()));
        assert_eq!(
            Rev::parse("checkpoint:v1").unwrap(),
            Rev::Checkpoint("v1".into())
        );
        assert_eq!(Rev::parse("commit:ab").unwrap(), Rev::Commit("ab".into()));
        for bad in ["", "ckpt:", "tag:x", "v1"] {
            assert!(Rev::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Rev::Head.to_proto(), None);
        assert_eq!(
            Rev::parse("ckpt:v1").unwrap().to_string(),
            "ckpt:v1".to_string()
        );
    }
}
