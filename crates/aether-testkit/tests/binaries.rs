//! Locating built binaries. One test per file: it sets AETHER_BIN_DIR, which would race with
//! other tests reading the environment.

use std::os::unix::fs::PermissionsExt;

use aether_testkit::{aether_cli_path, aetherd_path, free_port};

#[test]
fn binaries_are_found_in_aether_bin_dir_or_explained() -> anyhow::Result<()> {
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

    let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50, "free_port must not repeat itself");
    Ok(())
}
