//! Printing: aligned tables for people, JSON for programs, and the conversions of API messages
//! into both. Enum values print as lower-case words (`active`, `file`, `added`), times as UTC
//! RFC 3339, sizes in bytes in JSON and in binary units in tables.

use std::io::Write;

use aether_client::proto as pb;
use serde_json::{json, Map, Value};

use crate::Failure;

/// Writes `text` to stdout. A closed pipe (`aether cat … | head`) ends the command quietly.
pub fn emit(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        .map_err(Failure::stdout)
}

/// Writes a line to stdout.
pub fn line(text: impl AsRef<str>) -> Result<(), Failure> {
    emit(&format!("{}\n", text.as_ref()))
}

/// Pretty JSON and a newline to stdout.
pub fn json(value: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    line(text)
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    push_row(headers.to_vec());
    for row in rows {
        push_row(row.iter().map(String::as_str).collect());
    }
    out
}

/// `1.5 KiB`, `3 B`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// UTC RFC 3339 with seconds, or None for an unset timestamp.
pub fn time(timestamp: &Option<prost_types::Timestamp>) -> Option<String> {
    let ts = timestamp.as_ref()?;
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    ))
}

/// UTC RFC 3339 of a time in nanoseconds since the Unix epoch, with a nanosecond fraction when
/// it has one; None for 0, which the service stores for "unknown".
pub fn time_ns(ns: i64) -> Option<String> {
    if ns == 0 {
        return None;
    }
    let nanos = ns.rem_euclid(1_000_000_000);
    let whole = time(&Some(prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: 0,
    }))?;
    if nanos == 0 {
        return Some(whole);
    }
    Some(format!("{}.{nanos:09}Z", whole.trim_end_matches('Z')))
}

