//! Session labels and metadata, and the label selectors that ListSessions filters by.
//!
//! Labels follow the Kubernetes rules, so keys and selectors read the same as in `kubectl`.
//! Metadata is free-form but bounded in count and size, keeping the "sizes are bounded" part
//! of promise 6.

use std::collections::BTreeMap;

/// The most labels a session may carry.
pub const MAX_LABELS: usize = 64;
/// The most metadata entries a session may carry.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// The longest metadata key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 256;
/// The longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 4096;

/// The longest label selector, in bytes: room for 64 terms of the longest key and value,
/// checked before it is parsed.
pub const MAX_SELECTOR_BYTES: usize = 64 * 1024;
/// The most terms one selector may have, and values one `in (...)` term may list.
pub const MAX_SELECTOR_TERMS: usize = 64;

/// How many characters of a rejected key, value or term an error message repeats.
const EXCERPT_CHARS: usize = 320;
const MAX_LABEL_NAME_CHARS: usize = 63;
const MAX_PREFIX_CHARS: usize = 253;

const NAME_RULE: &str = "the name (after any '/') must be 1 to 63 characters of [A-Za-z0-9_.-], beginning and ending with a letter or digit";
const PREFIX_RULE: &str = "the prefix (before '/') must be a DNS subdomain: at most 253 characters of lower-case letters, digits, '-' and '.', each dot-separated part beginning and ending with a letter or digit";
const VALUE_RULE: &str = "a value must be empty or 1 to 63 characters of [A-Za-z0-9_.-], beginning and ending with a letter or digit";

/// Why labels, metadata or a label selector were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// More than [`MAX_LABELS`] labels.
    #[error("{count} labels given: at most {MAX_LABELS} are allowed, remove some")]
    TooManyLabels {
        /// How many were given.
        count: usize,
    },
    /// A label key breaks a rule.
    #[error("invalid label key \"{key}\": {rule}")]
    InvalidKey {
        /// The key (truncated, control characters escaped).
        key: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A label value breaks the value rule.
    #[error("invalid value \"{value}\" for label \"{key}\": {rule}")]
    InvalidValue {
        /// The label's key.
        key: String,
        /// The value (truncated, control characters escaped).
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// More than [`MAX_METADATA_ENTRIES`] metadata entries.
    #[error(
        "{count} metadata entries given: at most {MAX_METADATA_ENTRIES} are allowed, remove some"
    )]
    TooManyMetadataEntries {
        /// How many were given.
        count: usize,
    },
    /// A metadata key is empty.
    #[error("metadata key is empty: give every metadata entry a non-empty key")]
    EmptyMetadataKey,
    /// A metadata key is longer than [`MAX_METADATA_KEY_BYTES`].
    #[error("metadata key \"{key}\" is {len} bytes: the limit is {MAX_METADATA_KEY_BYTES} bytes, use a shorter key")]
    MetadataKeyTooLong {
        /// The key (truncated, control characters escaped).
        key: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A metadata value is longer than [`MAX_METADATA_VALUE_BYTES`].
    #[error("metadata value for key \"{key}\" is {len} bytes: the limit is {MAX_METADATA_VALUE_BYTES} bytes, store large data as a file or knowledge entry")]
    MetadataValueTooLong {
        /// The entry's key.
        key: String,
        /// The value's length in bytes.
        len: usize,
    },
    /// A label selector longer than [`MAX_SELECTOR_BYTES`] or with more than
    /// [`MAX_SELECTOR_TERMS`] terms or values in one term.
    #[error("label selector has {what}: at most {MAX_SELECTOR_TERMS} terms of at most {MAX_SELECTOR_TERMS} values each, in at most {MAX_SELECTOR_BYTES} bytes; narrow it")]
    SelectorTooLarge {
        /// What is over the limit.
        what: String,
    },
    /// A label selector term cannot be parsed.
    #[error("invalid label selector term \"{term}\": {reason}")]
    InvalidSelector {
        /// The term (truncated, control characters escaped).
        term: String,
        /// What is wrong and the accepted forms.
        reason: String,
    },
}

/// Checks label count, keys (`[prefix/]name`) and values against the Kubernetes rules.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooManyLabels {
            count: labels.len(),
        });
    }
    for (key, value) in labels {
        validate_key(key)?;
        validate_value(key, value)?;
    }
    Ok(())
}

/// Checks metadata count, non-empty keys, and key and value byte lengths.
pub fn validate_metadata(meta: &BTreeMap<String, String>) -> Result<(), LabelError> {
    if meta.len() > MAX_METADATA_ENTRIES {
        return Err(LabelError::TooManyMetadataEntries { count: meta.len() });
    }
    for (key, value) in meta {
        if key.is_empty() {
            return Err(LabelError::EmptyMetadataKey);
        }
        if key.len() > MAX_METADATA_KEY_BYTES {
            return Err(LabelError::MetadataKeyTooLong {
                key: crate::excerpt(key, EXCERPT_CHARS),
                len: key.len(),
            });
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(LabelError::MetadataValueTooLong {
                key: crate::excerpt(key, EXCERPT_CHARS),
                len: value.len(),
            });
        }
    }
    Ok(())
}

