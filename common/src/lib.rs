//! Domain types shared by every lorasweep crate: the LoRA inits, a job's hyperparameters
//! ([`JobSpec`]), loss points, and their conversions to and from the wire types in
//! `lorasweep-proto`.
//!
//! # Layout
//! - [`init`]: the five LoRA initialisations of the study, by name.
//! - [`job`]: [`JobSpec`] (everything a worker needs to run one job), [`LossPoint`], [`Series`].
//! - [`error`]: [`Error`], what parsing and conversion can fail with.

pub mod error;
pub mod init;
pub mod job;

pub use error::Error;
pub use init::LoraInit;
pub use job::{JobSpec, LossPoint, Series};
