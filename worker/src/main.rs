//! `lorasweep-worker`: parse flags, set up tracing, run the daemon until ctrl-c or SIGTERM.
//!
//! Exit status: 0 when stopped with nothing left undone (or by `--exit-when-idle`);
//! 75 ([`daemon::EXIT_INTERRUPTED`]) when a signal interrupted a job, so the scheduler requeues
//! the worker; 3 ([`daemon::EXIT_CONFIG`]) for a configuration it cannot run with; 1 otherwise.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use lorasweep_worker::{Config, WorkerCli, WorkerError, daemon};
use tokio_util::sync::CancellationToken;

/// The trainer frees and reallocates activation-sized buffers every op; glibc hands large ones
/// back to the kernel and page-faults them in again each time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = WorkerCli::parse();
    // SAFETY: the runtime (and every other thread) starts below.
    #[allow(unsafe_code)]
    unsafe {
        lorasweep_train::cpu::configure(cli.threads);
    }
    let result =
        tokio::runtime::Runtime::new().context("starting the tokio runtime").and_then(|rt| rt.block_on(serve(cli)));
    match result {
        Ok(stopped) => std::process::ExitCode::from(stopped.exit_code() as u8),
        Err(e) => {
            eprintln!("Error: {e:?}");
            let config = e.downcast_ref::<WorkerError>().is_some_and(WorkerError::is_config);
            std::process::ExitCode::from(if config { daemon::EXIT_CONFIG as u8 } else { 1 })
        }
    }
}

async fn serve(cli: WorkerCli) -> anyhow::Result<daemon::Stopped> {
    use tracing_subscriber::{Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_filter(filter))
        // Job-scoped records go to the coordinator whatever RUST_LOG says for stderr.
        .with(lorasweep_worker::logship::layer().with_filter(LevelFilter::INFO))
        .init();
    let config = Config::new(&cli.coordinator, cli.args)?.with_connect(&cli.connect)?;
    let (soft, hard) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(daemon::cancel_on_signals(soft.clone(), hard.clone()));
    Ok(daemon::run_until(config, soft, hard).await?)
}
