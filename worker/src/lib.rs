//! lorasweep worker: the daemon that leases jobs from the coordinator, and the trainers that run them.
//!
//! # Layout
//! - [`trainer`]: the [`trainer::Trainer`] trait between the async daemon and synchronous training.
//! - [`train`]: the candle Qwen2 + LoRA trainer.

pub mod train;
pub mod trainer;