fn time_ns_json(ns: i64) -> Value {
    time_ns(ns).map(Value::String).unwrap_or(Value::Null)
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

fn time_or_dash(timestamp: &Option<prost_types::Timestamp>) -> String {
    time(timestamp).unwrap_or_else(|| "-".into())
}

fn time_json(timestamp: &Option<prost_types::Timestamp>) -> Value {
    time(timestamp).map(Value::String).unwrap_or(Value::Null)
}

/// Lower-case name of an enum value without its prefix: `SESSION_STATE_ACTIVE` → `active`.
fn word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

pub fn state(value: i32) -> String {
    pb::SessionState::try_from(value)
        .map(|s| word(s.as_str_name(), "SESSION_STATE_"))
        .unwrap_or_else(|_| value.to_string())
}

pub fn kind(value: i32) -> String {
    pb::EntryKind::try_from(value)
        .map(|s| word(s.as_str_name(), "ENTRY_KIND_"))
        .unwrap_or_else(|_| value.to_string())
}

pub fn diff_kind(value: i32) -> String {
    pb::DiffKind::try_from(value)
        .map(|s| word(s.as_str_name(), "DIFF_KIND_"))
        .unwrap_or_else(|_| value.to_string())
}

fn role(value: i32) -> String {
    pb::Role::try_from(value)
        .map(|s| word(s.as_str_name(), "ROLE_"))
        .unwrap_or_else(|_| value.to_string())
}

fn approval_action(value: i32) -> String {
    pb::ApprovalAction::try_from(value)
        .map(|s| word(s.as_str_name(), "APPROVAL_ACTION_"))
        .unwrap_or_else(|_| value.to_string())
}

fn approval_state(value: i32) -> String {
    pb::ApprovalState::try_from(value)
        .map(|s| word(s.as_str_name(), "APPROVAL_STATE_"))
        .unwrap_or_else(|_| value.to_string())
}

fn decision(value: i32) -> String {
    pb::Decision::try_from(value)
        .map(|s| word(s.as_str_name(), "DECISION_"))
        .unwrap_or_else(|_| value.to_string())
}

fn sorted_map(map: &std::collections::HashMap<String, String>) -> Value {
    let mut entries: Vec<(&String, &String)> = map.iter().collect();
    entries.sort();
    Value::Object(
        entries
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

/// `k=v,k2=v2`, sorted.
pub fn pairs(map: &std::collections::HashMap<String, String>) -> String {
    let mut entries: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    entries.sort();
    entries.join(",")
}

/// A payload as text when it is UTF-8, else base64.
fn payload_json(object: &mut Map<String, Value>, field: &str, data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(text) => {
            object.insert(field.into(), Value::String(text.into()));
        }
        Err(_) => {
            object.insert(format!("{field}_base64"), Value::String(base64(data)));
        }
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- sessions ------------------------------------------------------------------------------

pub fn source_text(source: &Option<pb::Source>) -> String {
    use pb::source::Kind;
    match source.as_ref().and_then(|s| s.kind.as_ref()) {
        None | Some(Kind::Empty(_)) => "empty".into(),
        Some(Kind::Session(s)) => format!("session {}", s.session_id),
        Some(Kind::Checkpoint(c)) => format!("ckpt:{}/{}", c.session_id, c.name),
        Some(Kind::Commit(c)) => format!("commit:{}/{}", c.session_id, c.commit_id),
        Some(Kind::Archive(a)) => format!("archive {}", a.blob_hash),
    }
}

fn source_json(source: &Option<pb::Source>) -> Value {
    use pb::source::Kind;
    match source.as_ref().and_then(|s| s.kind.as_ref()) {
        None | Some(Kind::Empty(_)) => json!({"kind": "empty"}),
        Some(Kind::Session(s)) => json!({"kind": "session", "session": s.session_id}),
        Some(Kind::Checkpoint(c)) => {
            json!({"kind": "checkpoint", "session": c.session_id, "name": c.name})
        }
        Some(Kind::Commit(c)) => {
            json!({"kind": "commit", "session": c.session_id, "commit": c.commit_id})
        }
        Some(Kind::Archive(a)) => json!({"kind": "archive", "blob_hash": a.blob_hash}),
    }
}

fn policy_json(policy: &Option<pb::Policy>) -> Value {
    let Some(policy) = policy else {
        return Value::Null;
    };
    json!({
        "bindings": policy.bindings.iter().map(|b| json!({"subject": b.subject, "role": role(b.role)})).collect::<Vec<_>>(),
        "required_commit_approvals": policy.required_commit_approvals,
        "required_export_approvals": policy.required_export_approvals,
    })
}

pub fn session_json(s: &pb::Session) -> Value {
    let counts = s.counts.unwrap_or_default();
    json!({
        "id": s.id,
        "state": state(s.state),
        "owner": s.owner,
        "labels": sorted_map(&s.labels),
        "metadata": sorted_map(&s.metadata),
        "policy": policy_json(&s.policy),
        "source": source_json(&s.source),
        "base_root": s.base_root,
        "head_root": s.head_root,
        "head_version": s.head_version,
        "created_at": time_json(&s.created_at),
        "updated_at": time_json(&s.updated_at),
        "expires_at": time_json(&s.expires_at),
        "ttl_seconds": s.ttl.as_ref().map(|d| d.seconds),
        "counts": {
            "files": counts.files,
            "directories": counts.directories,
            "bytes": counts.bytes,
            "checkpoints": counts.checkpoints,
            "commits": counts.commits,
            "annotations": counts.annotations,
            "knowledge_entries": counts.knowledge_entries,
            "pending_approvals": counts.pending_approvals,
        },
    })
}

pub fn session_rows(sessions: &[pb::Session]) -> String {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let counts = s.counts.unwrap_or_default();
            vec![
                s.id.clone(),
                state(s.state),
                s.owner.clone(),
                s.head_version.to_string(),
                counts.files.to_string(),
                size(counts.bytes),
                pairs(&s.labels),
            ]
        })
        .collect();
    table(
        &["ID", "STATE", "OWNER", "VERSION", "FILES", "SIZE", "LABELS"],
        &rows,
    )
}

pub fn session_text(s: &pb::Session) -> String {
    let counts = s.counts.unwrap_or_default();
    let ttl = match &s.ttl {
        Some(d) if d.seconds > 0 => format!("{}s", d.seconds),
        _ => "none".into(),
    };
    let rows: Vec<(&str, String)> = vec![
        ("id", s.id.clone()),
        ("state", state(s.state)),
        ("owner", s.owner.clone()),
        ("labels", or_dash(pairs(&s.labels))),
        ("metadata", or_dash(pairs(&s.metadata))),
        ("source", source_text(&s.source)),
        (
            "head",
            format!("version {}, root {}", s.head_version, s.head_root),
        ),
        ("base", format!("root {}", s.base_root)),
        (
            "contents",
            format!(
                "{} files, {} directories, {}",
                counts.files,
                counts.directories,
                size(counts.bytes)
            ),
        ),
        (
            "history",
            format!(
                "{} checkpoints, {} commits",
                counts.checkpoints, counts.commits
            ),
        ),
        (
            "review",
            format!(
                "{} annotations, {} pending approvals, {} knowledge entries",
                counts.annotations, counts.pending_approvals, counts.knowledge_entries
            ),
        ),
        ("created", time_or_dash(&s.created_at)),
        ("updated", time_or_dash(&s.updated_at)),
        ("ttl", ttl),
        (
            "expires",
            time(&s.expires_at).unwrap_or_else(|| "never".into()),
        ),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

pub fn audit_json(e: &pb::AuditEvent) -> Value {
    json!({
        "sequence": e.sequence,
        "time": time_json(&e.time),
        "principal": e.principal,
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome,
        "details": sorted_map(&e.details),
    })
}

pub fn audit_rows(events: &[pb::AuditEvent]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.sequence.to_string(),
                time_or_dash(&e.time),
                e.principal.clone(),
                e.action.clone(),
                e.target.clone(),
                e.outcome.clone(),
            ]
        })
        .collect();
    table(
        &["SEQ", "TIME", "PRINCIPAL", "ACTION", "TARGET", "OUTCOME"],
        &rows,
    )
}

// ---- files ---------------------------------------------------------------------------------

pub fn entry_json(e: &pb::Entry) -> Value {
    json!({
        "path": e.path,
        "kind": kind(e.kind),
        "size": e.size,
        "mode": format!("{:04o}", e.mode),
        "hash": e.hash,
        "mtime_ns": e.mtime_ns,
        "mtime": time_ns_json(e.mtime_ns),
        "symlink_target": if is_symlink(e) { json!(e.symlink_target) } else { Value::Null },
    })
}

pub fn is_dir(e: &pb::Entry) -> bool {
    e.kind == pb::EntryKind::Directory as i32
}

pub fn is_symlink(e: &pb::Entry) -> bool {
    e.kind == pb::EntryKind::Symlink as i32
}

/// An entry's name as listings show it: `dir/`, `link -> target`, `file`.
fn display_name(e: &pb::Entry) -> String {
    let mut name = base_name(&e.path).to_string();
    if is_dir(e) {
        name.push('/');
    } else if is_symlink(e) && !e.symlink_target.is_empty() {
        name.push_str(" -> ");
        name.push_str(&e.symlink_target);
    }
    name
}

/// The last component of an entry's path.
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

pub fn entry_rows(entries: &[pb::Entry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let modified = time_ns(e.mtime_ns)
                .map(|t| {
                    t.split('.')
                        .next()
                        .unwrap_or(&t)
                        .trim_end_matches('Z')
                        .replace('T', " ")
                })
                .unwrap_or_else(|| "-".into());
            vec![
                kind(e.kind),
                format!("{:04o}", e.mode),
                size(e.size),
                modified,
                display_name(e),
            ]
        })
        .collect();
    table(&["KIND", "MODE", "SIZE", "MODIFIED (UTC)", "NAME"], &rows)
}

