//! Starting a coordinator from its flags, the one way both `lorasweep-coordinator` and
//! `lorasweep coordinator` do it: validate the flags, refuse an exposed address before anything
//! is bound, bind, serve until ctrl-c or SIGTERM.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Cli, Config, Error, Listeners, check_exposure, serve_on};

/// Runs the coordinator `cli` describes until ctrl-c or SIGTERM. `on_bound` is called with the
/// gRPC address once it is bound (port 0 resolved), before serving starts.
///
/// # Errors
/// [`Error::InvalidArgument`] for bad flags, [`Error::Unsafe`] for an exposed address without
/// tokens (before binding), [`Error::Bind`] when an address cannot be bound, and whatever
/// [`serve_on`] fails with.
pub async fn run(cli: Cli, on_bound: impl FnOnce(SocketAddr)) -> Result<(), Error> {
    let (listen, metrics_listen, health_listen, http_listen) =
        (cli.listen, cli.metrics_listen, cli.health_listen, cli.http);
    let config = Config::try_from(cli)?;
    // Refuse before binding, so an unsafe address is never even opened; `serve` checks again.
    check_exposure(listen, &config)?;
    if let Some(addr) = http_listen {
        crate::http::check_exposure(addr, &config.tokens)?;
    }
    let listener = bind(listen).await?;
    let metrics = match metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let health = match health_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let http = match http_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let bound = listener.local_addr().map_err(|source| Error::Bind { addr: listen, source })?;
    if let Some(addr) = http.as_ref().and_then(|l| l.local_addr().ok()) {
        tracing::info!("dashboard at http://{addr}/");
    }
    on_bound(bound);
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    serve_on(Listeners { grpc: listener, metrics, health, http }, config, shutdown).await
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
}

/// Cancels `token` on ctrl-c or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    lorasweep_common::shutdown::signalled("coordinator").await;
    token.cancel();
}
