//! What can go wrong in the SDK. Every error keeps (or names) a gRPC status code, so callers can
//! branch on `code()` the same way whether the server refused a request or the SDK did.

use std::path::PathBuf;

use tonic::Code;

/// SDK errors; messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server (or the transport below it) answered with a gRPC status.
    #[error("{}: {message}", code_name(*code))]
    Status { code: Code, message: String },
    /// The endpoint is not a usable URI.
    #[error("invalid endpoint {endpoint:?}: {reason} (expected http://host:port, or https://host:port for TLS)")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The TLS settings ([`crate::ClientTls`]) cannot be used for an `https://` endpoint.
    #[error(transparent)]
    Tls(aether_tls::TlsError),
    /// The token cannot be sent as an HTTP header value.
    #[error("the token cannot be sent in an authorization header: {0}")]
    InvalidToken(String),
    /// Reading or writing a local file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A request the SDK refuses before sending it.
    #[error("{0}")]
    InvalidArgument(String),
    /// A download would write through a symbolic link (or over something that is not a file
    /// or directory) inside its destination; nothing is written there.
    #[error("refusing to write {}: {reason}", path.display())]
    UnsafeDestination { path: PathBuf, reason: String },
    /// A local file changed between hashing and uploading, so what was hashed is not what
    /// would be sent.
    #[error("{} changed while it was being uploaded; run the upload again", path.display())]
    ChangedDuringUpload { path: PathBuf },
    /// The server's answer lacks a field the API promises.
    #[error("the {rpc} response has no {field}; is the server a compatible AetherFS?")]
    MissingField {
        rpc: &'static str,
        field: &'static str,
    },
}

/// Results of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC status code this error is, or would be if the server had said it.
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::InvalidEndpoint { .. }
            | Error::InvalidToken(_)
            | Error::InvalidArgument(_)
            | Error::Tls(_) => Code::InvalidArgument,
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => Code::NotFound,
                std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
                std::io::ErrorKind::AlreadyExists => Code::AlreadyExists,
                _ => Code::Unknown,
            },
            Error::ChangedDuringUpload { .. } => Code::Aborted,
            Error::UnsafeDestination { .. } => Code::FailedPrecondition,
            Error::MissingField { .. } => Code::Internal,
        }
    }

    /// Whether this is a NOT_FOUND (from the server, or a local file that does not exist).
    pub fn is_not_found(&self) -> bool {
        self.code() == Code::NotFound
    }

    /// Whether the server answered (rather than the SDK refusing or a local file failing).
    pub fn is_status(&self) -> bool {
        matches!(self, Error::Status { .. })
    }

    /// A local I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn missing(rpc: &'static str, field: &'static str) -> Error {
        Error::MissingField { rpc, field }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        // Transport failures carry a generic message ("transport error") and the real cause
        // (connection refused, DNS...) in the source chain; keep both.
        let mut message = status.message().to_string();
        let mut source = std::error::Error::source(&status);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
            source = cause.source();
        }
        Error::Status {
            code: status.code(),
            message,
        }
    }
}

/// The canonical upper-case name of a status code, as gRPC documents and other tools print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_and_message() {
        let error = Error::from(tonic::Status::failed_precondition("session x is finalized"));
        assert_eq!(error.code(), Code::FailedPrecondition);
        assert_eq!(
            error.to_string(),
            "FAILED_PRECONDITION: session x is finalized"
        );
        assert!(error.is_status());
    }

    #[test]
    fn missing_local_file_is_not_found() {
        let error = Error::io(
            "/nope",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert!(error.is_not_found());
        assert!(!error.is_status());
    }
}
