//! The candle LoRA trainer for Qwen2 (synchronous; no tokio).
//!
//! # Layout
//! - [`ops`]: autograd-safe primitives (RMSNorm, RoPE, causal softmax, cross-entropy).
//! - [`frozen`]: frozen base linears whose backward yields only the input gradient.
//! - [`model`]: the trainable Qwen2 forward (logits at every position) and checkpoint loading.
//! - [`lora`]: adapters on the projections, with seeded dropout.
//! - [`data`]: the study's data pipeline (no_robots → packed blocks) and epoch shuffling.
//! - [`init`]: the study's five LoRA inits; [`rng`]: the seeded streams they draw from.
//! - [`fused`]: fused CPU kernels with fused backward (RMSNorm, RoPE, causal softmax, SwiGLU).
//! - [`cpu`]: CPU tuning of candle's matmul threading.
//! - [`head`]: the lm_head and cross-entropy, chunked over tokens at a large vocabulary.
//! - [`optim`]: AdamW (torch semantics), gradient accumulation, norm clipping.
//! - [`schedule`]: linear warmup/decay learning rate.
//! - [`run`]: the training loop (eval cadence, accumulation, stepping, divergence).
//! - [`adapter`]: PEFT adapter directories (save and load).
//! - [`checkpoint`]: resumable training state (adapters, AdamW moments, loop position).
//! - [`generate`]: sampling text with an adapter merged into the base (`lorasweep generate`).
//! - [`bench`]: random-weight training-step benchmark at real model shapes.
//! - [`local`]: [`CandleTrainer`] (the daemon's trainer, base model resident across jobs) and [`train_local`].
//! - [`tiny`]: generated tiny Qwen2 checkpoints and no_robots-format data for tests and the demo.

pub mod adapter;
pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod frozen;
pub mod fused;
pub mod generate;
pub mod head;
pub mod init;
pub mod local;
pub mod lora;
pub mod model;
#[cfg(test)]
mod model_tests;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod tiny;

pub use local::{CandleTrainer, LocalOpts, train_local};
