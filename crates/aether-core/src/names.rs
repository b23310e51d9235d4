//! The other names from callers: session ids (made by coordinators, but sent back by
//! clients), checkpoint names, bus subjects and subject filters, and knowledge keys, with the
//! NATS-style subject matching the bus filters by.
//!
//! Each validator bounds its input (promise 6) and says which rule was broken.

/// The longest session id, in bytes (coordinators make ids of 20 characters).
pub const MAX_SESSION_ID_BYTES: usize = 64;
/// The longest checkpoint name, in characters (all ASCII).
pub const MAX_CHECKPOINT_NAME_CHARS: usize = 128;
/// The longest bus subject or subject filter, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;
/// The longest knowledge key, in bytes.
pub const MAX_KNOWLEDGE_KEY_BYTES: usize = 512;

/// How many characters of a rejected name an error message repeats.
const EXCERPT_CHARS: usize = 200;

/// Why a checkpoint name, subject, subject filter or knowledge key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The session id breaks a rule.
    #[error("invalid session id \"{session_id}\": {reason}")]
    InvalidSessionId {
        /// The id (truncated, control characters escaped).
        session_id: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The checkpoint name breaks a rule.
    #[error("invalid checkpoint name \"{name}\": {reason}")]
    InvalidCheckpointName {
        /// The name (truncated, control characters escaped).
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The bus subject breaks a rule.
    #[error("invalid subject \"{subject}\": {reason}")]
    InvalidSubject {
        /// The subject (truncated, control characters escaped).
        subject: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The subject filter breaks a rule.
    #[error("invalid subject filter \"{filter}\": {reason}")]
    InvalidSubjectFilter {
        /// The filter (truncated, control characters escaped).
        filter: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The knowledge key breaks a rule.
    #[error("invalid knowledge key \"{key}\": {reason}")]
    InvalidKnowledgeKey {
        /// The key (truncated, control characters escaped).
        key: String,
        /// The rule it breaks.
        reason: &'static str,
    },
}

/// Validates a session id: 1..=64 bytes of [A-Za-z0-9_-], the one check every service makes
/// before an id names a key or an object.
pub fn validate_session_id(session_id: &str) -> Result<(), NameError> {
    let reason = if session_id.is_empty() {
        Some("a session id must not be empty")
    } else if session_id.len() > MAX_SESSION_ID_BYTES {
        Some("a session id is at most 64 bytes")
    } else if !session_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Some("a session id may contain only letters, digits, '_' and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NameError::InvalidSessionId {
            session_id: crate::excerpt(session_id, EXCERPT_CHARS),
            reason,
        }),
        None => Ok(()),
    }
}

/// Validates a checkpoint name: 1..=128 characters of [A-Za-z0-9._-], not "." or "..".
pub fn validate_checkpoint_name(name: &str) -> Result<(), NameError> {
    let reason = if name.is_empty() {
        Some("a checkpoint name must not be empty")
    } else if name.len() > MAX_CHECKPOINT_NAME_CHARS {
        Some("a checkpoint name is at most 128 characters, use a shorter one")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("a checkpoint name may contain only letters, digits, '.', '_' and '-'")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are reserved, choose another name")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NameError::InvalidCheckpointName {
            name: crate::excerpt(name, EXCERPT_CHARS),
            reason,
        }),
        None => Ok(()),
    }
}

/// Validates a bus subject: '.'-separated non-empty tokens of [A-Za-z0-9_-], at most 256
/// bytes.
pub fn validate_subject(subject: &str) -> Result<(), NameError> {
    subject_rule(subject, false).map_err(|reason| NameError::InvalidSubject {
        subject: crate::excerpt(subject, EXCERPT_CHARS),
        reason,
    })
}

/// Validates a subject filter: like a subject, but a token may also be '*' (any one token),
/// and the last token may be '>' (one or more tokens). The empty filter matches everything.
pub fn validate_subject_filter(filter: &str) -> Result<(), NameError> {
    if filter.is_empty() {
        return Ok(());
    }
    subject_rule(filter, true).map_err(|reason| NameError::InvalidSubjectFilter {
        filter: crate::excerpt(filter, EXCERPT_CHARS),
        reason,
    })
}

/// The rules subjects and filters share; returns the broken rule.
fn subject_rule(s: &str, wildcards: bool) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err(
            "a subject must not be empty: use '.'-separated tokens like \"build.progress\"",
        );
    }
    if s.len() > MAX_SUBJECT_BYTES {
        return Err("a subject is at most 256 bytes, use a shorter one");
    }
    let token_count = s.split('.').count();
    for (i, token) in s.split('.').enumerate() {
        match token {
            "" => return Err("a token is empty: remove the leading, trailing or doubled '.'"),
            "*" | ">" if !wildcards => {
                return Err("wildcards '*' and '>' are only allowed in subject filters")
            }
            "*" => {}
            ">" if i + 1 == token_count => {}
            ">" => return Err("'>' may only be the last token"),
            _ if token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {}
            _ if wildcards && token.contains(['*', '>']) => {
                return Err("'*' and '>' must be whole tokens, as in \"build.*\" or \"build.>\"")
            }
            _ => return Err("tokens may contain only letters, digits, '_' and '-'"),
        }
    }
    Ok(())
}

