//! TLS for AetherFS connections (rustls with the ring provider, through tonic).
//!
//! One place decides how an address becomes a connection: [`endpoint`] makes an `https://`
//! address a TLS connection — trusting the CA bundle given, or the system's roots without one,
//! and presenting a client certificate when one is given (for servers that require mutual
//! TLS) — and leaves `http://` plaintext. Every outgoing channel is built with it: the SDK and
//! the CLI, a coordinator calling its store and bus, and nodes forwarding to the holder of a
//! session or a stream. [`TlsArgs::server`] is the listening side of `aetherd`.
//!
//! Files are read and checked when the settings are built, at startup, so a wrong path or a
//! file that holds no certificate fails the process before it serves or connects.
//!
//! The cryptography is ring's: the first TLS settings built install it as rustls's provider
//! for the process. rustls cannot choose by itself here, since the S3 client (object_store)
//! compiles aws-lc-rs in as well, and tonic's server side would panic without a choice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// How long a peer gets to finish the TLS handshake: a stalled one must not hold a connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes ring rustls's provider for this process, unless one was chosen already.
fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: tonic uses that one, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// What is wrong with the TLS settings or an address.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} holds no PEM {expected} block (-----BEGIN {expected}-----)")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("--tls-cert and --tls-key go together: pass both (a PEM certificate chain and its private key) or neither")]
    HalfIdentity,
    #[error("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is a TLS server that also checks client certificates")]
    ClientCaWithoutIdentity,
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot set up TLS for {endpoint}: {reason} (check the PEM files given with --tls-ca, --tls-cert and --tls-key)")]
    Unusable { endpoint: String, reason: String },
}

/// How to connect to `https://` endpoints: which CAs to trust, and the certificate to present
/// when a server asks for one. The default trusts the system's roots and presents none.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl ClientTls {
    /// Trusts the CA certificates of this PEM bundle instead of the system's roots.
    pub fn with_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca = Some(Certificate::from_pem(pem));
        self
    }

    /// Presents this PEM certificate chain and private key when a server asks for a client
    /// certificate (mutual TLS).
    pub fn with_identity_pem(mut self, cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        self.identity = Some(Identity::from_pem(cert, key));
        self
    }

    /// From PEM files: a CA bundle, and a certificate chain with its key (both or neither).
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let mut tls = ClientTls::default();
        if let Some(ca) = ca {
            tls = tls.with_ca_pem(read_pem(ca, "CA bundle (--tls-ca)", "CERTIFICATE")?);
        }
        tls.identity = identity(cert, key)?;
        // Builds a configuration now, so a PEM that does not parse fails at startup (without
        // the system's roots: a process that never dials https:// must not need them).
        let check = "https://localhost";
        let what = "any https:// endpoint";
        Endpoint::from_static(check)
            .tls_config(tls.config(false))
            .map_err(|e| TlsError::Unusable {
                endpoint: what.to_string(),
                reason: error_chain(&e),
            })?;
        Ok(tls)
    }

    fn config(&self, system_roots: bool) -> ClientTlsConfig {
        install_provider();
        let config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
        let config = match &self.ca {
            Some(ca) => config.ca_certificate(ca.clone()),
            None if system_roots => config.with_native_roots(),
            None => config,
        };
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}

/// The endpoint for `address`: TLS per `tls` for `https://`, plaintext for `http://`. Callers
/// add their own timeouts and keep-alives.
pub fn endpoint(address: &str, tls: &ClientTls) -> Result<Endpoint, TlsError> {
    let invalid = |reason: String| TlsError::InvalidEndpoint {
        endpoint: address.to_string(),
        reason,
    };
    let https = if address.starts_with("https://") {
        true
    } else if address.starts_with("http://") {
        false
    } else {
        return Err(invalid(
            "it has no http:// or https:// scheme (https:// connects with TLS)".into(),
        ));
    };
    let endpoint = aether_proto::transport::tune_endpoint(
        Endpoint::from_shared(address.to_string()).map_err(|e| invalid(error_chain(&e)))?,
    );
    if !https {
        return Ok(endpoint);
    }
    endpoint
        .tls_config(tls.config(true))
        .map_err(|e| TlsError::Unusable {
            endpoint: address.to_string(),
            reason: error_chain(&e),
        })
}

/// TLS files of a process, the same flags for `aetherd` and the `aether` CLI.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// CA bundle (PEM) trusted for https:// endpoints; without it, the system's roots.
    #[arg(long, env = "AETHER_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Certificate chain (PEM) this process presents: aetherd serves TLS with it, and clients
    /// and services present it to servers that require client certificates (mutual TLS).
    #[arg(long, env = "AETHER_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "AETHER_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// How this process connects to `https://` endpoints.
    pub fn client(&self) -> Result<ClientTls, TlsError> {
        ClientTls::from_files(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )
    }

    /// How this process serves: None (plaintext) without a certificate. With `client_ca`,
    /// clients must present a certificate issued by one of its CAs (mutual TLS).
    pub fn server(&self, client_ca: Option<&Path>) -> Result<Option<ServerTlsConfig>, TlsError> {
        let Some(identity) = identity(self.tls_cert.as_deref(), self.tls_key.as_deref())? else {
            return match client_ca {
                Some(_) => Err(TlsError::ClientCaWithoutIdentity),
                None => Ok(None),
            };
        };
        install_provider();
        let config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        Ok(Some(match client_ca {
            Some(path) => config.client_ca_root(Certificate::from_pem(read_pem(
                path,
                "client CA bundle (--tls-client-ca)",
                "CERTIFICATE",
            )?)),
            None => config,
        }))
    }
}

/// A certificate chain and its key, when both are given.
fn identity(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Identity>, TlsError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(
            read_pem(cert, "certificate (--tls-cert)", "CERTIFICATE")?,
            read_pem(key, "private key (--tls-key)", "PRIVATE KEY")?,
        ))),
        _ => Err(TlsError::HalfIdentity),
    }
}

/// Reads a PEM file that must hold at least one `expected` block (`PRIVATE KEY` also matches
/// `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn read_pem(path: &Path, what: &'static str, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(expected))
    });
    if !found {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

/// An error with its causes: tonic's transport errors say little at the top level.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_decides_tls() {
        let tls = ClientTls::default();
        assert!(endpoint("http://127.0.0.1:1", &tls).is_ok());
        let error = endpoint("127.0.0.1:1", &tls).unwrap_err().to_string();
        assert!(error.contains("https://"), "{error}");
    }

    #[test]
    fn files_are_checked_up_front() {
        let dir = std::env::temp_dir().join(format!("aether-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = ClientTls::from_files(Some(&not_pem), None, None).unwrap_err();
        assert!(matches!(error, TlsError::NotPem { .. }), "{error}");
        let missing = dir.join("missing.pem");
        let error = ClientTls::from_files(Some(&missing), None, None).unwrap_err();
        assert!(error.to_string().contains("--tls-ca"), "{error}");
        let half = TlsArgs {
            tls_cert: Some(not_pem.clone()),
            ..Default::default()
        };
        assert!(matches!(half.server(None), Err(TlsError::HalfIdentity)));
        let client_ca_only = TlsArgs::default();
        assert!(matches!(
            client_ca_only.server(Some(&not_pem)),
            Err(TlsError::ClientCaWithoutIdentity)
        ));
        assert!(TlsArgs::default().server(None).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
