//! Hidden `lorasweep coordinator …` and `lorasweep worker …`: the coordinator and worker daemons
//! run from the CLI binary. They exist so end-to-end tests can start, `kill -9` and restart real
//! processes through `CARGO_BIN_EXE_lorasweep` (cargo builds no other crate's binaries for a
//! crate's tests), and so one binary can stand in for all three on a small install.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Runs the coordinator until ctrl-c/SIGTERM. Prints `listening on ADDR` once bound, so a caller
/// that asked for port 0 learns the port.
pub(crate) async fn coordinator(cli: lorasweep_coordinator::Cli) -> anyhow::Result<()> {
    let (listen, metrics_listen) = (cli.listen, cli.metrics_listen);
    let config = lorasweep_coordinator::Config::try_from(cli)?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let metrics = match metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?),
        None => None,
    };
    println!("listening on {}", listener.local_addr().context("reading the bound address")?);
    let shutdown = CancellationToken::new();
    tokio::spawn(lorasweep_worker::daemon::cancel_on_signal(shutdown.clone()));
    lorasweep_coordinator::serve_with_metrics(listener, metrics, config, shutdown).await.context("coordinator failed")
}

/// Runs a worker daemon against `url` until ctrl-c/SIGTERM.
pub(crate) async fn worker(
    url: &str,
    connect: &lorasweep_worker::ConnectArgs,
    args: lorasweep_worker::WorkerArgs,
) -> anyhow::Result<()> {
    let config = lorasweep_worker::Config::new(url, args)?.with_connect(connect)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(lorasweep_worker::daemon::cancel_on_signal(shutdown.clone()));
    lorasweep_worker::run(config, shutdown).await.context("worker failed")
}
