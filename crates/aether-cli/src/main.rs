//! `aether`: the AetherFS command-line client.
//!
//! Every lifecycle verb of design §7 on `SESSION:PATH` addresses, over the Rust SDK, plus
//! `aether mount` (a session as a FUSE directory) and `aether dev` (the whole system in one
//! process).
//! Exit status: 0 ok, 1 the server refused (code and message printed), 2 usage error,
//! 3 not found.

mod address;
mod cli;
mod commands;
mod mount;
mod output;
mod progress;

use std::process::ExitCode;

use aether_client::{Client, Options};
use aether_server::{run, shutdown_signal, telemetry, Service};
use clap::Parser;

use crate::cli::{Cli, Command, Format};

/// Why a command failed, and so which exit status it gets.
#[derive(Debug)]
pub enum Failure {
    /// The command line cannot be carried out as written (exit 2).
    Usage(String),
    /// The SDK or the server refused (exit 3 for NOT_FOUND, else 1).
    Client(aether_client::Error),
    /// Anything else (exit 1).
    Other(String),
    /// stdout was closed by its reader; end quietly (exit 0).
    BrokenPipe,
}

impl Failure {
    /// An error writing to stdout.
    pub fn stdout(error: std::io::Error) -> Failure {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::BrokenPipe
        } else {
            Failure::Other(format!("cannot write to stdout: {error}"))
        }
    }

    /// An error on a local file.
    pub fn local(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Failure {
        Failure::from(aether_client::Error::Io {
            path: path.into(),
            source,
        })
    }

    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Client(e) if e.is_not_found() => 3,
            Failure::Client(_) | Failure::Other(_) => 1,
            Failure::BrokenPipe => 0,
        }
    }
}

impl From<aether_client::Error> for Failure {
    fn from(error: aether_client::Error) -> Failure {
        match &error {
            aether_client::Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                Failure::BrokenPipe
            }
            _ => Failure::Client(error),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(message) => {
                write!(f, "{message}\n\nFor more information, try '--help'.")
            }
            Failure::Client(error) => write!(f, "{error}"),
            Failure::Other(message) => write!(f, "{message}"),
            Failure::BrokenPipe => Ok(()),
        }
    }
}

/// What every command gets: the connection and how to print.
pub struct Context {
    pub client: Client,
    pub format: Format,
    pub verbose: bool,
}

impl Context {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors and --help are handled by clap (exit 2 and 0).
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Dev { dev, common } => {
            let _telemetry = telemetry::init("dev");
            let shutdown = shutdown_signal(common.exit_on_stdin_close);
            run(Service::Dev(dev), common, shutdown)
                .await
                .map_err(|e| Failure::Other(format!("{e:#}")))
        }
        command => {
            let options = cli.tls.client().map(|tls| Options {
                token: cli.token,
                timeout: cli.timeout,
                retries: cli.retries,
                store_endpoint: cli.store_endpoint,
                bus_endpoint: cli.bus_endpoint,
                tls,
                ..Options::default()
            });
            let connected = match options {
                Ok(options) => Client::connect(cli.endpoint, options)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match connected {
                Ok(client) => {
                    let context = Context {
                        client,
                        format: cli.output,
                        verbose: cli.verbose,
                    };
                    commands::run(&context, command).await
                }
                Err(e) => Err(Failure::Usage(e)),
            }
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !matches!(failure, Failure::BrokenPipe) {
                eprintln!("aether: {failure}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}
