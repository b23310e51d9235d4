//! Locating binaries and dependencies. One test in this file: it changes environment variables
//! (AETHER_BIN_DIR, PATH, AETHER_MOTO_SERVER, AETHER_S3S_FS), which would race with other tests reading them.

use std::os::unix::fs::PermissionsExt;

use aether_testkit::{
    aether_cli_path, aetherd_path, free_port, Etcd, EtcdCluster, S3Kind, S3Server,
};

#[tokio::test]
async fn binaries_and_dependencies_are_found_or_explained() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::env::set_var("AETHER_BIN_DIR", dir.path());

    let error = aetherd_path().expect_err("the directory is empty");
    assert!(
        error
            .to_string()
            .starts_with("aetherd not built: run `cargo build -p aether-server`"),
        "{error}"
    );
    let error = aether_cli_path().expect_err("the directory is empty");
    assert!(
        error
            .to_string()
            .starts_with("aether not built: run `cargo build -p aether-cli`"),
        "{error}"
    );

    let aetherd = dir.path().join("aetherd");
    std::fs::write(&aetherd, "#!/bin/sh\n")?;
    std::fs::set_permissions(&aetherd, std::fs::Permissions::from_mode(0o755))?;
    assert_eq!(aetherd_path()?, aetherd);

    std::env::remove_var("AETHER_BIN_DIR");
    // Without the variable the answer depends on what is built; either way it names the path.
    match aetherd_path() {
        Ok(path) => assert!(path.ends_with("aetherd")),
        Err(error) => assert!(error.to_string().contains("cargo build -p aether-server")),
    }

    // A missing dependency fails with install instructions; it never skips.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::set_var("PATH", dir.path());
    let etcd = Etcd::start().await.err().expect("etcd is not on PATH");
    let cluster = EtcdCluster::start(3)
        .await
        .err()
        .expect("etcd is not on PATH");
    std::env::set_var("PATH", &path);
    for error in [etcd, cluster] {
        assert_eq!(
            error.to_string(),
            "etcd not found on PATH: run scripts/install-deps.sh or `apt-get install etcd-server`"
        );
    }
    std::env::set_var("AETHER_MOTO_SERVER", dir.path().join("moto_server"));
    let moto = S3Server::start()
        .await
        .err()
        .expect("AETHER_MOTO_SERVER is wrong");
    std::env::remove_var("AETHER_MOTO_SERVER");
    let message = moto.to_string();
    assert!(message.starts_with("moto_server not found"), "{message}");
    assert!(message.contains("scripts/install-deps.sh"), "{message}");

    std::env::set_var("AETHER_S3S_FS", dir.path().join("s3s-fs"));
    let s3s_fs = S3Server::start_with(S3Kind::S3sFs)
        .await
        .err()
        .expect("AETHER_S3S_FS is wrong");
    std::env::remove_var("AETHER_S3S_FS");
    let message = s3s_fs.to_string();
    assert!(message.starts_with("s3s-fs not found"), "{message}");
    assert!(
        message.contains("cargo install s3s-fs@0.14.1 --locked --features binary"),
        "{message}"
    );

    let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50, "free_port must not repeat itself");
    Ok(())
}