pub fn entry_text(e: &pb::Entry) -> String {
    let path = if e.path.is_empty() { "/" } else { &e.path };
    let mut out = format!(
        "path: {path}\nkind: {}\nsize: {} ({} bytes)\nmode: {:04o}\nhash: {}\nmodified: {}\n",
        kind(e.kind),
        size(e.size),
        e.size,
        e.mode,
        e.hash,
        time_ns(e.mtime_ns).unwrap_or_else(|| "-".into()),
    );
    if is_symlink(e) {
        out.push_str(&format!("target: {}\n", e.symlink_target));
    }
    out
}

/// Draws entries (from a recursive listing of `root`) as a tree.
pub fn tree_text(label: &str, root: &str, entries: &[pb::Entry]) -> String {
    use std::collections::BTreeMap;
    let mut children: BTreeMap<&str, Vec<&pb::Entry>> = BTreeMap::new();
    for e in entries {
        let parent = match e.path.rsplit_once('/') {
            Some((parent, _)) => parent,
            None => "",
        };
        children.entry(parent).or_default().push(e);
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| base_name(&a.path).cmp(base_name(&b.path)));
    }
    let mut out = format!("{label}\n");
    let (mut dirs, mut files) = (0u64, 0u64);
    let links = entries.iter().filter(|e| is_symlink(e)).count() as u64;
    fn walk(
        children: &BTreeMap<&str, Vec<&pb::Entry>>,
        dir: &str,
        prefix: &str,
        out: &mut String,
        counts: (&mut u64, &mut u64),
    ) {
        let (dirs, files) = counts;
        let Some(list) = children.get(dir) else {
            return;
        };
        for (i, e) in list.iter().enumerate() {
            let last = i + 1 == list.len();
            let branch = if last { "└── " } else { "├── " };
            if is_dir(e) {
                *dirs += 1;
                out.push_str(&format!("{prefix}{branch}{}/\n", base_name(&e.path)));
                let deeper = format!("{prefix}{}", if last { "    " } else { "│   " });
                walk(children, &e.path, &deeper, out, (&mut *dirs, &mut *files));
            } else if is_symlink(e) {
                out.push_str(&format!("{prefix}{branch}{}\n", display_name(e)));
            } else {
                *files += 1;
                out.push_str(&format!(
                    "{prefix}{branch}{} ({})\n",
                    base_name(&e.path),
                    size(e.size)
                ));
            }
        }
    }
    walk(&children, root, "", &mut out, (&mut dirs, &mut files));
    let links = if links == 0 {
        String::new()
    } else {
        format!(", {}", plural(links, "symlink"))
    };
    out.push_str(&format!(
        "\n{}, {}{links}\n",
        plural(dirs, "directory"),
        plural(files, "file")
    ));
    out
}