/// Whether `subject` matches `filter` with NATS semantics: '*' matches one token, '>' one or
/// more remaining tokens; the empty filter matches every subject. Validate both first: this
/// only compares tokens.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let mut subject_tokens = subject.split('.');
    for wanted in filter.split('.') {
        match (wanted, subject_tokens.next()) {
            (">", next) => return next.is_some(),
            (_, None) => return false,
            ("*", Some(_)) => {}
            (wanted, Some(token)) if wanted == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Validates a knowledge key: 1..=512 bytes with no NUL or control characters.
pub fn validate_knowledge_key(key: &str) -> Result<(), NameError> {
    let reason = if key.is_empty() {
        Some("a knowledge key must not be empty")
    } else if key.len() > MAX_KNOWLEDGE_KEY_BYTES {
        Some("a knowledge key is at most 512 bytes, use a shorter one")
    } else if key.contains('\0') {
        Some("a knowledge key must not contain NUL, remove it")
    } else if key.chars().any(char::is_control) {
        Some("a knowledge key must not contain control characters, remove them")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NameError::InvalidKnowledgeKey {
            key: crate::excerpt(key, EXCERPT_CHARS),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names() {
        for ok in [
            "v1",
            "before-refactor",
            "a.b_c-D",
            "...",
            ".x",
            &"c".repeat(128),
        ] {
            assert_eq!(validate_checkpoint_name(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", "a\0", &"c".repeat(129)] {
            assert!(validate_checkpoint_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_checkpoint_name("..").unwrap_err().to_string(),
            "invalid checkpoint name \"..\": \".\" and \"..\" are reserved, choose another name"
        );
    }

    #[test]
    fn subjects() {
        for ok in ["a", "build.progress", "A_b-1.c", &"a".repeat(256)] {
            assert_eq!(validate_subject(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a.*",
            "a.>",
            "a b",
            "a/b",
            "é",
            &"a".repeat(257),
        ] {
            assert!(
                matches!(validate_subject(bad), Err(NameError::InvalidSubject { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn subject_filters() {
        for ok in [
            "", "a", "a.b", "*", ">", "a.*", "*.b", "a.>", "*.*.>", "a.*.c",
        ] {
            assert_eq!(validate_subject_filter(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "a.",
            "..",
            ">.a",
            "a.>.b",
            "a*",
            "a.b>",
            "**",
            "a b",
            &"a".repeat(257),
        ] {
            assert!(
                matches!(
                    validate_subject_filter(bad),
                    Err(NameError::InvalidSubjectFilter { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_subject_filter("a.>.b").unwrap_err().to_string(),
            "invalid subject filter \"a.>.b\": '>' may only be the last token"
        );
    }

    #[test]
    fn matching() {
        let yes = [
            ("", "a.b"),
            ("a.b", "a.b"),
            ("a.*", "a.b"),
            ("*.b", "a.b"),
            ("*", "a"),
            (">", "a"),
            (">", "a.b.c"),
            ("a.>", "a.b"),
            ("a.>", "a.b.c"),
            ("a.*.>", "a.b.c"),
        ];
        for (filter, subject) in yes {
            assert!(subject_matches(filter, subject), "{filter:?} {subject:?}");
        }
        let no = [
            ("a.b", "a.c"),
            ("a.b", "a.b.c"),
            ("a.b.c", "a.b"),
            ("a.*", "a"),
            ("a.*", "a.b.c"),
            ("*", "a.b"),
            ("a.>", "a"),
            ("a.*.>", "a.b"),
            ("b.>", "a.b"),
        ];
        for (filter, subject) in no {
            assert!(!subject_matches(filter, subject), "{filter:?} {subject:?}");
        }
    }

    #[test]
    fn knowledge_keys() {
        for ok in ["k", "notes/design decisions: é", &"k".repeat(512)] {
            assert_eq!(validate_knowledge_key(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "a\0b", "a\nb", "\u{7f}", "\u{85}", &"k".repeat(513)] {
            assert!(validate_knowledge_key(bad).is_err(), "{bad:?}");
        }
        let err = validate_knowledge_key("a\0b").unwrap_err();
        assert!(err.to_string().contains("a\\0b"), "{err}");
    }
}
