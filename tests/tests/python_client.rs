//! The polyglot path: Python stubs generated from `proto/` drive the lifecycle and the bus
//! against `aetherd dev` (clients/python/example.py).

use std::process::Command;

use aether_testkit::ServiceProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_walks_the_lifecycle() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-deps.sh (it installs grpcio and grpcio-tools there)",
        python.display()
    );
    let generate = Command::new("bash")
        .arg(root.join("clients/python/generate.sh"))
        .output()
        .expect("run generate.sh");
    assert!(
        generate.status.success(),
        "{}",
        String::from_utf8_lossy(&generate.stderr)
    );

    let data = tempfile::tempdir().unwrap();
    let dev = ServiceProcess::start(&[
        "dev".into(),
        "--data".into(),
        data.path().display().to_string(),
    ])
    .await
    .unwrap();
    let run = tokio::process::Command::new(&python)
        .arg(root.join("clients/python/example.py"))
        .arg(dev.addr().to_string())
        .output()
        .await
        .expect("run example.py");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "example.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
}
