//! `aetherd`: the AetherFS server. See the crate docs of `aether_server`.

use aether_server::{run, shutdown_signal, telemetry, CommonArgs, Service};
use clap::Parser;

/// AetherFS server: run one service, or all of them with `aetherd dev`.
#[derive(Debug, Parser)]
#[command(name = "aetherd", version, about)]
struct Cli {
    #[command(subcommand)]
    service: Service,
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let name = match &cli.service {
        Service::Coordinator(_) => "coordinator",
        Service::Store(_) => "store",
        Service::Bus(_) => "bus",
        Service::Dev(_) => "dev",
        Service::Gc(_) => "gc",
    };
    let _telemetry = telemetry::init(name);
    let shutdown = shutdown_signal(cli.common.exit_on_stdin_close);
    run(cli.service, cli.common, shutdown).await
}
