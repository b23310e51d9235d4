//! Throwaway certificates for TLS tests, made at test time: a CA, a server certificate for
//! `127.0.0.1` and `localhost` that every `aetherd` of a test serves with (and presents as its
//! client certificate when it calls another service under mutual TLS), and a client
//! certificate. PEM files in a temp dir removed on drop.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// Whether and how a [`crate::Cluster`] uses TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext (`http://`) everywhere.
    #[default]
    Off,
    /// Every service serves TLS; services and clients verify it against the test CA.
    On,
    /// TLS, and every service also requires a client certificate of the test CA.
    Mutual,
}

/// A CA with one server and one client certificate, as PEM files.
pub struct TestCa {
    dir: TempDir,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

impl TestCa {
    /// Generates the CA and its certificates (ECDSA P-256) into a new temp dir.
    pub fn generate() -> Result<TestCa> {
        let dir = tempfile::Builder::new()
            .prefix("aether-tls-")
            .tempdir()
            .context("cannot create a temp dir for test certificates")?;

        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "AetherFS test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)
            .context("cannot make the test CA")?;

        let leaf = |name: &str, sans: Vec<String>| -> Result<(String, String)> {
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate()?;
            let cert = params
                .signed_by(&key, &ca)
                .with_context(|| format!("cannot sign the {name} certificate"))?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            "aetherd",
            vec!["127.0.0.1".into(), "localhost".into(), "::1".into()],
        )?;
        let (client_cert_pem, client_key_pem) = leaf("aether-test-client", Vec::new())?;

        let ca_pem = ca.pem();
        for (name, contents) in [
            ("ca.pem", &ca_pem),
            ("server.pem", &server_cert),
            ("server.key", &server_key),
            ("client.pem", &client_cert_pem),
            ("client.key", &client_key_pem),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, contents)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(TestCa {
            dir,
            ca_pem,
            client_cert_pem,
            client_key_pem,
        })
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The client certificate (PEM).
    pub fn client_cert_pem(&self) -> &str {
        &self.client_cert_pem
    }

    /// The client certificate's private key (PEM).
    pub fn client_key_pem(&self) -> &str {
        &self.client_key_pem
    }

    /// A file in the temp dir: `ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The flags that make `aetherd` serve TLS with the server certificate and trust this CA
    /// on its own calls; with `mutual`, it also requires client certificates of this CA.
    pub fn aetherd_args(&self, mutual: bool) -> Vec<String> {
        let path = |name: &str| self.path(name).display().to_string();
        let mut args = vec![
            "--tls-cert".to_owned(),
            path("server.pem"),
            "--tls-key".to_owned(),
            path("server.key"),
            "--tls-ca".to_owned(),
            path("ca.pem"),
        ];
        if mutual {
            args.extend(["--tls-client-ca".to_owned(), path("ca.pem")]);
        }
        args
    }
}
