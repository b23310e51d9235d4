//! One `aetherd` process for tests.
//!
//! The process listens on a port it picks itself (`--listen 127.0.0.1:0`) and announces it on
//! stdout as `aetherd <service> listening on <ip:port>`; we wait for that line instead of
//! guessing a free port. Its stdin is a pipe that only we hold: aetherd exits when stdin
//! closes, a second guard (besides kill-on-drop and the parent-death signal) against leaks.
//! stdout and stderr are kept in files in a temp dir, removed on drop.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::child::{self, ChildProcess, Signal};
use crate::locate::aetherd_path;
use crate::logs;
use crate::wait::{READY_DEADLINE, TAIL_LINES};

const TERMINATE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a process that closed its stdout gets to exit before we report it as running.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(2);
/// How often the readiness wait checks whether the process exited while stdout stays open
/// (a wrapper script whose own child still holds the pipe).
const EXIT_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A running `aetherd` (or a stand-in binary speaking the same startup protocol), killed on
/// drop.
pub struct ServiceProcess {
    // Declared before `logs` so the process is killed before its log files are removed.
    process: ChildProcess,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    service: String,
    addr: SocketAddr,
    logs: TempDir,
}

impl ServiceProcess {
    /// Spawns `aetherd <args...> --listen 127.0.0.1:0` and waits (20 s deadline) until it
    /// announces its address. On deadline or early exit, Err with the exit status and the last
    /// 30 lines of its stderr.
    pub async fn start(args: &[String]) -> Result<ServiceProcess> {
        Self::start_with_binary(aetherd_path()?, args).await
    }

    /// Like [`ServiceProcess::start`], with another binary in place of `aetherd`; it must
    /// print the same `aetherd <service> listening on <ip:port>` line on stdout.
    pub async fn start_with_binary(
        binary: impl Into<PathBuf>,
        args: &[String],
    ) -> Result<ServiceProcess> {
        Self::start_with_env(binary, args, &[]).await
    }

    /// Like [`ServiceProcess::start_with_binary`], with extra environment variables (kept for
    /// restarts too).
    pub async fn start_with_env(
        binary: impl Into<PathBuf>,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<ServiceProcess> {
        let binary = binary.into();
        let logs = tempfile::Builder::new()
            .prefix("aether-service-")
            .tempdir()
            .context("cannot create a temp dir for service logs")?;
        let (process, service, addr) =
            launch(&binary, args, env, "127.0.0.1:0", logs.path()).await?;
        Ok(ServiceProcess {
            process,
            binary,
            args: args.to_vec(),
            env: env.to_vec(),
            service,
            addr,
            logs,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`, or `https://ip:port` when it serves TLS (started with `--tls-cert`).
    pub fn endpoint(&self) -> String {
        let tls = self
            .args
            .iter()
            .any(|a| a == "--tls-cert" || a.starts_with("--tls-cert="));
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The pid of the current process (it changes on [`ServiceProcess::restart`]).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The service name it announced (`store`, `bus`, `coordinator`, ...).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// SIGKILLs the process and reaps it. Killing a process that is not running does nothing.
    pub fn kill(&mut self) -> Result<()> {
        self.process.kill()?;
        Ok(())
    }

    /// SIGSTOPs the process: connections are accepted by the kernel but never answered.
    pub fn pause(&self) -> Result<()> {
        self.process.signal(Signal::Stop)
    }

    /// SIGCONTs a paused process.
    pub fn resume(&self) -> Result<()> {
        self.process.signal(Signal::Cont)
    }

    /// SIGTERM (and SIGCONT, so a paused process handles it too), then waits up to 10 s for it
    /// to exit. Past the deadline it is SIGKILLed and the result is Err. If it had already
    /// exited, returns that status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.process.exit_status()? {
            return Ok(status);
        }
        self.process.signal(Signal::Term)?;
        // Fails only if it exited already, which the wait below reports.
        let _ = self.process.signal(Signal::Cont);
        if let Some(status) = self.process.wait_for_exit(TERMINATE_DEADLINE).await? {
            return Ok(status);
        }
        let status = self.process.kill()?;
        bail!(
            "aetherd {} (pid {}) did not exit within {TERMINATE_DEADLINE:?} of SIGTERM and was killed ({status}); last {TAIL_LINES} lines of stderr:\n{}",
            self.service,
            self.process.pid(),
            self.stderr_tail(TAIL_LINES)
        )
    }

    /// The last `lines` lines of its stderr (all runs, separated by a marker line).
    pub fn stderr_tail(&self, lines: usize) -> String {
        logs::tail(&self.logs.path().join("stderr.log"), lines)
    }

    /// The directory holding `stdout.log` and `stderr.log`.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// Kills the process if it runs, then starts it again with the same args, listening on
    /// the same address.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill()?;
        for name in ["stdout.log", "stderr.log"] {
            let mut log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.logs.path().join(name))?;
            writeln!(log, "--- aether-testkit: restarting on {} ---", self.addr)?;
        }
        let listen = self.addr.to_string();
        let (process, service, addr) = launch(
            &self.binary,
            &self.args,
            &self.env,
            &listen,
            self.logs.path(),
        )
        .await?;
        self.process = process;
        if addr != self.addr {
            bail!(
                "aetherd {service} restarted on {addr} instead of {}",
                self.addr
            );
        }
        self.service = service;
        Ok(())
    }
}

/// Spawns `binary args --listen listen` and waits for its ready line.
/// Whether `arg` configures an authentication source (or anonymous access) of `aetherd`.
fn is_auth_source_flag(arg: &str) -> bool {
    [
        "--auth-token-file",
        "--auth-jwt-hs256-secret-file",
        "--auth-jwt-rs256-public-key",
        "--allow-anonymous",
    ]
    .iter()
    .any(|flag| arg == *flag || arg.starts_with(&format!("{flag}=")))
}

async fn launch(
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
    listen: &str,
    logs: &Path,
) -> Result<(ChildProcess, String, SocketAddr)> {
    let stderr_path = logs.join("stderr.log");
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_path)
        .with_context(|| format!("cannot open {}", stderr_path.display()))?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .args(["--listen", listen])
        .stdin(Stdio::piped())
        // aetherd exits when this pipe closes: no orphan outlives its test.
        .env("AETHER_EXIT_ON_STDIN_CLOSE", "true")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .envs(env.iter().map(|(k, v)| (k, v)));
    // Cluster services refuse to start without an auth source; tests that configure none
    // run them open (anonymous). Tests that pass an auth source get exactly what they ask.
    if !args.iter().any(|a| is_auth_source_flag(a)) {
        command.env("AETHER_ALLOW_ANONYMOUS", "true");
    }
    let what = format!("{} {}", binary.display(), args.join(" "));
    let mut process = child::spawn(command, what.clone())?;
    let stdout = process
        .take_stdout()
        .context("spawned without a stdout pipe")?;
    let lines = tee_lines(stdout, &logs.join("stdout.log"))?;
    let (service, addr) = wait_ready(&mut process, lines).await.with_context(|| {
        format!(
            "`{what} --listen {listen}` did not start; last {TAIL_LINES} lines of stderr:\n{}",
            logs::tail(&stderr_path, TAIL_LINES)
        )
    })?;
    Ok((process, service, addr))
}

