//! Hidden `lorasweep coordinator …` and `lorasweep worker …`: the coordinator and worker daemons
//! run from the CLI binary. They exist so end-to-end tests can start, `kill -9` and restart real
//! processes through `CARGO_BIN_EXE_lorasweep` (cargo builds no other crate's binaries for a
//! crate's tests), and so one binary can stand in for all three on a small install.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Runs the coordinator until ctrl-c/SIGTERM, started as `lorasweep-coordinator` starts it.
/// Prints `listening on ADDR` once bound, so a caller that asked for port 0 learns the port.
pub(crate) async fn coordinator(cli: lorasweep_coordinator::Cli) -> anyhow::Result<()> {
    lorasweep_coordinator::bootstrap::run(cli, |addr| println!("listening on {addr}"))
        .await
        .context("coordinator failed")
}

/// Runs a worker daemon against `url` until ctrl-c/SIGTERM (or `--exit-when-idle`); returns
/// the exit status `lorasweep-worker` would (see its doc: 75 after an interrupted job).
pub(crate) async fn worker(
    url: &str,
    connect: &lorasweep_worker::ConnectArgs,
    args: lorasweep_worker::WorkerArgs,
) -> anyhow::Result<i32> {
    let config = lorasweep_worker::Config::new(url, args)?.with_connect(connect)?;
    let (soft, hard) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(lorasweep_worker::daemon::cancel_on_signals(soft.clone(), hard.clone()));
    let stopped = lorasweep_worker::daemon::run_until(config, soft, hard).await.context("worker failed")?;
    Ok(stopped.exit_code())
}
