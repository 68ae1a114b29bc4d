//! Domain types shared by every lorasweep crate: the LoRA inits, a job's hyperparameters
//! ([`JobSpec`]), loss points, and their conversions to and from the wire types in
//! `lorasweep-proto`.
//!
//! # Layout
//! - [`init`]: the five LoRA initialisations of the study, by name.
//! - [`job`]: [`JobSpec`] (everything a worker needs to run one job), [`LossPoint`], [`Series`].
//! - [`projection`]: [`Projection`], the seven projections an adapter can target.
//! - `shutdown` (feature `signal`): ctrl-c or SIGTERM, for the daemons.
//! - [`state`]: [`JobState`], a job's lifecycle state.
//! - [`sweep`]: [`SweepSpec`], the sweep file (TOML) and its expansion into jobs.
//! - [`convert`]: conversions to and from `lorasweep_proto::pb`.
//! - [`error`]: [`Error`], what parsing and conversion can fail with.

pub mod convert;
pub mod error;
pub mod init;
pub mod job;
pub mod projection;
#[cfg(feature = "signal")]
pub mod shutdown;
pub mod state;
pub mod sweep;

pub use error::Error;
pub use init::LoraInit;
pub use job::{JobSpec, LossPoint, Series};
pub use projection::Projection;
pub use state::JobState;
pub use sweep::SweepSpec;