/// The symlink targets of a diff's entries, by position: (in "from", in "to"); None where a
/// side is not a symlink or was not looked up.
pub type DiffTargets = Vec<(Option<String>, Option<String>)>;

/// An entry kind as a word, or None when unspecified (the side where the path is absent).
fn kind_json(value: i32) -> Value {
    if value == pb::EntryKind::Unspecified as i32 {
        Value::Null
    } else {
        Value::String(kind(value))
    }
}

/// What changed in a modified path, as words: content (target for symlinks), kind, mode, mtime.
/// A directory's content is its subtree, whose changes are listed path by path, so a
/// directory is reported for its own mode and time only.
fn diff_changes(e: &pb::DiffEntry) -> Vec<&'static str> {
    let link = e.old_kind == pb::EntryKind::Symlink as i32;
    let directory = e.old_kind == pb::EntryKind::Directory as i32;
    let mut changes = Vec::new();
    if e.kind_changed {
        changes.push("kind");
    } else if e.content_changed && !directory {
        changes.push(if link { "target" } else { "content" });
    }
    if e.mode_changed && !e.kind_changed {
        changes.push("mode");
    }
    if e.mtime_changed {
        changes.push("mtime");
    }
    changes
}

pub fn diff_json(d: &aether_client::DiffResult, targets: &DiffTargets) -> Value {
    let entries: Vec<Value> = d
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (old_target, new_target) = targets.get(i).cloned().unwrap_or_default();
            let present = |kind: i32| kind != pb::EntryKind::Unspecified as i32;
            let mode = |kind: i32, mode: u32| {
                if present(kind) {
                    json!(format!("{mode:04o}"))
                } else {
                    Value::Null
                }
            };
            json!({
                "path": e.path,
                "kind": diff_kind(e.kind),
                "old_size": e.old_size,
                "new_size": e.new_size,
                "old_hash": e.old_hash,
                "new_hash": e.new_hash,
                "old_kind": kind_json(e.old_kind),
                "new_kind": kind_json(e.new_kind),
                "old_mode": mode(e.old_kind, e.old_mode),
                "new_mode": mode(e.new_kind, e.new_mode),
                "old_mtime_ns": e.old_mtime_ns,
                "new_mtime_ns": e.new_mtime_ns,
                "old_mtime": time_ns_json(e.old_mtime_ns),
                "new_mtime": time_ns_json(e.new_mtime_ns),
                "old_symlink_target": old_target,
                "new_symlink_target": new_target,
                "content_changed": e.content_changed,
                "mode_changed": e.mode_changed,
                "kind_changed": e.kind_changed,
                "mtime_changed": e.mtime_changed,
                "changes": diff_changes(e),
            })
        })
        .collect();
    json!({
        "from_root": d.from_root,
        "to_root": d.to_root,
        "entries": entries,
    })
}

/// One side of a diff entry: `file (12 B)`, `symlink -> ../x`, `directory`.
fn diff_side(kind_value: i32, bytes: u64, target: &Option<String>) -> String {
    match pb::EntryKind::try_from(kind_value) {
        Ok(pb::EntryKind::Symlink) => match target {
            Some(target) => format!("symlink -> {target}"),
            None => "symlink".into(),
        },
        Ok(pb::EntryKind::Directory) => "directory".into(),
        _ => format!("{} ({})", kind(kind_value), size(bytes)),
    }
}

