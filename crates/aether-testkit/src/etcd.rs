//! Real etcd for tests: one node ([`Etcd`]) or an N-member cluster ([`EtcdCluster`]) on free
//! loopback ports, each member with its own data directory and log inside one temp dir that is
//! removed (after the members are killed) on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::child::{self, ChildProcess};
use crate::http;
use crate::locate::etcd_path;
use crate::logs;
use crate::ports::free_port;
use crate::wait::{retry_on_port_conflict, Backoff, StartFailure, READY_DEADLINE, TAIL_LINES};

const HEALTHY: &str = "\"health\":\"true\"";
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A single-node etcd with its own temp data dir, killed on drop.
pub struct Etcd {
    cluster: EtcdCluster,
}

impl Etcd {
    /// Starts etcd on free client, peer and metrics ports and waits until `/health` says
    /// healthy (20 s deadline; the error then quotes the end of etcd's log).
    pub async fn start() -> Result<Etcd> {
        Ok(Etcd {
            cluster: EtcdCluster::start(1).await?,
        })
    }

    /// The client URL, `http://127.0.0.1:P`.
    pub fn endpoint(&self) -> String {
        self.cluster.members[0].endpoint()
    }

    /// The last `lines` lines of etcd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.cluster.members[0].log_tail(lines)
    }
}

/// An etcd cluster of N members on loopback, every member in the initial cluster.
pub struct EtcdCluster {
    // Declared before `dir` so members are killed before their data dirs are removed.
    members: Vec<Member>,
    etcd: PathBuf,
    initial_cluster: String,
    token: String,
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts `members` members and waits until every one is healthy (20 s deadline).
    pub async fn start(members: usize) -> Result<EtcdCluster> {
        if members == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let etcd = etcd_path()?;
        retry_on_port_conflict(|| Self::try_start(etcd.clone(), members)).await
    }

