//! `lorasweep make-tiny-model` / `make-tiny-data`: generated checkpoints and data for tests and
//! the demo, so nothing needs the model hub. The generators live in
//! `lorasweep_worker::train::tiny`.

use std::path::PathBuf;

use anyhow::Context;
use lorasweep_worker::train::tiny::{self, TinyModelConfig};

/// Arguments of `lorasweep make-tiny-model`.
#[derive(Debug, clap::Args)]
pub(crate) struct MakeTinyModelArgs {
    /// Output directory (created; existing files are overwritten).
    dir: PathBuf,
    /// Tokenizer size to train (byte-level BPE; at least 259); the model's vocab_size is at least
    /// this. The random model's loss is about ln(vocab): the default keeps it under the default
    /// divergence threshold (6.0).
    #[arg(long, default_value_t = 320)]
    vocab: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Attention (query) heads; hidden / heads must be even.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads (GQA); must divide --heads.
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// SwiGLU intermediate size.
    #[arg(long, default_value_t = 128)]
    intermediate: usize,
    /// max_position_embeddings.
    #[arg(long, default_value_t = 2048)]
    max_positions: usize,
    /// Seed of the weights and of the tokenizer's training text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Arguments of `lorasweep make-tiny-data`.
#[derive(Debug, clap::Args)]
pub(crate) struct MakeTinyDataArgs {
    /// Output directory (created); gets train.jsonl and test.jsonl in the no_robots schema.
    dir: PathBuf,
    /// Training rows.
    #[arg(long, default_value_t = 2000)]
    train: usize,
    /// Test (eval) rows.
    #[arg(long, default_value_t = 200)]
    test: usize,
    /// Seed of the generator (the test split uses a derived stream).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Writes a tiny random Qwen2 checkpoint (config, safetensors, tokenizer).
pub(crate) fn run_model(args: MakeTinyModelArgs) -> anyhow::Result<()> {
    let cfg = TinyModelConfig {
        vocab: args.vocab,
        hidden: args.hidden,
        layers: args.layers,
        heads: args.heads,
        kv_heads: args.kv_heads,
        intermediate: args.intermediate,
        max_positions: args.max_positions,
        seed: args.seed,
    };
    let summary = tiny::write_model(&args.dir, &cfg)
        .with_context(|| format!("writing a tiny model to {}", args.dir.display()))?;
    println!(
        "wrote {}: vocab_size {}, {} parameters, eos id {}",
        args.dir.display(),
        summary.vocab_size,
        summary.params,
        summary.eos_id
    );
    Ok(())
}

/// Writes synthetic no_robots-format data.
pub(crate) fn run_data(args: MakeTinyDataArgs) -> anyhow::Result<()> {
    let [train, test] = tiny::write_data(&args.dir, args.seed, args.train, args.test)
        .with_context(|| format!("writing tiny data to {}", args.dir.display()))?;
    println!(
        "wrote {} ({} rows) and {} ({} rows)",
        train.display(),
        args.train,
        test.display(),
        args.test
    );
    Ok(())
}