pub fn diff_text(d: &aether_client::DiffResult, targets: &DiffTargets) -> String {
    let mut out = String::new();
    for (i, e) in d.entries.iter().enumerate() {
        let (old_target, new_target) = targets.get(i).cloned().unwrap_or_default();
        let mut path = e.path.clone();
        if e.new_kind == pb::EntryKind::Directory as i32
            || e.old_kind == pb::EntryKind::Directory as i32
        {
            path.push('/');
        }
        let line = match pb::DiffKind::try_from(e.kind) {
            Ok(pb::DiffKind::Added) => match &new_target {
                Some(target) => format!("A  {path} -> {target}"),
                None => format!("A  {path}  ({})", size(e.new_size)),
            },
            Ok(pb::DiffKind::Deleted) => match &old_target {
                Some(target) => format!("D  {path} -> {target}"),
                None => format!("D  {path}  ({})", size(e.old_size)),
            },
            _ => format!(
                "M  {path}  {}",
                diff_modification(e, &old_target, &new_target)
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// What a modified path's line says changed.
fn diff_modification(
    e: &pb::DiffEntry,
    old_target: &Option<String>,
    new_target: &Option<String>,
) -> String {
    let mut parts = Vec::new();
    for change in diff_changes(e) {
        match change {
            "kind" => parts.push(format!(
                "kind {} => {}",
                diff_side(e.old_kind, e.old_size, old_target),
                diff_side(e.new_kind, e.new_size, new_target)
            )),
            "target" => parts.push(match (old_target, new_target) {
                (Some(old), Some(new)) => format!("target {old} -> {new}"),
                _ => "target".into(),
            }),
            "content" => parts.push(format!(
                "content ({} -> {})",
                size(e.old_size),
                size(e.new_size)
            )),
            "mode" => parts.push(format!("mode {:04o} -> {:04o}", e.old_mode, e.new_mode)),
            // A time is worth a mention only when it is all that changed.
            "mtime" if parts.is_empty() => parts.push(format!(
                "mtime {} -> {}",
                time_ns(e.old_mtime_ns).unwrap_or_else(|| "-".into()),
                time_ns(e.new_mtime_ns).unwrap_or_else(|| "-".into())
            )),
            _ => {}
        }
    }
    if parts.is_empty() {
        // A server that does not say what changed.
        return format!("({} -> {})", size(e.old_size), size(e.new_size));
    }
    parts.join(", ")
}

// ---- history -------------------------------------------------------------------------------

pub fn checkpoint_json(c: &pb::Checkpoint) -> Value {
    json!({
        "name": c.name,
        "root": c.root,
        "head_version": c.head_version,
        "author": c.author,
        "created_at": time_json(&c.created_at),
        "description": c.description,
    })
}

pub fn checkpoint_rows(checkpoints: &[pb::Checkpoint]) -> String {
    let rows: Vec<Vec<String>> = checkpoints
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.head_version.to_string(),
                c.author.clone(),
                time_or_dash(&c.created_at),
                c.description.clone(),
            ]
        })
        .collect();
    table(
        &["NAME", "VERSION", "AUTHOR", "CREATED", "DESCRIPTION"],
        &rows,
    )
}

pub fn commit_json(c: &pb::CommitInfo) -> Value {
    json!({
        "id": c.id,
        "root": c.root,
        "parents": c.parents,
        "author": c.author,
        "message": c.message,
        "time": time_json(&c.time),
        "approvals": c.approvals,
    })
}

pub fn commit_text(c: &pb::CommitInfo) -> String {
    let mut out = format!(
        "commit {}\nAuthor: {}\nDate:   {}\n",
        c.id,
        c.author,
        time_or_dash(&c.time)
    );
    if !c.parents.is_empty() {
        out.push_str(&format!("Parents: {}\n", c.parents.join(" ")));
    }
    if !c.approvals.is_empty() {
        out.push_str(&format!("Approvals: {}\n", c.approvals.join(" ")));
    }
    out.push('\n');
    for line in c.message.lines() {
        out.push_str(&format!("    {line}\n"));
    }
    out
}

// ---- review and knowledge ------------------------------------------------------------------

pub fn annotation_json(a: &pb::Annotation) -> Value {
    json!({
        "id": a.id,
        "path": a.path,
        "lines": a.lines.as_ref().map(|l| json!({"first": l.first_line, "last": l.last_line})),
        "body": a.body,
        "author": a.author,
        "created_at": time_json(&a.created_at),
        "resolved": a.resolved,
        "resolved_by": a.resolved_by,
        "resolved_at": time_json(&a.resolved_at),
        "head_version": a.head_version,
    })
}

pub fn annotation_rows(annotations: &[pb::Annotation]) -> String {
    let rows: Vec<Vec<String>> = annotations
        .iter()
        .map(|a| {
            let lines = a
                .lines
                .as_ref()
                .map(|l| format!("{}-{}", l.first_line, l.last_line))
                .unwrap_or_else(|| "-".into());
            vec![
                a.id.clone(),
                a.path.clone(),
                lines,
                a.author.clone(),
                if a.resolved { "yes" } else { "no" }.into(),
                a.body.lines().next().unwrap_or("").to_string(),
            ]
        })
        .collect();
    table(
        &["ID", "PATH", "LINES", "AUTHOR", "RESOLVED", "NOTE"],
        &rows,
    )
}

pub fn approval_json(a: &pb::Approval) -> Value {
    json!({
        "id": a.id,
        "action": approval_action(a.action),
        "requester": a.requester,
        "reviewers": a.reviewers,
        "state": approval_state(a.state),
        "head_version": a.head_version,
        "head_root": a.head_root,
        "decisions": a.decisions.iter().map(|d| json!({
            "reviewer": d.reviewer,
            "decision": decision(d.decision),
            "comment": d.comment,
            "time": time_json(&d.time),
        })).collect::<Vec<_>>(),
        "comment": a.comment,
        "created_at": time_json(&a.created_at),
    })
}

pub fn approval_rows(approvals: &[pb::Approval]) -> String {
    let rows: Vec<Vec<String>> = approvals
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                approval_action(a.action),
                approval_state(a.state),
                a.requester.clone(),
                a.head_version.to_string(),
                a.comment.clone(),
            ]
        })
        .collect();
    table(
        &["ID", "FOR", "STATE", "REQUESTER", "VERSION", "COMMENT"],
        &rows,
    )
}

