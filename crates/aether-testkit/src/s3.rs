//! A real S3 server on a free loopback port with one bucket created: moto for tests, or
//! s3s-fs for benchmarks ([`S3Kind`]).
//!
//! moto keeps everything in memory: [`S3Server::kill`] loses all objects, while
//! [`S3Server::pause`] / [`S3Server::resume`] simulate an outage that keeps them. s3s-fs keeps
//! objects in files under the server's temp dir, removed on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::child::{self, ChildProcess, Signal};
use crate::http;
use crate::locate::{moto_server_path, s3s_fs_path};
use crate::logs;
use crate::ports::free_port;
use crate::wait::{retry_on_port_conflict, Backoff, StartFailure, READY_DEADLINE, TAIL_LINES};

const BUCKET: &str = "aether-test";
const ACCESS_KEY: &str = "test";
const SECRET_KEY: &str = "test";
const REGION: &str = "us-east-1";
const CREATE_BUCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Which S3-compatible server [`S3Server::start_with`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum S3Kind {
    /// moto (Python, in memory). Its conditional creates are made atomic (see
    /// `MOTO_WITH_ATOMIC_CREATES`), so races through `If-None-Match` behave as on AWS: what
    /// every test uses.
    #[default]
    Moto,
    /// s3s-fs (Rust, file-backed, checks credentials): much faster than moto, for benchmarks.
    /// Its files (three per object) are in the server's temp dir, under `$TMPDIR`.
    /// Concurrent conditional creates are NOT atomic: never use it to test races.
    S3sFs,
    /// s3s-fs with its files on tmpfs (`/dev/shm`): in memory like moto, so a benchmark
    /// measures what reaches the S3 server rather than the file system under it.
    S3sFsTmpfs,
}

impl S3Kind {
    /// What runs, as in messages and benchmark labels.
    pub fn name(self) -> &'static str {
        match self {
            S3Kind::Moto => "moto",
            S3Kind::S3sFs => "s3s-fs",
            S3Kind::S3sFsTmpfs => "s3s-fs on tmpfs",
        }
    }

    /// Path of the server program, or Err saying how to install it.
    pub fn program(self) -> Result<PathBuf> {
        match self {
            S3Kind::Moto => moto_server_path(),
            S3Kind::S3sFs | S3Kind::S3sFsTmpfs => s3s_fs_path(),
        }
    }
}

/// Where [`S3Kind::S3sFsTmpfs`] keeps its files.
const TMPFS: &str = "/dev/shm";

/// An S3 server with the bucket `aether-test`, killed on drop.
pub struct S3Server {
    // Declared before `dir` so the server is killed before its log and data are removed.
    process: ChildProcess,
    kind: S3Kind,
    port: u16,
    log: PathBuf,
    dir: TempDir,
}

impl S3Server {
    /// Starts moto on a free port, waits until it accepts TCP connections (20 s deadline), and
    /// creates the bucket with an unsigned `PUT /aether-test`.
    pub async fn start() -> Result<S3Server> {
        Self::start_with(S3Kind::Moto).await
    }

    /// Starts the server of `kind` on a free port and waits until it accepts TCP connections
    /// (20 s deadline) with the bucket in place. s3s-fs maps buckets to directories, so its
    /// bucket is a directory made before it starts; it accepts only [`S3Server::access_key`] /
    /// [`S3Server::secret_key`].
    pub async fn start_with(kind: S3Kind) -> Result<S3Server> {
        let program = kind.program()?;
        retry_on_port_conflict(|| Self::try_start(kind, program.clone())).await
    }

