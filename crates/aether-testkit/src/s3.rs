//! A real S3 server for tests: moto on a free loopback port with one bucket created.
//!
//! moto keeps everything in memory: [`S3Server::kill`] loses all objects, while
//! [`S3Server::pause`] / [`S3Server::resume`] simulate an outage that keeps them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::child::{self, ChildProcess, Signal};
use crate::http;
use crate::locate::moto_server_path;
use crate::logs;
use crate::ports::free_port;
use crate::wait::{retry_on_port_conflict, Backoff, StartFailure, READY_DEADLINE, TAIL_LINES};

const BUCKET: &str = "aether-test";
const ACCESS_KEY: &str = "test";
const SECRET_KEY: &str = "test";
const REGION: &str = "us-east-1";
const CREATE_BUCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A moto S3 server with the bucket `aether-test`, killed on drop.
pub struct S3Server {
    // Declared before `dir` so the server is killed before its log is removed.
    process: ChildProcess,
    port: u16,
    log: PathBuf,
    dir: TempDir,
}

impl S3Server {
    /// Starts moto on a free port, waits until it accepts TCP connections (20 s deadline), and
    /// creates the bucket with an unsigned `PUT /aether-test`.
    pub async fn start() -> Result<S3Server> {
        let moto = moto_server_path()?;
        retry_on_port_conflict(|| Self::try_start(moto.clone())).await
    }

    async fn try_start(moto: PathBuf) -> Result<S3Server, StartFailure> {
        let failure = |error| StartFailure {
            error,
            port_conflict: false,
        };
        let dir = tempfile::Builder::new()
            .prefix("aether-s3-")
            .tempdir()
            .context("cannot create a temp dir for moto")
            .map_err(failure)?;
        let log = dir.path().join("moto.log");
        let port = free_port();
        let process = spawn_moto(&moto, port, &log).map_err(failure)?;
        let mut server = S3Server {
            process,
            port,
            log,
            dir,
        };
        match server.wait_ready().await {
            Ok(()) => Ok(server),
            Err(error) => Err(StartFailure {
                port_conflict: logs::mentions_port_conflict(&server.log),
                error,
            }),
        }
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        let mut backoff = Backoff::new();
        loop {
            if let Some(status) = self.process.exit_status()? {
                bail!(
                    "moto_server exited before it accepted connections ({status}); last {TAIL_LINES} lines of its log:\n{}",
                    self.log_tail(TAIL_LINES)
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "moto_server did not accept connections on 127.0.0.1:{} within {READY_DEADLINE:?}; last {TAIL_LINES} lines of its log:\n{}",
                    self.port,
                    self.log_tail(TAIL_LINES)
                );
            }
            backoff.sleep(deadline).await;
        }
        let path = format!("/{BUCKET}");
        let response = http::request(
            &self.endpoint(),
            "PUT",
            &path,
            &[],
            b"",
            CREATE_BUCKET_TIMEOUT,
        )
        .await
        .context("cannot create the test bucket")?;
        if response.status != 200 {
            bail!(
                "creating bucket {BUCKET} on moto answered {} {}",
                response.status,
                response.text()
            );
        }
        Ok(())
    }

    /// `http://127.0.0.1:P`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket created at start, `aether-test`.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// `test` (moto accepts any credentials).
    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    /// `test`.
    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// `us-east-1`.
    pub fn region(&self) -> &str {
        REGION
    }

    /// An `Authorization` header value for raw HTTP requests. moto does not verify signatures,
    /// but a request without this header is anonymous, and anonymous reads of the (private)
    /// objects in the bucket are refused with 403.
    pub fn authorization(&self) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20240101/{REGION}/s3/aws4_request, SignedHeaders=host, Signature=00"
        )
    }

    /// The pid of the moto server process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGKILLs the server and reaps it. moto is in memory: every object is lost.
    pub fn kill(&mut self) -> Result<()> {
        self.process.kill()?;
        Ok(())
    }

    /// SIGSTOPs the server: connections are still accepted by the kernel but never answered,
    /// like an outage, and the stored objects are kept.
    pub fn pause(&self) -> Result<()> {
        self.process.signal(Signal::Stop)
    }

    /// SIGCONTs a paused server.
    pub fn resume(&self) -> Result<()> {
        self.process.signal(Signal::Cont)
    }

    /// The last `lines` lines of moto's log.
    pub fn log_tail(&self, lines: usize) -> String {
        logs::tail(&self.log, lines)
    }

    /// Extra command-line arguments that make `aetherd` use this server as its store backend.
    pub fn aetherd_args(&self) -> Vec<String> {
        [
            "--store-backend",
            "s3",
            "--s3-endpoint",
            &self.endpoint(),
            "--s3-bucket",
            BUCKET,
            "--s3-region",
            REGION,
            "--s3-access-key",
            ACCESS_KEY,
            "--s3-secret-key",
            SECRET_KEY,
            "--s3-allow-http",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The temp dir holding moto's log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn spawn_moto(moto: &std::path::Path, port: u16, log: &std::path::Path) -> Result<ChildProcess> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = Command::new(moto);
    command
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        // Without this, Python buffers its log and a killed server leaves it empty.
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    child::spawn(command, format!("moto_server on port {port}"))
}
