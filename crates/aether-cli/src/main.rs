//! `aether`: the AetherFS command-line client.
//!
//! This release carries `aether dev` (the whole system in one process); the session verbs of
//! design §7 arrive with the client issue.

use aether_server::{run, shutdown_signal, telemetry, CommonArgs, DevCommand, Service};
use clap::{Parser, Subcommand};

/// AetherFS command-line client.
#[derive(Debug, Parser)]
#[command(name = "aether", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system in one process on embedded defaults.
    ///
    /// Example: aether dev --data ./aether-data --listen 127.0.0.1:7600
    Dev {
        #[command(flatten)]
        dev: DevCommand,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dev { dev, common } => {
            let _telemetry = telemetry::init("dev");
            let shutdown = shutdown_signal(common.exit_on_stdin_close);
            run(Service::Dev(dev), common, shutdown).await
        }
    }
}