    async fn try_start(kind: S3Kind, program: PathBuf) -> Result<S3Server, StartFailure> {
        let failure = |error| StartFailure {
            error,
            port_conflict: false,
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix("aether-s3-");
        let dir = match kind {
            S3Kind::S3sFsTmpfs => builder.tempdir_in(TMPFS).with_context(|| {
                format!("cannot create a temp dir in {TMPFS} (tmpfs) for s3s-fs; use S3Kind::S3sFs on machines without it")
            }),
            _ => builder
                .tempdir()
                .with_context(|| format!("cannot create a temp dir for {}", kind.name())),
        }
        .map_err(failure)?;
        let log = dir.path().join("s3.log");
        let port = free_port();
        let process = match kind {
            S3Kind::Moto => spawn_moto(&program, port, &log),
            S3Kind::S3sFs | S3Kind::S3sFsTmpfs => {
                spawn_s3s_fs(&program, port, &log, &dir.path().join("data"))
            }
        }
        .map_err(failure)?;
        let mut server = S3Server {
            process,
            kind,
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
        let name = self.kind.name();
        loop {
            if let Some(status) = self.process.exit_status()? {
                bail!(
                    "{name} exited before it accepted connections ({status}); last {TAIL_LINES} lines of its log:\n{}",
                    self.log_tail(TAIL_LINES)
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not accept connections on 127.0.0.1:{} within {READY_DEADLINE:?}; last {TAIL_LINES} lines of its log:\n{}",
                    self.port,
                    self.log_tail(TAIL_LINES)
                );
            }
            backoff.sleep(deadline).await;
        }
        if self.kind != S3Kind::Moto {
            // The bucket directory was made before the start.
            return Ok(());
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

    /// Which server this is.
    pub fn kind(&self) -> S3Kind {
        self.kind
    }

    /// `test` (moto accepts any credentials; s3s-fs only these).
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

    /// An `Authorization` header value for raw HTTP requests to moto. moto does not verify
    /// signatures, but a request without this header is anonymous, and anonymous reads of the
    /// (private) objects in the bucket are refused with 403. s3s-fs verifies signatures and
    /// refuses this header: talk to it through a signing client such as `object_store`.
    pub fn authorization(&self) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20240101/{REGION}/s3/aws4_request, SignedHeaders=host, Signature=00"
        )
    }

    /// The pid of the server process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGKILLs the server and reaps it. moto is in memory: every object is lost (s3s-fs leaves
    /// its files in [`S3Server::dir`] until drop).
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

    /// The last `lines` lines of the server's log.
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

    /// The temp dir holding the server's log `s3.log` (and, for s3s-fs, its objects under
    /// `data/`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// moto serves each request on a thread of its own and checks `If-None-Match: *` before it
/// writes, so two racing conditional creates of one key could both succeed. AWS S3 lets only
/// one win; so does moto run through this, which holds one lock around its PutObject handler.
const MOTO_WITH_ATOMIC_CREATES: &str = "\
import threading
import moto.server
from moto.s3.responses import S3Response
put_object, lock = S3Response.put_object, threading.Lock()
def serialised(self):
    with lock:
        return put_object(self)
S3Response.put_object = serialised
moto.server.main()
";

/// The Python interpreter a console script such as `moto_server` runs under (its `#!` line).
fn python_of(script: &std::path::Path) -> Option<PathBuf> {
    let text = std::fs::read(script).ok()?;
    let first = text.split(|&b| b == b'\n').next()?;
    let interpreter = std::str::from_utf8(first.strip_prefix(b"#!")?)
        .ok()?
        .split_whitespace()
        .next()?;
    let path = PathBuf::from(interpreter);
    let name = path.file_name()?.to_str()?;
    (name.starts_with("python") && path.is_file()).then_some(path)
}

fn spawn_moto(moto: &std::path::Path, port: u16, log: &std::path::Path) -> Result<ChildProcess> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = match python_of(moto) {
        Some(python) => {
            let mut command = Command::new(python);
            command.args(["-c", MOTO_WITH_ATOMIC_CREATES]);
            command
        }
        None => Command::new(moto),
    };
    command
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        // Without this, Python buffers its log and a killed server leaves it empty.
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    child::spawn(command, format!("moto_server on port {port}"))
}

fn spawn_s3s_fs(
    program: &std::path::Path,
    port: u16,
    log: &std::path::Path,
    data: &std::path::Path,
) -> Result<ChildProcess> {
    // s3s-fs serves each directory under its root as a bucket.
    let bucket = data.join(BUCKET);
    std::fs::create_dir_all(&bucket)
        .with_context(|| format!("cannot create the bucket directory {}", bucket.display()))?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = Command::new(program);
    command
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(data)
        // Errors only: a lost create race is logged as an error anyway, and per-request logs
        // would cost a benchmark more than the requests themselves.
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    child::spawn(command, format!("s3s-fs on port {port}"))
}
