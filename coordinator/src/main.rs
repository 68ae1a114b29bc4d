//! `lorasweep-coordinator`: parses flags, sets up tracing, binds, and runs
//! [`lorasweep_coordinator::serve`] until ctrl-c or SIGTERM.

use anyhow::Context;
use clap::Parser;
use lorasweep_coordinator::{Cli, Config, check_exposure, serve_with_metrics};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (listen, metrics_listen) = (cli.listen, cli.metrics_listen);
    let config = Config::try_from(cli)?;
    // Refuse before binding, so an unsafe address is never even opened; `serve` checks again.
    check_exposure(listen, &config)?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let metrics = match metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?),
        None => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    serve_with_metrics(listener, metrics, config, shutdown).await.context("coordinator failed")
}

/// Cancels `token` on ctrl-c or SIGTERM.
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot listen for SIGTERM; only ctrl-c stops the coordinator");
                let _ = ctrl_c.await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    token.cancel();
}
