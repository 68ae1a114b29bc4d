//! `lorasweep-worker`: parse flags, set up tracing, run the daemon until ctrl-c or SIGTERM.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use lorasweep_worker::{Config, WorkerCli};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = WorkerCli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = Config::new(&cli.coordinator, cli.args)?.with_connect(&cli.connect)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(lorasweep_worker::daemon::cancel_on_signal(shutdown.clone()));
    lorasweep_worker::run(config, shutdown).await.context("worker stopped with an error")
}