pub fn knowledge_json(e: &pb::KnowledgeEntry) -> Value {
    let mut object = Map::new();
    object.insert("key".into(), Value::String(e.key.clone()));
    payload_json(&mut object, "value", &e.value);
    object.insert("tags".into(), json!(e.tags));
    object.insert("author".into(), Value::String(e.author.clone()));
    object.insert("updated_at".into(), time_json(&e.updated_at));
    Value::Object(object)
}

pub fn knowledge_rows(entries: &[pb::KnowledgeEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.key.clone(),
                size(e.value.len() as u64),
                e.tags.join(","),
                e.author.clone(),
                time_or_dash(&e.updated_at),
            ]
        })
        .collect();
    table(&["KEY", "SIZE", "TAGS", "AUTHOR", "UPDATED"], &rows)
}

// ---- bus -----------------------------------------------------------------------------------

/// The event a coordinator message carries, decoded, when the subject is under `session.`.
fn session_event(message: &pb::BusMessage) -> Option<pb::SessionEvent> {
    use prost::Message;
    if !message.subject.starts_with("session.") {
        return None;
    }
    pb::SessionEvent::decode(message.payload.clone()).ok()
}

fn event_summary(event: &pb::SessionEvent) -> (String, Value) {
    use pb::session_event::Event;
    let named = |what: &str, n: &pb::NamedEvent| {
        let text = if n.detail.is_empty() {
            format!("{what} {}", n.name)
        } else {
            format!("{what} {} ({})", n.name, n.detail)
        };
        (
            text,
            json!({"type": what, "name": n.name, "detail": n.detail}),
        )
    };
    match &event.event {
        Some(Event::FilesChanged(f)) => (
            format!(
                "{}: {}{}",
                f.operation,
                f.paths.join(", "),
                if f.truncated { ", … (more)" } else { "" }
            ),
            json!({"type": "files_changed", "operation": f.operation, "paths": f.paths,
                   "truncated": f.truncated}),
        ),
        Some(Event::CheckpointCreated(n)) => named("checkpoint_created", n),
        Some(Event::CheckpointRestored(n)) => named("checkpoint_restored", n),
        Some(Event::CommitCreated(n)) => named("commit_created", n),
        Some(Event::Annotation(n)) => named("annotation", n),
        Some(Event::ApprovalRequested(n)) => named("approval_requested", n),
        Some(Event::ApprovalDecided(n)) => named("approval_decided", n),
        Some(Event::Transferred(n)) => named("transferred", n),
        Some(Event::Finalized(n)) => named("finalized", n),
        Some(Event::Closed(n)) => named("closed", n),
        None => ("event".into(), json!({"type": "unknown"})),
    }
}

