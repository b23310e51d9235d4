//! Owns every process the testkit starts; the only module with `unsafe` code.
//!
//! Promise: no process started here outlives its owner, even when a test fails, panics or is
//! itself SIGKILLed. Three things keep it:
//! - [`ChildProcess`] SIGKILLs and reaps its child on drop, so unwinding cleans up;
//! - every child gets `PR_SET_PDEATHSIG = SIGKILL` before `exec`, so the kernel kills it when
//!   the test process dies without running destructors;
//! - children are forked from one spawner thread that lives as long as the process. The kernel
//!   sends the death signal when the *thread* that forked the child exits, not the process, so
//!   forking from a test thread (or a tokio blocking thread that idles out) would kill a shared
//!   fixture the moment that thread ended.
//!
//! Signals go through [`ChildProcess::signal`], which refuses to signal a child that has exited,
//! so a recycled pid is never hit.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::time::Instant;

use crate::wait::Backoff;

/// Signals the testkit sends besides SIGKILL (which goes through [`ChildProcess::kill`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Signal {
    Term,
    Stop,
    Cont,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Stop => "SIGSTOP",
            Signal::Cont => "SIGCONT",
        }
    }
}

/// A running (or exited, not yet dropped) child process, killed and reaped on drop.
pub(crate) struct ChildProcess {
    child: Child,
    pid: u32,
    /// What this process is, for error messages, e.g. "etcd member etcd0".
    what: String,
    /// Set once the child has been reaped; after that its pid may belong to someone else.
    exit: Option<ExitStatus>,
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The long-lived thread every child is forked from (see the module comment).
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("aether-testkit-spawner".into())
            .spawn(move || {
                // Never returns: the sender lives in a static.
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("aether-testkit: cannot start the process spawner thread");
        requests
    })
}

/// Spawns `command` so that it dies with the test process. `what` names it in errors.
pub(crate) fn spawn(mut command: Command, what: impl Into<String>) -> Result<ChildProcess> {
    let what = what.into();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook runs in the forked child between fork and exec. It only makes two
    // syscalls, prctl(2) and getppid(2), which are async-signal-safe, allocates nothing and
    // touches no memory shared with the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // If the parent died before prctl took effect, no death signal will ever come.
            if libc::getppid() != parent {
                return Err(io::Error::other("the test process exited during spawn"));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner()
        .send((command, reply))
        .map_err(|_| anyhow::anyhow!("the process spawner thread is gone"))?;
    let child = answer
        .recv()
        .context("the process spawner thread dropped the request")?
        .with_context(|| format!("cannot spawn {what}"))?;
    Ok(ChildProcess {
        pid: child.id(),
        child,
        what,
        exit: None,
    })
}

impl ChildProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub(crate) fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .with_context(|| format!("cannot check whether {} has exited", self.what))?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for the child to exit on its own; `None` if it is still running.
    pub(crate) async fn wait_for_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new();
        loop {
            if let Some(status) = self.exit_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            backoff.sleep(deadline).await;
        }
    }

    /// SIGKILL (works on stopped processes too), then reap. Idempotent.
    pub(crate) fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        // Fails only if the child already exited, which the wait below reports.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .with_context(|| format!("cannot reap {} (pid {})", self.what, self.pid))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Sends `signal`; Err if the child has exited (reaped or not). SIGSTOP returns once every
    /// thread of the child has stopped, so the outage has begun when `pause()` returns.
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        if let Some(status) = self.exit {
            bail!(
                "cannot send {} to {} (pid {}): it exited with {status}",
                signal.name(),
                self.what,
                self.pid
            );
        }
        if self.exited_unreaped() {
            bail!(
                "cannot send {} to {} (pid {}): it has exited",
                signal.name(),
                self.what,
                self.pid
            );
        }
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is our own child, which
        // has not been reaped (checked above; only `&mut self` methods reap), so it cannot name
        // another process.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, signal.number()) };
        if rc != 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!(
                    "cannot send {} to {} (pid {})",
                    signal.name(),
                    self.what,
                    self.pid
                )
            });
        }
        if let Signal::Stop = signal {
            self.wait_until_stopped()?;
        }
        Ok(())
    }

    /// Polls until the kernel reports the child stopped (or exited); the stop takes effect
    /// only when each of its threads next handles signals.
    fn wait_until_stopped(&self) -> Result<()> {
        const DEADLINE: Duration = Duration::from_secs(5);
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut pause = Duration::from_micros(100);
        loop {
            // SAFETY: as in `exited_unreaped`; WNOWAIT leaves the stop (or exit) reportable
            // and the child unreaped.
            let reported = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let rc = libc::waitid(
                    libc::P_PID,
                    self.pid as libc::id_t,
                    &mut info,
                    libc::WSTOPPED | libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                );
                rc == 0 && info.si_pid() != 0
            };
            if reported {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not stop within {DEADLINE:?} of SIGSTOP",
                    self.what,
                    self.pid
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// True if the child has exited but is still a zombie; leaves it unreaped.
    fn exited_unreaped(&self) -> bool {
        // SAFETY: siginfo_t is plain old data, valid when zeroed; waitid(2) only writes into
        // it. WNOWAIT leaves the child unreaped, so its pid stays ours.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            rc == 0 && info.si_pid() != 0
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