fn validate_key(key: &str) -> Result<(), LabelError> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let broken = if prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        Some(PREFIX_RULE)
    } else if !is_label_name(name) {
        Some(NAME_RULE)
    } else {
        None
    };
    match broken {
        Some(rule) => Err(LabelError::InvalidKey {
            key: crate::excerpt(key, EXCERPT_CHARS),
            rule,
        }),
        None => Ok(()),
    }
}

fn validate_value(key: &str, value: &str) -> Result<(), LabelError> {
    if value.is_empty() || is_label_name(value) {
        return Ok(());
    }
    Err(LabelError::InvalidValue {
        key: crate::excerpt(key, EXCERPT_CHARS),
        value: crate::excerpt(value, EXCERPT_CHARS),
        rule: VALUE_RULE,
    })
}

/// 1..=63 characters of [A-Za-z0-9_.-], beginning and ending alphanumeric.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= MAX_LABEL_NAME_CHARS
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        }
        _ => false,
    }
}

/// A DNS-1123 subdomain: dot-separated parts of [a-z0-9-], each beginning and ending
/// alphanumeric, at most 253 characters in all.
fn is_dns_subdomain(s: &str) -> bool {
    let is_part = |part: &str| {
        let bytes = part.as_bytes();
        let lower_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        bytes.first().is_some_and(lower_alnum)
            && bytes.last().is_some_and(lower_alnum)
            && bytes.iter().all(|b| lower_alnum(b) || *b == b'-')
    };
    !s.is_empty() && s.len() <= MAX_PREFIX_CHARS && s.split('.').all(is_part)
}

/// A parsed label selector: every requirement must hold. The empty selector matches
/// everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// One term of a selector. "k=v" is `In` with one value and "k!=v" is `NotIn` with one,
/// which gives them the Kubernetes meaning (a missing label satisfies "k!=v").
#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

const SELECTOR_FORMS: &str =
    "use k=v, k==v, k!=v, k, !k, k in (v1,v2) or k notin (v1,v2), separated by commas";

impl LabelSelector {
    /// Parses comma-separated terms: "k=v", "k==v", "k!=v", "k" (exists), "!k" (absent),
    /// "k in (a,b)", "k notin (a,b)". Whitespace around terms is ignored; an empty string
    /// matches everything.
    pub fn parse(s: &str) -> Result<LabelSelector, LabelError> {
        if s.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        if s.len() > MAX_SELECTOR_BYTES {
            return Err(LabelError::SelectorTooLarge {
                what: format!("{} bytes", s.len()),
            });
        }
        let terms = split_terms(s);
        if terms.len() > MAX_SELECTOR_TERMS {
            return Err(LabelError::SelectorTooLarge {
                what: format!("{} terms", terms.len()),
            });
        }
        let requirements: Vec<Requirement> = terms
            .into_iter()
            .map(parse_term)
            .collect::<Result<_, _>>()?;
        for requirement in &requirements {
            if let Op::In(values) | Op::NotIn(values) = &requirement.op {
                if values.len() > MAX_SELECTOR_TERMS {
                    return Err(LabelError::SelectorTooLarge {
                        what: format!("{} values for {}", values.len(), requirement.key),
                    });
                }
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// The "k=v" terms (exactly one value): every label set that matches holds each pair,
    /// so an index by label can answer the selector from any one of them.
    pub fn required_pairs(&self) -> Vec<(&str, &str)> {
        self.requirements
            .iter()
            .filter_map(|req| match &req.op {
                Op::In(values) if values.len() == 1 => Some((req.key.as_str(), values[0].as_str())),
                _ => None,
            })
            .collect()
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|req| {
            let value = labels.get(&req.key);
            match &req.op {
                Op::In(values) => value.is_some_and(|v| values.contains(v)),
                Op::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        })
    }
}

/// Splits at commas outside parentheses, so "k in (a,b)" stays one term.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
}

fn parse_term(raw: &str) -> Result<Requirement, LabelError> {
    let term = Term { text: raw.trim() };
    if term.text.is_empty() {
        return Err(term.fail(format!("the term is empty: {SELECTOR_FORMS}")));
    }
    if let Some(key) = term.text.strip_prefix('!') {
        let key = term.key(key)?;
        return Ok(Requirement {
            key,
            op: Op::NotExists,
        });
    }
    if let Some((key, value)) = term.text.split_once("!=") {
        let key = term.key(key)?;
        let op = Op::NotIn(term.values(&key, &[value])?);
        return Ok(Requirement { key, op });
    }
    if let Some((key, value)) = term
        .text
        .split_once("==")
        .or_else(|| term.text.split_once('='))
    {
        let key = term.key(key)?;
        let op = Op::In(term.values(&key, &[value])?);
        return Ok(Requirement { key, op });
    }
    let Some(key_end) = term.text.find(|c: char| c.is_whitespace() || c == '(') else {
        let key = term.key(term.text)?;
        return Ok(Requirement {
            key,
            op: Op::Exists,
        });
    };
    term.parse_set(key_end)
}

/// One selector term, trimmed, for the parts of [`parse_term`] that name it in their errors.
struct Term<'a> {
    text: &'a str,
}

impl Term<'_> {
    fn fail(&self, reason: String) -> LabelError {
        LabelError::InvalidSelector {
            term: crate::excerpt(self.text, EXCERPT_CHARS),
            reason,
        }
    }

