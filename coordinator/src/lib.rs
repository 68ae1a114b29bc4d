//! lorasweep coordinator: a gRPC server (services `Sweeps`, `Workers` and `Artifacts` of
//! `lorasweep.v1`) that keeps sweeps, jobs, leases, loss curves, artifacts and what happened
//! (attempts, events, workers' job logs) in SQLite, and pauses a sweep whose jobs all fail alike
//! (fail-fast).
//!
//! Writes are funnelled through one writer task (see `store::writer`), which batches them into
//! transactions and answers only after the commit, so an acknowledged call is durable. Leases are
//! fenced by their attempt number; a reaper requeues jobs whose lease expired.
//!
//! # Layout
//! - [`config`]: command-line flags ([`Cli`]) and the validated [`Config`].
//! - [`bootstrap`]: flags → checked address → bound listeners → [`serve_on`], for
//!   both binaries that start a coordinator.
//! - [`data_dir`]: the data directory's lock and its local-filesystem check.
//! - [`clock`]: [`Clock`], with [`SystemClock`] and the tests' [`ManualClock`].
//! - [`error`]: [`Error`], the one error type.
//! - `store`: every SQL statement, and the writer task; [`Durability`].
//! - `grpc`: the three services, paging and streaming of answers that grow with the data, and
//!   the mapping of errors onto gRPC status codes.
//! - `reaper`: requeues expired leases.
//! - [`auth`]: the admin and worker bearer tokens, checked in a layer before every call.
//! - [`limits`]: the size limits of what is accepted.
//! - [`metrics`]: Prometheus counters and the `/metrics` endpoint.
//! - [`http`]: the read-only web dashboard (`--http`), rendered from the store.
//!
//! The standard gRPC health protocol (`grpc.health.v1.Health`) is served on the main port,
//! without tokens, and optionally alone on a plaintext port ([`Listeners::health`]).

pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod data_dir;
pub mod error;
mod grpc;
pub mod http;
pub mod limits;
pub mod metrics;
mod reaper;
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Cli, Config, TlsIdentity};
pub use error::Error;
pub use store::{DB_FILE, Durability, logs::MAX_LOG_BYTES_PER_JOB};

use std::{net::SocketAddr, sync::Arc};

use lorasweep_proto::pb::{
    artifacts_server::ArtifactsServer, sweeps_server::SweepsServer, workers_server::WorkersServer,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::server::NamedService;
use tonic::transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

const SWEEPS: &str = <SweepsServer<grpc::sweeps::SweepsService> as NamedService>::NAME;
const WORKERS: &str = <WorkersServer<grpc::workers::WorkersService> as NamedService>::NAME;
const ARTIFACTS: &str = <ArtifactsServer<grpc::artifacts::ArtifactsService> as NamedService>::NAME;

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

/// The sockets a coordinator serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: the services, behind tokens and TLS when configured, and the health protocol.
    pub grpc: TcpListener,
    /// Prometheus `GET /metrics` (plain HTTP, no auth).
    pub metrics: Option<TcpListener>,
    /// The gRPC health protocol alone, plaintext and without tokens, for probes.
    pub health: Option<TcpListener>,
    /// The web dashboard ([`http`]): plain HTTP, behind the tokens when any is configured.
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// Only the gRPC listener.
    pub fn grpc(grpc: TcpListener) -> Self {
        Self { grpc, metrics: None, health: None, http: None }
    }
}

/// [`serve_on`] with only the gRPC listener.
///
/// # Errors
/// As [`serve_on`].
pub async fn serve(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    serve_on(Listeners::grpc(listener), config, shutdown).await
}

/// [`serve_on`] with the gRPC and metrics listeners.
///
/// # Errors
/// As [`serve_on`].
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    serve_on(Listeners { metrics, ..Listeners::grpc(listener) }, config, shutdown).await
}

/// Takes the data directory ([`data_dir`]: local disk, one coordinator), opens the database in it
/// (applying migrations), then serves until `shutdown` is cancelled. On shutdown the health
/// protocol turns NOT_SERVING, it stops accepting calls, lets calls in flight finish, drains the
/// writer and returns.
///
/// Every call passes [`auth`] first; with `config.tls` the connection is TLS.
///
/// # Errors
/// [`Error::Unsafe`] (before anything is opened) if [`check_exposure`] refuses the address or the
/// TLS identity is unusable; [`Error::NotADirectory`], [`Error::NetworkFilesystem`],
/// [`Error::DataDirLocked`], [`Error::DataDir`], [`Error::Database`] or [`Error::Migrate`] if the
/// database cannot be opened; [`Error::Transport`] if serving fails.
pub async fn serve_on(listeners: Listeners, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let Listeners { grpc: listener, metrics: metrics_listener, health: health_listener, http: http_listener } =
        listeners;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Unsafe(format!("cannot tell which address the listener is bound to: {e}")))?;
    check_exposure(addr, &config)?;
    if let Some(l) = &http_listener {
        let http_addr = l
            .local_addr()
            .map_err(|e| Error::Unsafe(format!("cannot tell which address the dashboard is bound to: {e}")))?;
        http::check_exposure(http_addr, &config.tokens)?;
    }
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::Unsafe(format!("--tls-cert/--tls-key are unusable: {e}")))?;
    }
    let _data_dir = data_dir::prepare(&config.data_dir, config.allow_network_fs)?;
    let tracker = TaskTracker::new();
    // Our own child token: background tasks stop when serving ends for any reason.
    let stop = shutdown.child_token();
    let store = store::Store::open(&config.store_options(), &tracker).await?;
    let (health, health_service) = tonic_health::server::health_reporter();
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
    if let Some(listener) = http_listener {
        tracker.spawn(http::serve(listener, store.clone(), Arc::new(config.tokens.clone()), stop.clone()));
    }
    if let Some(listener) = health_listener {
        info!(addr = ?listener.local_addr().ok(), "gRPC health serving (plaintext, no tokens)");
        let service = health_service.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let served = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                warn!(cause = %e, "the health listener failed");
            }
        });
    }
    set_health(&health, ServingStatus::Serving).await;
    {
        let (health, stop) = (health.clone(), stop.clone());
        tracker.spawn(async move {
            stop.cancelled().await;
            set_health(&health, ServingStatus::NotServing).await;
        });
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
        .add_service(health_service)
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

/// Sets the overall status ("") and each service's.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in ["", SWEEPS, WORKERS, ARTIFACTS] {
        health.set_service_status(service, status).await;
    }
}
