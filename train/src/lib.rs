//! lorasweep-train: the candle Qwen2 + LoRA trainer, as a synchronous library.
//!
//! It owns everything a job computes (ml-spec): loading a Hugging Face Qwen2 checkpoint, the
//! LoRA adapters and the study's five inits, the no_robots data pipeline, AdamW and the
//! schedule, the training loop, the checkpoint format, PEFT adapter files, sampling, the
//! training-step benchmark and the tiny generated models and data. It knows nothing of the
//! coordinator: no async runtime, no gRPC. The worker daemon drives it through [`Trainer`] and
//! [`Progress`] on a blocking thread; the CLI calls it directly (`train`, `generate`, `bench`).
//!
//! # Layout
//! - [`trainer`]: the [`Trainer`] / [`Progress`] seam and [`TrainOutcome`]; [`error`]: [`TrainError`].
//! - [`synthetic`]: a deterministic model-free trainer with study-shaped curves (tests, demos).
//! - `ops`: autograd-safe primitives (RMSNorm, RoPE, causal softmax, cross-entropy).
//! - `frozen`: frozen base linears whose backward yields only the input gradient.
//! - [`model`]: the trainable Qwen2 forward (logits at every position) and checkpoint loading.
//! - [`lora`]: adapters on the projections, with seeded dropout.
//! - [`data`]: the study's data pipeline (no_robots → packed blocks) and epoch shuffling.
//! - `init`: the study's five LoRA inits; [`rng`]: the seeded streams they draw from.
//! - `fused`: fused CPU kernels with fused backward (RMSNorm, RoPE, causal softmax, SwiGLU).
//! - [`cpu`]: CPU tuning of candle's matmul threading.
//! - `head`: the lm_head and cross-entropy, chunked over tokens at a large vocabulary.
//! - [`optim`]: AdamW (torch semantics), gradient accumulation, norm clipping.
//! - `schedule`: linear warmup/decay learning rate.
//! - [`run`]: the training loop (eval cadence, accumulation, stepping, divergence).
//! - [`adapter`]: PEFT adapter directories (save and load); `safetensors_f32`: the one f32
//!   safetensors writer.
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
pub mod error;
mod frozen;
mod fused;
pub mod generate;
mod head;
mod init;
pub mod local;
pub mod lora;
pub mod model;
#[cfg(test)]
mod model_tests;
mod ops;
pub mod optim;
pub mod rng;
pub mod run;
mod safetensors_f32;
mod schedule;
pub mod synthetic;
pub mod tiny;
pub mod trainer;

pub use error::TrainError;
pub use local::{CandleTrainer, DeviceInfo, LocalOpts, device_info, train_local};
pub use trainer::{Progress, TrainOutcome, Trainer};