pub fn bus_json(m: &pb::BusMessage) -> Value {
    let mut object = Map::new();
    object.insert("offset".into(), json!(m.offset));
    object.insert("subject".into(), json!(m.subject));
    object.insert("publish_time".into(), time_json(&m.publish_time));
    object.insert("publisher".into(), json!(m.publisher));
    object.insert("headers".into(), sorted_map(&m.headers));
    match session_event(m) {
        Some(event) => {
            let (_, mut detail) = event_summary(&event);
            if let Value::Object(fields) = &mut detail {
                fields.insert("head_version".into(), json!(event.head_version));
                fields.insert("principal".into(), json!(event.principal));
            }
            object.insert("event".into(), detail);
        }
        None => payload_json(&mut object, "payload", &m.payload),
    }
    Value::Object(object)
}

pub fn bus_text(m: &pb::BusMessage) -> String {
    let body = match session_event(m) {
        Some(event) => {
            let (text, _) = event_summary(&event);
            format!(
                "{text} [version {} by {}]",
                event.head_version, event.principal
            )
        }
        None => String::from_utf8_lossy(&m.payload).into_owned(),
    };
    format!(
        "{:>6}  {}  {}  {body}",
        m.offset,
        time_or_dash(&m.publish_time),
        m.subject
    )
}

// ---- transfers -----------------------------------------------------------------------------

pub fn upload_json(r: &aether_client::UploadReport) -> Value {
    json!({
        "files": r.files,
        "symlinks": r.symlinks,
        "directories": r.directories,
        "bytes": r.bytes,
        "chunks": r.chunks,
        "chunks_present": r.chunks_present,
        "chunks_uploaded": r.chunks_uploaded,
        "bytes_uploaded": r.bytes_uploaded,
        "bytes_stored": r.bytes_stored,
        "inline_files": r.inline_files,
        "inline_bytes": r.inline_bytes,
        "batches": r.batches,
        "head_version": r.head_version,
        "head_root": r.head_root,
    })
}

pub fn upload_details(r: &aether_client::UploadReport) -> String {
    format!(
        "chunks: {} distinct, {} already stored, {} sent ({}); inline: {} ({}); batches: {}; head version {}",
        r.chunks,
        r.chunks_present,
        r.chunks_uploaded,
        size(r.bytes_uploaded),
        plural(r.inline_files, "file"),
        size(r.inline_bytes),
        r.batches,
        r.head_version
    )
}

/// `1 file`, `2 files`, `3 directories`.
pub fn plural(n: u64, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {noun}s"),
    }
}