/// Waits for the ready line; Err saying how the process ended (or that it hung).
async fn wait_ready(
    process: &mut ChildProcess,
    mut lines: mpsc::Receiver<String>,
) -> Result<(String, SocketAddr)> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => {
                    if let Some(ready) = parse_ready_line(&line) {
                        return Ok(ready);
                    }
                }
                None => {
                    let status = match process.wait_for_exit(EXIT_AFTER_EOF).await? {
                        Some(status) => status.to_string(),
                        None => format!("closed stdout but still running; killed: {}", process.kill()?),
                    };
                    bail!("it exited before announcing its address ({status})");
                }
            },
            _ = tokio::time::sleep(EXIT_CHECK_INTERVAL) => {
                if let Some(status) = process.exit_status()? {
                    bail!("it exited before announcing its address ({status})");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let status = process.kill()?;
                bail!(
                    "no `aetherd <service> listening on <ip:port>` line on stdout within {READY_DEADLINE:?}; killed it ({status})"
                );
            }
        }
    }
}

/// `aetherd <service> listening on <ip:port>` → (service, address).
fn parse_ready_line(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.trim().strip_prefix("aetherd ")?;
    let (service, addr) = rest.split_once(" listening on ")?;
    if service.is_empty() || service.contains(char::is_whitespace) {
        return None;
    }
    Some((service.to_owned(), addr.trim().parse().ok()?))
}

/// Copies the child's stdout to `path` on a thread for its whole life (so the pipe never fills
/// and blocks the child), and forwards each line to the returned channel until the receiver is
/// dropped. The channel is bounded: before readiness a burst of output just makes the copy wait
/// for the reader; after it, sends fail at once and only the file copy continues.
fn tee_lines(stdout: ChildStdout, path: &Path) -> Result<mpsc::Receiver<String>> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let (sender, receiver) = mpsc::channel(64);
    std::thread::Builder::new()
        .name("aetherd-stdout".into())
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            let mut forwarding = true;
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = file.write_all(&line);
                        if forwarding {
                            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                            forwarding = sender.blocking_send(text).is_ok();
                        }
                    }
                }
            }
        })
        .context("cannot start the stdout reader thread")?;
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::parse_ready_line;

    #[test]
    fn parses_the_ready_line() {
        let (service, addr) =
            parse_ready_line("aetherd store listening on 127.0.0.1:4242").unwrap();
        assert_eq!(service, "store");
        assert_eq!(addr, "127.0.0.1:4242".parse().unwrap());
        assert!(parse_ready_line("aetherd store listening on [::1]:80\n").is_some());
    }

    #[test]
    fn ignores_other_lines() {
        assert!(parse_ready_line("store listening on 127.0.0.1:1").is_none());
        assert!(parse_ready_line("aetherd store listening on nowhere").is_none());
        assert!(parse_ready_line("aetherd two words listening on 127.0.0.1:1").is_none());
        assert!(parse_ready_line("INFO aetherd store listening on 127.0.0.1:1").is_none());
    }
}
