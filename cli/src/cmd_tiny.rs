//! `lorasweep make-tiny-model` / `make-tiny-data`: generated checkpoints and data for tests and
//! the demo, so nothing needs the model hub. The generators live in
//! `lorasweep_train::tiny`.

use std::path::PathBuf;

use anyhow::Context;
use lorasweep_train::tiny::{self, TinyModelConfig};

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
    println!("wrote {} ({} rows) and {} ({} rows)", train.display(), args.train, test.display(), args.test);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct ModelCli {
        #[command(flatten)]
        args: MakeTinyModelArgs,
    }

    #[derive(Debug, Parser)]
    struct DataCli {
        #[command(flatten)]
        args: MakeTinyDataArgs,
    }

    #[test]
    fn flags_reach_the_generators() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let model = dir.path().join("model");
        let cli = ModelCli::try_parse_from([
            "make-tiny-model".as_ref(),
            model.as_os_str(),
            "--vocab=300".as_ref(),
            "--hidden=32".as_ref(),
            "--layers=1".as_ref(),
            "--heads=2".as_ref(),
            "--kv-heads=1".as_ref(),
            "--intermediate=48".as_ref(),
            "--max-positions=256".as_ref(),
        ])?;
        run_model(cli.args)?;
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json"))?)?;
        assert_eq!(config["vocab_size"], 300);
        assert_eq!(config["hidden_size"], 32);
        assert_eq!(config["num_hidden_layers"], 1);
        assert_eq!(config["num_attention_heads"], 2);
        assert_eq!(config["num_key_value_heads"], 1);
        assert_eq!(config["intermediate_size"], 48);
        assert_eq!(config["max_position_embeddings"], 256);
        assert!(model.join("model.safetensors").is_file());

        let data = dir.path().join("data");
        let cli = DataCli::try_parse_from([
            "make-tiny-data".as_ref(),
            data.as_os_str(),
            "--train=12".as_ref(),
            "--test=3".as_ref(),
            "--seed=9".as_ref(),
        ])?;
        run_data(cli.args)?;
        let lines = |f: &str| -> anyhow::Result<usize> { Ok(std::fs::read_to_string(data.join(f))?.lines().count()) };
        assert_eq!((lines("train.jsonl")?, lines("test.jsonl")?), (12, 3));

        let bad = ModelCli::try_parse_from(["make-tiny-model".as_ref(), model.as_os_str(), "--kv-heads=3".as_ref()])?;
        let err = run_model(bad.args).expect_err("3 kv heads do not divide 4 heads");
        assert!(format!("{err:#}").contains("kv_heads 3"), "{err:#}");
        Ok(())
    }
}
