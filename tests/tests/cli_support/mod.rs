//! Running the real `aether` binary against a real `aetherd dev`, for the cli_* tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aether_testkit::{aether_cli_path, ServiceProcess};
use serde_json::Value;
use tempfile::TempDir;

/// One `aetherd dev` and a scratch directory the CLI runs in.
pub struct Aether {
    pub server: ServiceProcess,
    _data: TempDir,
    /// The working directory of every command.
    pub work: TempDir,
    bin: PathBuf,
}

/// What one command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub raw_stdout: Vec<u8>,
}

impl Aether {
    pub async fn start() -> Aether {
        Aether::start_with(&[]).await
    }

    /// Starts `aetherd dev` with `flags` after its data directory.
    pub async fn start_with(flags: &[&str]) -> Aether {
        let data = tempfile::tempdir().unwrap();
        let mut args = vec![
            "dev".to_string(),
            "--data".into(),
            data.path().display().to_string(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let server = ServiceProcess::start(&args)
            .await
            .expect("start aetherd dev");
        Aether {
            server,
            _data: data,
            work: tempfile::tempdir().unwrap(),
            bin: aether_cli_path().expect("aether built"),
        }
    }

    /// The `aether` binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A command for `aether`, pointed at the server, in the scratch directory, with no
    /// AETHER_* setting from the test's own environment.
    pub fn command(&self) -> Command {
        self.command_for(&self.bin)
    }

    /// Like [`Aether::command`], for another program (a shell running `aether`).
    pub fn command_for(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars() {
            if key.starts_with("AETHER_") && key != "AETHER_BIN_DIR" {
                command.env_remove(key);
            }
        }
        command
            .env("AETHER_ENDPOINT", self.server.endpoint())
            .current_dir(self.work.path())
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let output = self
            .command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run aether {args:?}: {e}"));
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            raw_stdout: output.stdout,
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "aether {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// Runs a command with `-o json` that must succeed; returns its parsed output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let stdout = self.ok(&all);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("aether {all:?} printed no JSON ({e}):\n{stdout}"))
    }

    /// Runs a command that must fail with `code`; returns its stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code, code,
            "aether {args:?} exited {} instead of {code}\nstdout:\n{}\nstderr:\n{}",
            run.code, run.stdout, run.stderr
        );
        run.stderr
    }

    /// A path in the scratch directory.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.work.path().join(relative)
    }

    /// Writes a file in the scratch directory (parents created).
    pub fn write(&self, relative: &str, data: &[u8]) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// Creates a session with labels; returns its id.
    pub fn create_session(&self, labels: &[&str]) -> String {
        let mut args = vec!["session", "create"];
        for label in labels {
            args.extend(["--label", label]);
        }
        let id = self.ok(&args).trim().to_string();
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "{id:?}"
        );
        id
    }
}

pub use aether_testkit::test_bytes;

/// Every file below `root` as (relative path, bytes, mode), and every directory as
/// (relative path/, empty, 0), sorted.
pub fn snapshot(root: &Path) -> Vec<(String, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>, u32)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.push((format!("{rel}/"), Vec::new(), 0));
                walk(root, &path, out);
            } else {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                out.push((rel, std::fs::read(&path).unwrap(), mode));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A project tree under `dir` in the scratch directory: nested files, an empty directory, an
/// executable script and a file of several chunks.
pub fn make_tree(aether: &Aether, dir: &str) {
    use std::os::unix::fs::PermissionsExt;
    aether.write(
        &format!("{dir}/src/main.rs"),
        b"fn main() {\n    println!(\"hi\");\n}\n",
    );
    aether.write(&format!("{dir}/src/lib/util.rs"), b"pub fn util() {}\n");
    aether.write(&format!("{dir}/docs/guide.md"), b"# Guide\n\nRead me.\n");
    aether.write(
        &format!("{dir}/data/big.bin"),
        &test_bytes(3 * 1024 * 1024 + 77, 11),
    );
    aether.write(&format!("{dir}/run.sh"), b"#!/bin/sh\necho run\n");
    std::fs::set_permissions(
        aether.path(&format!("{dir}/run.sh")),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir_all(aether.path(&format!("{dir}/empty"))).unwrap();
}
