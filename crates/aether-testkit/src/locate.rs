//! Finding the programs the testkit runs, and saying how to get them when they are missing.

use std::env;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Path of the `aetherd` binary built beside the running test: the directory of the current
/// executable, or its parent when that is `target/<profile>/deps`; or `$AETHER_BIN_DIR/aetherd`.
///
/// Err (saying to run `cargo build -p aether-server`) if it is not there.
pub fn aetherd_path() -> Result<PathBuf> {
    built_binary("aetherd", "aether-server")
}

/// Path of the `aether` CLI binary, found like [`aetherd_path`].
pub fn aether_cli_path() -> Result<PathBuf> {
    built_binary("aether", "aether-cli")
}

fn built_binary(name: &str, package: &str) -> Result<PathBuf> {
    if let Some(dir) = env::var_os("AETHER_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "{name} not built: run `cargo build -p {package}` (AETHER_BIN_DIR is set, but {} is not an executable file)",
            path.display()
        );
    }
    let exe = env::current_exe().context("cannot find the path of the running test binary")?;
    let mut dir = exe.parent().unwrap_or(Path::new("."));
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().unwrap_or(dir);
    }
    let path = dir.join(name);
    if is_executable(&path) {
        return Ok(path);
    }
    bail!(
        "{name} not built: run `cargo build -p {package}` (looked for {}; set AETHER_BIN_DIR to use another directory)",
        path.display()
    )
}

/// The repository root; tools installed by `scripts/install-deps.sh` live under `.tools/`.
pub(crate) fn workspace_root() -> PathBuf {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

pub(crate) fn etcd_path() -> Result<PathBuf> {
    find_on_path("etcd").context(
        "etcd not found on PATH: run scripts/install-deps.sh or `apt-get install etcd-server`",
    )
}

/// `$AETHER_MOTO_SERVER`, else `.tools/venv/bin/moto_server`, else `moto_server` on PATH.
pub(crate) fn moto_server_path() -> Result<PathBuf> {
    const INSTALL: &str = "run scripts/install-deps.sh or `python3 -m venv .tools/venv && .tools/venv/bin/pip install 'moto[server]>=5,<6'`";
    if let Some(path) = env::var_os("AETHER_MOTO_SERVER") {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "moto_server not found: AETHER_MOTO_SERVER is set, but {} is not an executable file; unset it and {INSTALL}",
            path.display()
        );
    }
    let venv = workspace_root().join(".tools/venv/bin/moto_server");
    if is_executable(&venv) {
        return Ok(venv);
    }
    find_on_path("moto_server").with_context(|| {
        format!(
            "moto_server not found (not in $AETHER_MOTO_SERVER, {}, or on PATH): {INSTALL}",
            venv.display()
        )
    })
}

/// `$AETHER_S3S_FS`, else `s3s-fs` on PATH, else `$CARGO_HOME/bin/s3s-fs` (default
/// `~/.cargo/bin`), where `cargo install` puts it.
pub(crate) fn s3s_fs_path() -> Result<PathBuf> {
    const INSTALL: &str =
        "run `cargo install s3s-fs@0.14.1 --locked --features binary` (or scripts/install-deps.sh)";
    if let Some(path) = env::var_os("AETHER_S3S_FS") {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "s3s-fs not found: AETHER_S3S_FS is set, but {} is not an executable file; unset it and {INSTALL}",
            path.display()
        );
    }
    if let Some(path) = find_on_path("s3s-fs") {
        return Ok(path);
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    if let Some(path) = cargo_home.map(|home| home.join("bin/s3s-fs")) {
        if is_executable(&path) {
            return Ok(path);
        }
    }
    bail!("s3s-fs not found (not in $AETHER_S3S_FS, on PATH, or in $CARGO_HOME/bin): {INSTALL}")
}

/// The first executable file called `name` in a directory of `$PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
