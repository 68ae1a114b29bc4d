//! lorasweep worker: the daemon that leases jobs from the coordinator, and the trainers that run them.
//!
//! # Layout
//! - [`config`]: command-line flags and the validated [`Config`].
//! - [`connect`]: the coordinator's URL, bearer token and TLS CA ([`connect::Remote`]).
//! - [`daemon`]: [`run`], the register → lease → run loop.
//! - `job`: one attempt: trainer thread, heartbeat, final report.
//! - `report`: the bounded point channel → client-streaming `ReportPoints` shipper.
//! - `checkpoint`: checkpoint and adapter transfer to and from the coordinator's artifact store
//!   ([`ArtifactClient`] exposes it outside the daemon).
//! - `rpc`: error classes and backoff for coordinator calls.
//! - [`synthetic`]: a deterministic trainer with study-shaped curves, for tests and demos.
//! - [`trainer`]: the [`trainer::Trainer`] trait between the async daemon and synchronous training.
//! - [`train`]: the candle Qwen2 + LoRA trainer.
//! - [`error`]: what can stop the daemon, [`WorkerError`].

mod checkpoint;
pub mod config;
pub mod connect;
pub mod daemon;
pub mod error;
mod job;
mod report;
mod rpc;
pub mod synthetic;
pub mod train;
pub mod trainer;

pub use checkpoint::{ArtifactClient, TransferError};
pub use config::{Config, TrainerKind, WorkerArgs, WorkerCli};
pub use connect::{ConnectArgs, Remote};
pub use daemon::run;
pub use error::WorkerError;
