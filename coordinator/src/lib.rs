//! lorasweep coordinator: a gRPC server (services `Sweeps` and `Workers` of `lorasweep.v1`) that
//! keeps sweeps, jobs, leases and loss curves in SQLite.
//!
//! Writes are funnelled through one writer task (see `store::writer`), which batches them into
//! transactions and answers only after the commit, so an acknowledged call is durable. Leases are
//! fenced by their attempt number; a reaper requeues jobs whose lease expired.
//!
//! # Layout
//! - [`config`]: command-line flags ([`Cli`]) and the validated [`Config`].
//! - [`clock`]: [`Clock`], with [`SystemClock`] and the tests' [`ManualClock`].
//! - [`error`]: [`Error`], the one error type.
//! - `store`: every SQL statement, and the writer task.
//! - `grpc`: the two services and the mapping of errors onto gRPC status codes.
//! - `reaper`: requeues expired leases.

pub mod clock;
pub mod config;
pub mod error;
mod grpc;
mod reaper;
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Cli, Config, Durability};
pub use error::Error;
pub use store::DB_FILE;

use lorasweep_proto::pb::{sweeps_server::SweepsServer, workers_server::WorkersServer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Server, server::TcpIncoming};
use tracing::info;

/// Opens the database in `config.data_dir` (applying migrations), then serves gRPC on `listener`
/// until `shutdown` is cancelled. On shutdown it stops accepting calls, lets calls in flight
/// finish, drains the writer and returns.
///
/// # Errors
/// [`Error::DataDir`], [`Error::Database`] or [`Error::Migrate`] if the database cannot be
/// opened; [`Error::Transport`] if serving fails.
pub async fn serve(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let addr = listener.local_addr().ok();
    let tracker = TaskTracker::new();
    // Our own child token: background tasks stop when serving ends for any reason.
    let stop = shutdown.child_token();
    let store = store::Store::open(&config, &tracker).await?;
    tracker.spawn(reaper::run(store.clone(), config.reap_interval, stop.clone()));
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
    };
    info!(addr = ?addr, data_dir = %config.data_dir.display(), "coordinator serving");
    let served = Server::builder()
        .add_service(SweepsServer::new(sweeps))
        .add_service(WorkersServer::new(workers))
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