    /// A validated key, trimmed.
    fn key(&self, key: &str) -> Result<String, LabelError> {
        let key = key.trim();
        validate_key(key).map_err(|e| self.fail(e.to_string()))?;
        Ok(key.to_owned())
    }

    /// Validated values of `key`, each trimmed.
    fn values(&self, key: &str, values: &[&str]) -> Result<Vec<String>, LabelError> {
        values
            .iter()
            .map(|v| {
                let v = v.trim();
                validate_value(key, v).map_err(|e| self.fail(e.to_string()))?;
                Ok(v.to_owned())
            })
            .collect()
    }

    /// "k in (a,b)" or "k notin (a,b)", the key ending at `key_end`.
    fn parse_set(&self, key_end: usize) -> Result<Requirement, LabelError> {
        let key = self.key(&self.text[..key_end])?;
        let rest = self.text[key_end..].trim_start();
        let (negated, list) = if let Some(list) = rest.strip_prefix("notin") {
            (true, list)
        } else if let Some(list) = rest.strip_prefix("in") {
            (false, list)
        } else {
            return Err(self.fail(format!(
                "expected 'in' or 'notin' after the key: {SELECTOR_FORMS}"
            )));
        };
        let Some(list) = list
            .trim()
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
        else {
            return Err(self.fail(
                "the values of 'in' and 'notin' go in parentheses, as in k in (v1,v2)".into(),
            ));
        };
        if list.trim().is_empty() {
            return Err(self.fail("the value list is empty: give at least one value".into()));
        }
        let values = self.values(&key, &list.split(',').collect::<Vec<_>>())?;
        let op = if negated {
            Op::NotIn(values)
        } else {
            Op::In(values)
        };
        Ok(Requirement { key, op })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepts_valid_labels() {
        let labels = map(&[
            ("app", "web"),
            ("tier", ""),
            ("example.com/owner", "team-a_1.x"),
            ("a", "Z"),
            ("x-y.z_w", "1"),
            (&"k".repeat(63), &"v".repeat(63)),
            (&format!("{}/n", "p".repeat(253)), "v"),
        ]);
        assert_eq!(validate_labels(&labels), Ok(()));
        assert_eq!(validate_labels(&BTreeMap::new()), Ok(()));
    }

    #[test]
    fn rejects_bad_keys() {
        for key in [
            "",
            "-app",
            "app-",
            "a b",
            "a/b/c",
            "/name",
            "Example.com/name",
            "ex_ample.com/name",
            "-ex.com/name",
            "ex..com/name",
            "example.com/",
            "ключ",
        ] {
            let err = validate_labels(&map(&[(key, "v")])).unwrap_err();
            assert!(
                matches!(err, LabelError::InvalidKey { .. }),
                "{key:?}: {err:?}"
            );
        }
        let long_name = "k".repeat(64);
        let long_prefix = format!("{}/n", "p".repeat(254));
        for key in [long_name.as_str(), long_prefix.as_str()] {
            assert!(matches!(
                validate_labels(&map(&[(key, "v")])),
                Err(LabelError::InvalidKey { .. })
            ));
        }
    }

    #[test]
    fn rejects_bad_values() {
        let too_long = "v".repeat(64);
        for value in ["-v", "v-", "a b", "a/b", "é", too_long.as_str()] {
            let err = validate_labels(&map(&[("k", value)])).unwrap_err();
            assert!(matches!(err, LabelError::InvalidValue { .. }), "{value:?}");
        }
    }

    #[test]
    fn label_count_bound() {
        let at_limit: BTreeMap<_, _> = (0..MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(validate_labels(&at_limit), Ok(()));
        let mut over = at_limit;
        over.insert("extra".into(), String::new());
        assert_eq!(
            validate_labels(&over),
            Err(LabelError::TooManyLabels { count: 65 })
        );
    }

    #[test]
    fn messages_name_key_and_rule() {
        let err = validate_labels(&map(&[("bad key", "v")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid label key \"bad key\": {NAME_RULE}")
        );
        let err = validate_labels(&map(&[("k", "bad value")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid value \"bad value\" for label \"k\": {VALUE_RULE}")
        );
    }

    #[test]
    fn metadata_bounds() {
        let ok = map(&[
            ("any key at all: é/!", "any value\n"),
            (&"k".repeat(256), &"v".repeat(4096)),
        ]);
        assert_eq!(validate_metadata(&ok), Ok(()));
        assert_eq!(
            validate_metadata(&map(&[("", "v")])),
            Err(LabelError::EmptyMetadataKey)
        );
        assert!(matches!(
            validate_metadata(&map(&[(&"k".repeat(257), "v")])),
            Err(LabelError::MetadataKeyTooLong { len: 257, .. })
        ));
        assert!(matches!(
            validate_metadata(&map(&[("k", &"v".repeat(4097))])),
            Err(LabelError::MetadataValueTooLong { len: 4097, .. })
        ));
        let many: BTreeMap<_, _> = (0..=MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(
            validate_metadata(&many),
            Err(LabelError::TooManyMetadataEntries { count: 65 })
        );
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parses_every_form() {
        let req = |key: &str, op: Op| Requirement {
            key: key.into(),
            op,
        };
        let one = |v: &str| vec![v.to_string()];
        assert_eq!(sel("").requirements, vec![]);
        assert_eq!(sel("  ").requirements, vec![]);
        assert_eq!(sel("a=b").requirements, vec![req("a", Op::In(one("b")))]);
        assert_eq!(sel("a==b").requirements, vec![req("a", Op::In(one("b")))]);
        assert_eq!(
            sel("a!=b").requirements,
            vec![req("a", Op::NotIn(one("b")))]
        );
        assert_eq!(sel("a").requirements, vec![req("a", Op::Exists)]);
        assert_eq!(sel("!a").requirements, vec![req("a", Op::NotExists)]);
        assert_eq!(sel("a=").requirements, vec![req("a", Op::In(one("")))]);
        assert_eq!(
            sel("env in (prod, staging)").requirements,
            vec![req("env", Op::In(vec!["prod".into(), "staging".into()]))]
        );
        assert_eq!(
            sel("env notin (dev)").requirements,
            vec![req("env", Op::NotIn(one("dev")))]
        );
        assert_eq!(
            sel(" x.io/app = web ,  !legacy, env in(a,b),tier ").requirements,
            vec![
                req("x.io/app", Op::In(one("web"))),
                req("legacy", Op::NotExists),
                req("env", Op::In(vec!["a".into(), "b".into()])),
                req("tier", Op::Exists),
            ]
        );
    }

    #[test]
    fn rejects_bad_selectors() {
        for bad in [
            "a=b,",
            ",a",
            "a=b,,c=d",
            "a b",
            "a in",
            "a in ()",
            "a in (b",
            "a in b)",
            "a notin b",
            "a in (b c)",
            "bad key=v",
            "k=bad value",
            "!",
            "!bad key",
            "=v",
            "!=v",
            "k!=-v",
            "k in (a,-b)",
            "(a)",
        ] {
            let err = LabelSelector::parse(bad).unwrap_err();
            assert!(
                matches!(err, LabelError::InvalidSelector { .. }),
                "{bad:?}: {err:?}"
            );
        }
        let err = LabelSelector::parse("a in b").unwrap_err();
        assert!(err.to_string().contains("parentheses"), "{err}");
    }

    #[test]
    fn matching() {
        let labels = map(&[("env", "prod"), ("app", "web"), ("empty", "")]);
        let yes = [
            "",
            "env=prod",
            "env==prod",
            "env!=dev",
            "missing!=x",
            "env",
            "!missing",
            "env in (prod,dev)",
            "env notin (dev)",
            "missing notin (dev)",
            "empty=",
            "env=prod,app=web",
        ];
        for s in yes {
            assert!(sel(s).matches(&labels), "{s:?} should match");
        }
        let no = [
            "env=dev",
            "env!=prod",
            "missing",
            "!env",
            "env in (dev)",
            "missing in (prod)",
            "env notin (prod,dev)",
            "env=prod,app=api",
            "empty=x",
        ];
        for s in no {
            assert!(!sel(s).matches(&labels), "{s:?} should not match");
        }
        assert!(sel("").matches(&BTreeMap::new()));
    }

    #[test]
    fn required_pairs_are_the_single_value_equalities() {
        let selector =
            LabelSelector::parse("team=a, env!=prod, tier in (x), zone in (1,2), k, !j").unwrap();
        assert_eq!(selector.required_pairs(), [("team", "a"), ("tier", "x")]);
        assert!(LabelSelector::parse("")
            .unwrap()
            .required_pairs()
            .is_empty());
    }
}
