//! The candle LoRA trainer for Qwen2 (synchronous; no tokio). Placeholder until the trainer lands.

pub mod data;
pub mod tiny;
