//! Parsing what users type: `SESSION:PATH` addresses, `k=v` pairs, durations, session sources
//! and line ranges. Each parser is a clap value parser, so bad input is a usage error (exit 2)
//! with a message that says what was expected.

use std::time::Duration;

use aether_client::{Rev, SessionSource};

/// A place in a session: `SESSION:PATH`, or `SESSION` (or `SESSION:`) for its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub session: String,
    /// Without leading or trailing '/'; empty for the root.
    pub path: String,
    /// The user wrote a trailing '/' (or named the root): a directory is meant.
    pub directory: bool,
}

impl Remote {
    /// The last component of the path (empty for the root).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }

    /// `path/name`, or `name` at the root.
    pub fn join(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.path)
        }
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.session, self.path)
    }
}

fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A session id alone.
pub fn session_id(text: &str) -> Result<String, String> {
    if valid_session_id(text) {
        Ok(text.to_string())
    } else if text.contains(':') {
        Err(format!(
            "expected a session id, got {text:?}; this command takes SESSION, not SESSION:PATH"
        ))
    } else {
        Err(format!(
            "expected a session id (letters, digits, '-', '_'), got {text:?}"
        ))
    }
}

/// `SESSION:PATH` or `SESSION`.
pub fn remote(text: &str) -> Result<Remote, String> {
    let (session, path) = text.split_once(':').unwrap_or((text, ""));
    if !valid_session_id(session) {
        return Err(format!(
            "expected SESSION:PATH (for example 7f3c9a1e2b4d6f80a1c3:src/main.rs), got {text:?}"
        ));
    }
    let trimmed = path.trim_matches('/');
    Ok(Remote {
        session: session.to_string(),
        path: trimmed.to_string(),
        directory: trimmed.is_empty() || path.ends_with('/'),
    })
}

/// `key=value`.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// A revision: `head`, `base`, `ckpt:NAME` or `commit:ID`.
pub fn revision(text: &str) -> Result<Rev, String> {
    Rev::parse(text).map_err(|e| e.to_string())
}

/// `90s`, `15m`, `2h`, `7d`, `1h30m`, or plain seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration such as 30s, 15m, 2h, 7d or 1h30m, got {text:?}");
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            Duration::from_millis(1)
        } else {
            match c {
                's' => Duration::from_secs(1),
                'm' => Duration::from_secs(60),
                'h' => Duration::from_secs(3600),
                'd' => Duration::from_secs(86400),
                _ => return Err(bad()),
            }
        };
        total += unit * u32::try_from(value).map_err(|_| bad())?;
        any = true;
    }
    if !number.is_empty() || !any {
        return Err(bad());
    }
    Ok(total)
}

/// `--from` of `session create`: `SESSION`, `ckpt:SESSION/NAME` or `commit:SESSION/ID`.
pub fn source(text: &str) -> Result<SessionSource, String> {
    let pair = |rest: &str, what: &str| -> Result<(String, String), String> {
        match rest.split_once('/') {
            Some((session, name)) if valid_session_id(session) && !name.is_empty() => {
                Ok((session.to_string(), name.to_string()))
            }
            _ => Err(format!(
                "expected {what}:SESSION/{}, got {text:?}",
                if what == "ckpt" { "NAME" } else { "ID" }
            )),
        }
    };
    if let Some(rest) = text.strip_prefix("ckpt:") {
        let (session, name) = pair(rest, "ckpt")?;
        return Ok(SessionSource::Checkpoint { session, name });
    }
    if let Some(rest) = text.strip_prefix("commit:") {
        let (session, commit) = pair(rest, "commit")?;
        return Ok(SessionSource::Commit { session, commit });
    }
    if valid_session_id(text) {
        return Ok(SessionSource::Session(text.to_string()));
    }
    Err(format!(
        "expected SESSION, ckpt:SESSION/NAME or commit:SESSION/ID, got {text:?}"
    ))
}

/// `FIRST-LAST` or `LINE`, counted from 1.
pub fn lines(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("expected LINE or FIRST-LAST (from 1), got {text:?}");
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (
            a.parse::<u32>().map_err(|_| bad())?,
            b.parse::<u32>().map_err(|_| bad())?,
        ),
        None => {
            let line = text.parse::<u32>().map_err(|_| bad())?;
            (line, line)
        }
    };
    if first == 0 || last < first {
        return Err(bad());
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes() {
        let r = remote("abc123:src/main.rs").unwrap();
        assert_eq!(
            (r.session.as_str(), r.path.as_str()),
            ("abc123", "src/main.rs")
        );
        assert!(!r.directory);
        assert_eq!(r.name(), "main.rs");
        let root = remote("abc123").unwrap();
        assert_eq!(root.path, "");
        assert!(root.directory);
        let dir = remote("abc123:/docs/").unwrap();
        assert_eq!(dir.path, "docs");
        assert!(dir.directory);
        assert_eq!(dir.join("a"), "docs/a");
        assert!(remote("./local/dir").is_err());
        assert!(remote(":path").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "h", "5x", "5m3"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_and_pairs() {
        assert_eq!(
            source("ckpt:abc/v1").unwrap(),
            SessionSource::Checkpoint {
                session: "abc".into(),
                name: "v1".into()
            }
        );
        assert_eq!(
            source("commit:abc/ff00").unwrap(),
            SessionSource::Commit {
                session: "abc".into(),
                commit: "ff00".into()
            }
        );
        assert_eq!(source("abc").unwrap(), SessionSource::Session("abc".into()));
        assert!(source("commit:ff00").is_err());
        assert_eq!(key_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(key_value("=b").is_err());
        assert_eq!(lines("3-7").unwrap(), (3, 7));
        assert_eq!(lines("4").unwrap(), (4, 4));
        assert!(lines("7-3").is_err());
    }
}
