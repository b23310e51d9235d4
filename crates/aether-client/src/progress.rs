//! Progress reporting for transfers, so a front end (a CLI progress bar, a log line) can follow
//! uploads, downloads, exports and imports without the SDK knowing how it is shown.

/// Receives progress of a transfer. Every method has a default that does nothing.
pub trait Progress: Send + Sync {
    /// A new phase starts ("hashing", "uploading", "downloading"...), with its total in bytes
    /// when known.
    fn phase(&self, name: &str, total_bytes: Option<u64>) {
        let _ = (name, total_bytes);
    }
    /// `bytes` more bytes of the current phase are done.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
