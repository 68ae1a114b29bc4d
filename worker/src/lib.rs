//! lorasweep worker: the daemon that leases jobs from the coordinator and runs them with a
//! trainer from `lorasweep-train`.
//!
//! The daemon is async (tokio, tonic); training is synchronous and runs on a blocking thread
//! behind [`lorasweep_train::Trainer`]. Nothing of the model code lives here, so editing the
//! daemon never recompiles candle code.
//!
//! # Layout
//! - [`config`]: command-line flags and the validated [`Config`].
//! - [`connect`]: the coordinator's URL, bearer token and TLS CA ([`connect::Remote`]).
//! - [`daemon`]: [`run`], the register → lease → run loop.
//! - `job`: one attempt: trainer thread, heartbeat, final report.
//! - `control`: the attempt's shared state, its stop reason and its point ledger (a leaf).
//! - `report`: the bounded point channel → client-streaming `ReportPoints` shipper.
//! - [`artifacts`]: checkpoint and adapter transfer to and from the coordinator's artifact
//!   store; [`artifacts::download_verified`] and [`ArtifactTransfer`] serve the CLI too.
//! - [`logship`]: the tracing layer and shipper that send job-scoped log records to the
//!   coordinator without ever blocking training.
//! - `rpc`: error classes, retry budgets and backoff for coordinator calls.
//! - `status`: what the worker is doing now (state, attempt, step, counters), for `metrics`.
//! - `metrics`: the `--metrics-listen` endpoint, Prometheus `/metrics` and `/healthz`.
//! - [`error`]: what can stop the daemon, [`WorkerError`].

pub mod artifacts;
pub mod config;
pub mod connect;
mod control;
pub mod daemon;
pub mod error;
mod job;
pub mod logship;
mod metrics;
mod report;
mod rpc;
mod status;

pub use artifacts::{ArtifactTransfer, TransferError};
pub use config::{Config, TrainerKind, WorkerArgs, WorkerCli};
pub use connect::{ConnectArgs, Remote};
pub use daemon::run;
pub use error::WorkerError;
