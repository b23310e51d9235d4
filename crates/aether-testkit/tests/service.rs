//! `ServiceProcess` against a stand-in for aetherd: `python3 -c FAKE_AETHERD <service> ...`
//! speaks aetherd's startup protocol (bind `--listen`, print the ready line, exit on stdin EOF).

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use aether_testkit::ServiceProcess;
use tokio::net::TcpStream;

/// Flags: `--fail-fast` exits 3 before listening; `--ignore-stdin` keeps running after stdin
/// closes (so only the parent-death signal can end it); `--ignore-term` ignores SIGTERM.
const FAKE_AETHERD: &str = r#"
import signal, socket, sys
args = sys.argv[1:]
print("fake aetherd " + " ".join(args), file=sys.stderr, flush=True)
if "--fail-fast" in args:
    print("boom: refusing to start", file=sys.stderr, flush=True)
    sys.exit(3)
if "--ignore-term" in args:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
host, port = args[args.index("--listen") + 1].rsplit(":", 1)
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((host, int(port)))
sock.listen(16)
print("starting up", flush=True)
print(f"aetherd {args[0]} listening on {host}:{sock.getsockname()[1]}", flush=True)
if "--ignore-stdin" in args:
    while True:
        signal.pause()
sys.stdin.read()
"#;

fn python3() -> PathBuf {
    ["/usr/bin/python3", "/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join("python3"))
                .find(|path| path.exists())
        })
        .expect("python3 not found: run `apt-get install python3`")
}

async fn start_fake(flags: &[&str]) -> anyhow::Result<ServiceProcess> {
    let mut args = vec!["-c".to_owned(), FAKE_AETHERD.to_owned(), "test".to_owned()];
    args.extend(flags.iter().map(|flag| flag.to_string()));
    ServiceProcess::start_with_binary(python3(), &args).await
}

/// The process state letter from /proc (R, S, T, Z, ...), or None once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name, which may contain spaces.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Polls /proc until `pid` is gone or a zombie; false if it is still alive after 10 s.
async fn wait_dead(pid: u32) -> bool {
    for _ in 0..200 {
        if matches!(proc_state(pid), None | Some('Z')) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn start_parses_the_announced_address() -> anyhow::Result<()> {
    let service = start_fake(&[]).await?;
    assert_eq!(service.service(), "test");
    assert!(service.addr().ip().is_loopback());
    assert_ne!(service.addr().port(), 0);
    assert_eq!(service.endpoint(), format!("http://{}", service.addr()));
    TcpStream::connect(service.addr()).await?;
    assert!(service
        .stderr_tail(30)
        .contains("fake aetherd test --listen 127.0.0.1:0"));
    let stdout = std::fs::read_to_string(service.log_dir().join("stdout.log"))?;
    assert!(stdout.contains("starting up"), "{stdout}");

    let pid = service.pid();
    drop(service);
    assert_eq!(proc_state(pid), None, "drop must kill and reap the process");
    Ok(())
}

#[tokio::test]
async fn early_exit_reports_status_and_stderr() {
    let error = start_fake(&["--fail-fast"]).await.err().expect("must fail");
    let message = format!("{error:#}");
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("boom: refusing to start"), "{message}");
}

#[tokio::test]
async fn a_missing_binary_is_an_error() {
    let error = ServiceProcess::start_with_binary("/nonexistent/aetherd", &["store".to_owned()])
        .await
        .err()
        .expect("must fail");
    assert!(
        format!("{error:#}").contains("/nonexistent/aetherd"),
        "{error:#}"
    );
}

#[tokio::test]
async fn pause_resume_and_terminate() -> anyhow::Result<()> {
    let mut service = start_fake(&[]).await?;
    let pid = service.pid();
    service.pause()?;
    assert_eq!(proc_state(pid), Some('T'));
    service.resume()?;
    assert_ne!(proc_state(pid), Some('T'));

    // A paused process must still honour SIGTERM.
    service.pause()?;
    let status = service.terminate().await?;
    assert_eq!(status.signal(), Some(15), "{status}");
    assert!(
        service.pause().is_err(),
        "pausing an exited process must fail"
    );
    assert_eq!(service.terminate().await?.signal(), Some(15));
    Ok(())
}

#[tokio::test]
async fn restart_keeps_the_address() -> anyhow::Result<()> {
    let mut service = start_fake(&[]).await?;
    let (addr, old_pid) = (service.addr(), service.pid());
    service.restart().await?;
    assert_eq!(service.addr(), addr);
    assert_ne!(service.pid(), old_pid);
    assert_eq!(proc_state(old_pid), None, "the old process must be gone");
    TcpStream::connect(addr).await?;

    service.kill()?;
    assert!(TcpStream::connect(addr).await.is_err());
    service.kill()?; // idempotent
    service.restart().await?;
    TcpStream::connect(addr).await?;
    assert!(service.stderr_tail(100).contains("restarting on"));
    Ok(())
}

#[tokio::test]
async fn terminate_kills_a_process_that_ignores_sigterm() -> anyhow::Result<()> {
    // terminate() on a process that ignores SIGTERM must end in SIGKILL and an error; this
    // takes the 10 s deadline, so it also shows that the deadline is enforced.
    let mut service = start_fake(&["--ignore-term"]).await?;
    let pid = service.pid();
    let error = service.terminate().await.expect_err("SIGTERM is ignored");
    assert!(format!("{error:#}").contains("did not exit"), "{error:#}");
    assert_eq!(proc_state(pid), None);
    Ok(())
}

const HELPER_ENV: &str = "AETHER_TESTKIT_PDEATHSIG_HELPER";

/// Not a test on its own: when re-run by `children_die_with_the_test_process` with
/// `HELPER_ENV` set, starts a service that ignores stdin EOF, prints its pid, and waits to be
/// SIGKILLed. Without the variable it returns at once. Should its parent vanish instead (so
/// its stdin closes) or a minute pass, it cleans up and returns rather than linger.
#[tokio::test]
async fn pdeathsig_helper() -> anyhow::Result<()> {
    if std::env::var_os(HELPER_ENV).is_none() {
        return Ok(());
    }
    let service = start_fake(&["--ignore-stdin"]).await?;
    println!("FAKE_PID {}", service.pid());
    let (closed, stdin_closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed.send(());
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), stdin_closed).await;
    drop(service);
    Ok(())
}

#[tokio::test]
async fn children_die_with_the_test_process() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut helper = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "service::pdeathsig_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        // Held open until `helper` is dropped: if this test dies, the helper sees EOF and exits.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = helper.stdout.take().expect("piped");
    // libtest prints "test pdeathsig_helper ... " and our line may follow on the same line.
    let reader = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.split_once("FAKE_PID ")?.1.trim().parse::<u32>().ok())
    });
    let pid = tokio::time::timeout(Duration::from_secs(30), reader).await;
    let Ok(Ok(Some(pid))) = pid else {
        // Killing the helper also ends the reader (EOF) and, via the death signal, its child.
        let _ = helper.kill();
        let _ = helper.wait();
        anyhow::bail!("the helper did not report its service pid: {pid:?}");
    };
    assert!(matches!(proc_state(pid), Some(state) if state != 'Z'));

    // SIGKILL: no destructor runs in the helper, only the parent-death signal can help.
    helper.kill()?;
    helper.wait()?;
    assert!(
        wait_dead(pid).await,
        "service {pid} outlived its SIGKILLed parent"
    );
    Ok(())
}