pub fn download_json(r: &aether_client::DownloadReport) -> Value {
    json!({
        "files": r.files,
        "directories": r.directories,
        "symlinks": r.symlinks,
        "bytes": r.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_sizes_and_tables() {
        let ts = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        });
        assert_eq!(time(&ts).unwrap(), "2023-11-14T22:13:20Z");
        assert_eq!(
            time(&Some(prost_types::Timestamp::default())).unwrap(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(size(3), "3 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 * 1024 * 1024), "5.0 MiB");
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"\xff\x00"), "/wA=");
        assert_eq!(state(pb::SessionState::Finalized as i32), "finalized");
    }

    #[test]
    fn draws_trees() {
        let entry = |path: &str, dir: bool| pb::Entry {
            path: path.into(),
            kind: if dir {
                pb::EntryKind::Directory as i32
            } else {
                pb::EntryKind::File as i32
            },
            size: 1,
            mode: 0o644,
            ..Default::default()
        };
        let entries = vec![
            entry("a", true),
            entry("a.txt", false),
            entry("a/b.txt", false),
        ];
        let text = tree_text("S:", "", &entries);
        assert_eq!(
            text,
            "S:\n├── a/\n│   └── b.txt (1 B)\n└── a.txt (1 B)\n\n1 directory, 2 files\n"
        );
        let link = pb::Entry {
            path: "a/l".into(),
            kind: pb::EntryKind::Symlink as i32,
            symlink_target: "../a.txt".into(),
            ..Default::default()
        };
        let text = tree_text("S:", "", &[entries, vec![link]].concat());
        assert!(text.contains("l -> ../a.txt\n"), "{text}");
        assert!(
            text.ends_with("1 directory, 2 files, 1 symlink\n"),
            "{text}"
        );
    }

    #[test]
    fn times_with_nanoseconds() {
        assert_eq!(time_ns(0), None);
        assert_eq!(
            time_ns(1_700_000_000_000_000_000).unwrap(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            time_ns(1_700_000_000_123_456_789).unwrap(),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(time_ns(-1).unwrap(), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn entries_show_links_and_times() {
        let link = pb::Entry {
            path: "d/l".into(),
            kind: pb::EntryKind::Symlink as i32,
            mode: 0o777,
            size: 6,
            mtime_ns: 1_700_000_000_500_000_000,
            symlink_target: "../x/y".into(),
            ..Default::default()
        };
        let rows = entry_rows(std::slice::from_ref(&link));
        assert!(
            rows.contains("symlink  0777  6 B   2023-11-14 22:13:20  l -> ../x/y"),
            "{rows}"
        );
        let text = entry_text(&link);
        assert!(text.contains("target: ../x/y\n"), "{text}");
        assert!(
            text.contains("modified: 2023-11-14T22:13:20.500000000Z\n"),
            "{text}"
        );
        let json = entry_json(&link);
        assert_eq!(json["symlink_target"], "../x/y");
        assert_eq!(json["mtime_ns"], 1_700_000_000_500_000_000i64);
        let file = pb::Entry {
            kind: pb::EntryKind::File as i32,
            ..link
        };
        assert!(entry_json(&file)["symlink_target"].is_null());
        assert!(!entry_text(&file).contains("target:"));
    }

    #[test]
    fn diffs_say_what_changed() {
        let file = pb::EntryKind::File as i32;
        let link = pb::EntryKind::Symlink as i32;
        let modified = |old_kind: i32, new_kind: i32| pb::DiffEntry {
            path: "p".into(),
            kind: pb::DiffKind::Modified as i32,
            old_size: 3,
            new_size: 5,
            old_kind,
            new_kind,
            old_mode: 0o644,
            new_mode: 0o644,
            old_mtime_ns: 1_000_000_000,
            new_mtime_ns: 2_000_000_000,
            mtime_changed: true,
            ..Default::default()
        };
        let result = aether_client::DiffResult {
            entries: vec![
                pb::DiffEntry {
                    content_changed: true,
                    ..modified(file, file)
                },
                pb::DiffEntry {
                    mode_changed: true,
                    new_mode: 0o755,
                    ..modified(file, file)
                },
                pb::DiffEntry {
                    kind_changed: true,
                    content_changed: true,
                    mode_changed: true,
                    ..modified(file, link)
                },
                pb::DiffEntry {
                    content_changed: true,
                    ..modified(link, link)
                },
                modified(file, file),
                pb::DiffEntry {
                    kind: pb::DiffKind::Added as i32,
                    old_kind: 0,
                    new_kind: link,
                    ..modified(file, link)
                },
                pb::DiffEntry {
                    content_changed: true,
                    ..modified(
                        pb::EntryKind::Directory as i32,
                        pb::EntryKind::Directory as i32,
                    )
                },
            ],
            ..Default::default()
        };
        let targets: DiffTargets = vec![
            (None, None),
            (None, None),
            (None, Some("../t".into())),
            (Some("a".into()), Some("b".into())),
            (None, None),
            (None, Some("x".into())),
            (None, None),
        ];
        let text = diff_text(&result, &targets);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "M  p  content (3 B -> 5 B)",
                "M  p  mode 0644 -> 0755",
                "M  p  kind file (3 B) => symlink -> ../t",
                "M  p  target a -> b",
                "M  p  mtime 1970-01-01T00:00:01Z -> 1970-01-01T00:00:02Z",
                "A  p -> x",
                "M  p/  mtime 1970-01-01T00:00:01Z -> 1970-01-01T00:00:02Z",
            ]
        );
        let json = diff_json(&result, &targets);
        let entries = json["entries"].as_array().unwrap();
        assert_eq!(entries[0]["changes"], json!(["content", "mtime"]));
        assert_eq!(entries[1]["changes"], json!(["mode", "mtime"]));
        assert_eq!(entries[1]["new_mode"], "0755");
        assert_eq!(entries[2]["changes"], json!(["kind", "mtime"]));
        assert_eq!(entries[2]["new_kind"], "symlink");
        assert_eq!(entries[2]["new_symlink_target"], "../t");
        assert_eq!(entries[3]["changes"], json!(["target", "mtime"]));
        assert_eq!(entries[5]["old_kind"], Value::Null);
        assert_eq!(entries[5]["old_mode"], Value::Null);
        assert_eq!(entries[4]["new_mtime_ns"], 2_000_000_000);
        assert_eq!(entries[4]["new_mtime"], "1970-01-01T00:00:02Z");
        assert_eq!(
            entries[6]["changes"],
            json!(["mtime"]),
            "a subtree is not content"
        );
    }
}
