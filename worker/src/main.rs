//! `lorasweep-worker`: parse flags, set up tracing, run the daemon until ctrl-c or SIGTERM.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use lorasweep_worker::{Config, WorkerCli};
use tokio_util::sync::CancellationToken;

/// The trainer frees and reallocates activation-sized buffers every op; glibc hands large ones
/// back to the kernel and page-faults them in again each time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = WorkerCli::parse();
    // SAFETY: the runtime (and every other thread) starts below.
    #[allow(unsafe_code)]
    unsafe {
        lorasweep_train::cpu::configure(cli.threads);
    }
    tokio::runtime::Runtime::new().context("starting the tokio runtime")?.block_on(serve(cli))
}

async fn serve(cli: WorkerCli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = Config::new(&cli.coordinator, cli.args)?.with_connect(&cli.connect)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(lorasweep_worker::daemon::cancel_on_signal(shutdown.clone()));
    lorasweep_worker::run(config, shutdown).await.context("worker stopped with an error")
}
