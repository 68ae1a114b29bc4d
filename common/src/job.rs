//! One job's full specification ([`JobSpec`]) and the loss points it produces.
//!
//! A sweep expands into one `JobSpec` per (init, lr, seed) cell; the worker needs nothing else
//! to run it. Defaults reproduce the study (ml-spec §1.2–§1.5, §7).

use serde::{Deserialize, Serialize};

use crate::LoraInit;

/// Which curve a loss point belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Series {
    /// Training loss, one point per optimizer step (mean over its micro-batches).
    Train,
    /// Eval loss (token-mean over the eval split), at micro-batch indices `k * eval_every` and at the end.
    Eval,
}

impl Series {
    /// The wire/database name.
    pub fn name(self) -> &'static str {
        match self {
            Series::Train => "train",
            Series::Eval => "eval",
        }
    }
}

/// One point of a loss curve. `(job, series, step)` identifies it; reports are idempotent on that key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    /// Train or eval.
    pub series: Series,
    /// Train: optimizer step (1-based). Eval: micro-batch index at which it ran (0 = before any update).
    pub step: u64,
    /// The loss value (may be NaN/inf for a diverged run).
    pub loss: f64,
}

/// Where the base model comes from and in what precision to hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// A directory holding `config.json`, `model.safetensors` (or a sharded index) and
    /// `tokenizer.json`, or a hub id resolved through the local Hugging Face cache.
    pub path: String,
    /// Base weight dtype: `f32` or `bf16`. Adapters are always f32.
    pub dtype: String,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self { path: "Qwen/Qwen2.5-1.5B-Instruct".into(), dtype: "bf16".into() }
    }
}

/// The training data and how it is packed (ml-spec §1.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSpec {
    /// A directory in the hub layout (`data/train-*.parquet`, `data/test-*.parquet`), one with
    /// `train.jsonl`/`test.jsonl`, or a hub id resolved through the local Hugging Face cache.
    pub path: String,
    /// Packed block length in tokens.
    pub max_length: usize,
    /// Shuffle the training blocks each epoch (deterministic per seed and epoch).
    pub shuffle: bool,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self { path: "HuggingFaceH4/no_robots".into(), max_length: 1024, shuffle: true }
    }
}

/// LoRA placement and shape (ml-spec §1.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSpec {
    /// Rank.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the LoRA input during training.
    pub dropout: f64,
    /// Projection names that get an adapter (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`).
    pub targets: Vec<String>,
}

impl Default for LoraSpec {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
        }
    }
}

/// Optimisation and evaluation settings (ml-spec §1.4–§1.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    /// Sequences per micro-batch.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Passes over the training blocks.
    pub epochs: usize,
    /// Stop after this many optimizer steps (0 = only the initial eval and adapter; absent = no cap).
    pub max_steps: Option<u64>,
    /// Evaluate every this many micro-batches (and once at the end).
    pub eval_every: u64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Fraction of optimizer steps spent in linear warmup (`int(ratio * T)`).
    pub warmup_ratio: f64,
    /// Global L2 gradient-norm clip.
    pub max_grad_norm: f64,
    /// Save a checkpoint every this many optimizer steps (0 = never).
    pub checkpoint_every: u64,
    /// A loss above this (or NaN/inf) marks the job diverged.
    pub divergence_threshold: f64,
    /// Stop a job as soon as it diverges instead of finishing the epoch.
    pub early_stop_on_divergence: bool,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            micro_batch: 4,
            grad_accum: 4,
            epochs: 1,
            max_steps: None,
            eval_every: 40,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            checkpoint_every: 0,
            divergence_threshold: 6.0,
            early_stop_on_divergence: false,
        }
    }
}

/// Everything a worker needs to run one job: the sweep's shared settings plus this cell's
/// `(init, lr, seed)`. Serialised as JSON on the wire and in the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Base model.
    pub model: ModelSpec,
    /// Data and packing.
    pub data: DataSpec,
    /// Adapter shape.
    pub lora: LoraSpec,
    /// Optimisation.
    pub train: TrainSpec,
    /// This cell's init.
    pub init: LoraInit,
    /// This cell's peak learning rate.
    pub lr: f64,
    /// This cell's seed (init, dropout and shuffle all derive from it).
    pub seed: u64,
}
