//! lorasweep coordinator: a gRPC server (services `Sweeps` and `Workers` of `lorasweep.v1`) that
//! keeps sweeps, jobs, leases and loss curves in SQLite.
//!
//! Writes are funnelled through one writer task (see `store::writer`), which batches them into
//! transactions and answers only after the commit, so an acknowledged call is durable. Leases are
//! fenced by their attempt number; a reaper requeues jobs whose lease expired.
//!
//! # Layout
//! - [`config`]: command-line flags ([`Cli`]) and the validated [`Config`].
//! - [`bootstrap`]: flags → checked address → bound listeners → [`serve_with_metrics`], for
//!   both binaries that start a coordinator.
//! - [`clock`]: [`Clock`], with [`SystemClock`] and the tests' [`ManualClock`].
//! - [`error`]: [`Error`], the one error type.
//! - `store`: every SQL statement, and the writer task; [`Durability`].
//! - `grpc`: the two services and the mapping of errors onto gRPC status codes.
//! - `reaper`: requeues expired leases.
//! - [`auth`]: the admin and worker bearer tokens, checked in a layer before every call.
//! - [`limits`]: the size limits of what is accepted.
//! - [`metrics`]: Prometheus counters and the `/metrics` endpoint.

pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod error;
mod grpc;
pub mod limits;
pub mod metrics;
mod reaper;
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Cli, Config, TlsIdentity};
pub use error::Error;
pub use store::{DB_FILE, Durability};

use std::{net::SocketAddr, sync::Arc};

use lorasweep_proto::pb::{
    artifacts_server::ArtifactsServer, sweeps_server::SweepsServer, workers_server::WorkersServer,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tracing::{info, warn};

/// Refuses an address other hosts can reach when no token is configured, unless the operator
/// said `insecure`: a coordinator hands out work and takes sweeps from whoever can connect.
///
/// # Errors
/// [`Error::Unsafe`] naming the address and the flags that fix it.
pub fn check_exposure(addr: SocketAddr, config: &Config) -> Result<(), Error> {
    if config.tokens.is_open() && !addr.ip().is_loopback() {
        if config.insecure {
            warn!(%addr, "serving without tokens on a non-loopback address (--insecure)");
        } else {
            return Err(Error::Unsafe(format!(
                "{addr} is reachable from other hosts and no token is configured; give \
                 --admin-token-file and --worker-token-file (or LORASWEEP_ADMIN_TOKEN/LORASWEEP_WORKER_TOKEN), \
                 listen on 127.0.0.1, or pass --insecure"
            )));
        }
    }
    if !config.tokens.is_open() && config.tls.is_none() && !addr.ip().is_loopback() {
        warn!(%addr, "tokens travel in plaintext without --tls-cert/--tls-key");
    }
    Ok(())
}

/// [`serve_with_metrics`] without a metrics endpoint.
///
/// # Errors
/// As [`serve_with_metrics`].
pub async fn serve(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    serve_with_metrics(listener, None, config, shutdown).await
}

/// Opens the database in `config.data_dir` (applying migrations), then serves gRPC on `listener`
/// until `shutdown` is cancelled. On shutdown it stops accepting calls, lets calls in flight
/// finish, drains the writer and returns.
///
/// Every call passes [`auth`] first; with `config.tls` the connection is TLS. If
/// `metrics_listener` is given, Prometheus metrics are served there at `/metrics`.
///
/// # Errors
/// [`Error::Unsafe`] (before anything is opened) if [`check_exposure`] refuses the address or the
/// TLS identity is unusable; [`Error::DataDir`], [`Error::Database`] or [`Error::Migrate`] if the
/// database cannot be opened; [`Error::Transport`] if serving fails.
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Unsafe(format!("cannot tell which address the listener is bound to: {e}")))?;
    check_exposure(addr, &config)?;
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::Unsafe(format!("--tls-cert/--tls-key are unusable: {e}")))?;
    }
    let tracker = TaskTracker::new();
    // Our own child token: background tasks stop when serving ends for any reason.
    let stop = shutdown.child_token();
    let store = store::Store::open(&config.store_options(), &tracker).await?;
    // Counters shared by the handlers, the reaper, the auth layer and the endpoint.
    let metrics = Arc::new(metrics::Metrics::default());
    tracker.spawn(reaper::run(store.clone(), config.reap_interval, metrics.clone(), stop.clone()));
    let sweeps = grpc::sweeps::SweepsService {
        store: store.clone(),
        shutdown: stop.clone(),
        tracker: tracker.clone(),
        watch_interval: config.watch_interval,
    };
    let workers = grpc::workers::WorkersService {
        store: store.clone(),
        lease_ttl: config.lease_ttl,
        heartbeat_interval: config.heartbeat_interval(),
        metrics: metrics.clone(),
        max_points_per_stream: config.max_points_per_stream,
    };
    let artifacts = grpc::artifacts::ArtifactsService {
        store: store.clone(),
        dir: config.data_dir.join(grpc::artifacts::ARTIFACTS_DIR),
    };
    if let Some(listener) = metrics_listener {
        tracker.spawn(metrics::serve(listener, metrics.clone(), store.clone(), tracker.clone(), stop.clone()));
    }
    let auth = auth::AuthLayer { tokens: Arc::new(config.tokens.clone()), metrics };
    info!(
        %addr,
        data_dir = %config.data_dir.display(),
        auth = if config.tokens.is_open() { "off" } else { "tokens" },
        tls = config.tls.is_some(),
        "coordinator serving"
    );
    let served = builder
        .layer(auth)
        .add_service(SweepsServer::new(sweeps).max_decoding_message_size(limits::MAX_MESSAGE_BYTES))
        .add_service(WorkersServer::new(workers).max_decoding_message_size(limits::MAX_MESSAGE_BYTES))
        .add_service(ArtifactsServer::new(artifacts).max_decoding_message_size(limits::MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop.clone().cancelled_owned(),
        )
        .await;
    stop.cancel();
    store.close_reads().await;
    // The writer stops once the last store handle is gone, after finishing the batch at hand.
    drop(store);
    tracker.close();
    tracker.wait().await;
    info!("coordinator stopped");
    Ok(served?)
}
