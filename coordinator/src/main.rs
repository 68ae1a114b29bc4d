//! `lorasweep-coordinator`: parses flags, sets up tracing and runs [`lorasweep_coordinator::bootstrap::run`]
//! until ctrl-c or SIGTERM.

use anyhow::Context;
use clap::Parser;
use lorasweep_coordinator::{Cli, bootstrap};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Daemon logs often go to files or `docker logs`; colour codes only help on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    bootstrap::run(Cli::parse(), |_| {}).await.context("coordinator failed")
}
