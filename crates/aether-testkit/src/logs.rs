//! Reading the log files children write, for error messages and `*_tail` accessors.

use std::path::Path;

/// The last `lines` lines of the file at `path` (or a note saying why it cannot be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("<cannot read {}: {error}>", path.display()),
    }
}

/// True if the log says a listen address was taken (Go and Python both say it this way).
pub(crate) fn mentions_port_conflict(path: &Path) -> bool {
    std::fs::read(path)
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .to_lowercase()
                .contains("address already in use")
        })
        .unwrap_or(false)
}