    async fn try_start(etcd: PathBuf, count: usize) -> Result<EtcdCluster, StartFailure> {
        let dir = tempfile::Builder::new()
            .prefix("aether-etcd-")
            .tempdir()
            .context("cannot create a temp dir for etcd")
            .map_err(|error| StartFailure {
                error,
                port_conflict: false,
            })?;
        let members: Vec<Member> = (0..count)
            .map(|index| Member::new(format!("etcd{index}"), dir.path()))
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let token = dir
            .path()
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "aether-etcd".into());
        let mut cluster = EtcdCluster {
            members,
            etcd,
            initial_cluster,
            token,
            dir,
        };
        let started = cluster.launch_all().await;
        match started {
            Ok(()) => Ok(cluster),
            Err(error) => Err(StartFailure {
                port_conflict: cluster
                    .members
                    .iter()
                    .any(|member| logs::mentions_port_conflict(&member.log)),
                error,
            }),
        }
    }

    async fn launch_all(&mut self) -> Result<()> {
        // Spawn every member before waiting: none is healthy until a quorum is up.
        for index in 0..self.members.len() {
            self.launch(index, "new")?;
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.wait_until_healthy(&all).await
    }

    /// Polls `/health` of `which` until all say healthy; fails early if any running member
    /// exits (a lost member can keep the others from ever reaching quorum).
    async fn wait_until_healthy(&mut self, which: &[usize]) -> Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        let mut backoff = Backoff::new();
        let mut pending = which.to_vec();
        loop {
            for member in &mut self.members {
                member.check_not_exited()?;
            }
            let mut unhealthy = Vec::new();
            for index in pending {
                let member = &self.members[index];
                if member.process.is_none() {
                    bail!("etcd member {} is not running", member.name);
                }
                if let Err(answer) = member.probe().await {
                    unhealthy.push((index, answer));
                }
            }
            let Some((index, answer)) = unhealthy.last() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let member = &self.members[*index];
                bail!(
                    "etcd member {} at {} not healthy within {READY_DEADLINE:?} (last /health answer: {answer}); last {TAIL_LINES} lines of {}:\n{}",
                    member.name,
                    member.endpoint(),
                    member.log.display(),
                    member.log_tail(TAIL_LINES)
                );
            }
            pending = unhealthy.into_iter().map(|(index, _)| index).collect();
            backoff.sleep(deadline).await;
        }
    }

    fn launch(&mut self, index: usize, state: &str) -> Result<()> {
        let member = &mut self.members[index];
        member.process =
            Some(member.spawn(&self.etcd, &self.initial_cluster, &self.token, state)?);
        Ok(())
    }

    /// Client URLs of all members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// `http://127.0.0.1:P` serving `/metrics` of member `member` (Prometheus text, with
    /// per-method gRPC handling times: etcd runs with `--metrics extensive`).
    pub fn metrics_endpoint(&self, member: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[member].metrics_port)
    }

    /// The pid of member `member`, if it is running.
    pub fn pid(&self, member: usize) -> Option<u32> {
        self.members[member].process.as_ref().map(|p| p.pid())
    }

    /// SIGKILLs member `member` and reaps it; its data dir and ports are kept for
    /// [`EtcdCluster::restart`]. Killing a member that is not running does nothing.
    pub fn kill(&mut self, member: usize) -> Result<()> {
        let member = self.member_mut(member)?;
        if let Some(mut process) = member.process.take() {
            process.kill()?;
        }
        Ok(())
    }

    /// Starts member `member` again (killing it first if it runs) on the same data dir and
    /// ports with `--initial-cluster-state existing`, and waits until it is healthy.
    pub async fn restart(&mut self, member: usize) -> Result<()> {
        self.kill(member)?;
        self.launch(member, "existing")?;
        self.wait_until_healthy(&[member]).await
    }

    /// Waits (20 s deadline) until member `member` answers `/health` with healthy, e.g. after
    /// another member was killed and a new leader must be elected.
    pub async fn wait_healthy(&mut self, member: usize) -> Result<()> {
        self.member_mut(member)?;
        self.wait_until_healthy(&[member]).await
    }

    /// The last `lines` lines of member `member`'s log (all its runs).
    pub fn log_tail(&self, member: usize, lines: usize) -> String {
        match self.members.get(member) {
            Some(member) => member.log_tail(lines),
            None => format!("<no etcd member {member}>"),
        }
    }

    /// The directory holding every member's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn member_mut(&mut self, member: usize) -> Result<&mut Member> {
        let count = self.members.len();
        self.members
            .get_mut(member)
            .with_context(|| format!("no etcd member {member}: the cluster has {count} members"))
    }
}

/// One etcd member: fixed name, ports and data dir; a process while it runs.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<ChildProcess>,
}

impl Member {
    fn new(name: String, dir: &Path) -> Member {
        Member {
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            data_dir: dir.join(&name),
            log: dir.join(format!("{name}.log")),
            process: None,
            name,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn log_tail(&self, lines: usize) -> String {
        logs::tail(&self.log, lines)
    }

    fn spawn(
        &self,
        etcd: &Path,
        initial_cluster: &str,
        token: &str,
        state: &str,
    ) -> Result<ChildProcess> {
        // Appending keeps the log of earlier runs of this member.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let client = self.endpoint();
        let peer = self.peer_url();
        let mut command = Command::new(etcd);
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", token])
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", self.metrics_port))
            .args(["--metrics", "extensive"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // etcd also reads its flags from ETCD_* variables; the caller's must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        child::spawn(command, format!("etcd member {}", self.name))
    }

    /// Err quoting the log if this member was started and has exited since.
    fn check_not_exited(&mut self) -> Result<()> {
        let Some(process) = self.process.as_mut() else {
            return Ok(());
        };
        if let Some(status) = process.exit_status()? {
            bail!(
                "etcd member {} exited ({status}); last {TAIL_LINES} lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(TAIL_LINES)
            );
        }
        Ok(())
    }

    /// Ok if `/health` says healthy, else Err with what it answered.
    async fn probe(&self) -> Result<(), String> {
        match http::request(&self.endpoint(), "GET", "/health", &[], b"", PROBE_TIMEOUT).await {
            Ok(response) if response.text().contains(HEALTHY) => Ok(()),
            Ok(response) => Err(format!("{} {}", response.status, response.text())),
            Err(error) => Err(format!("{error:#}")),
        }
    }
}
