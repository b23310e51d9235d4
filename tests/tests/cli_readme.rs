//! The README's CLI walk-through, run as written: the shell block between the
//! `cli-walkthrough` markers is executed by bash with `aether` on PATH, against `aetherd dev`.

use crate::cli_support;

use std::path::Path;

use cli_support::Aether;

/// The walk-through block of README.md.
fn walkthrough() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("read README.md");
    let start = text
        .find("<!-- cli-walkthrough:begin")
        .expect("README has a cli-walkthrough:begin marker");
    let end = text
        .find("<!-- cli-walkthrough:end -->")
        .expect("README has a cli-walkthrough:end marker");
    let block = &text[start..end];
    let body = block
        .split_once("```sh\n")
        .expect("the walk-through is a ```sh block")
        .1;
    body.rsplit_once("```")
        .expect("the block is closed")
        .0
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_readme_walkthrough_works_as_written() {
    let aether = Aether::start().await;
    let script = walkthrough();
    assert!(script.contains("aether session create"), "{script}");
    let bin_dir = aether.bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .env("AETHER_ENDPOINT", aether.server.endpoint())
        .env_remove("AETHER_TOKEN")
        .current_dir(aether.work.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the README walk-through failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    for expected in [
        "downloaded tree is identical",
        "refused: the session is read-only",
        "checkpoint before-edit",
        "M  project/src/main.rs",
        "D  project/docs/README.md",
        "Import the demo project",
        "closed",
    ] {
        assert!(
            stdout.contains(expected),
            "stdout lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(
        stderr.contains("FAILED_PRECONDITION"),
        "the refused write says why:\n{stderr}"
    );
    assert!(
        stderr.contains("0 sent"),
        "the second put sends nothing:\n{stderr}"
    );
}
