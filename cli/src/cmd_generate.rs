//! `lorasweep generate --model DIR [--adapter DIR] "prompt"`: sample text from a base model with
//! a PEFT adapter merged in (candle-transformers' Qwen2 with a KV cache).

use std::path::PathBuf;

use anyhow::Context;
use lorasweep_train::generate::{GenerateOpts, generate};
use lorasweep_train::local::{parse_device, parse_dtype};
use lorasweep_train::model::resolve_model_dir;

/// Arguments of `lorasweep generate`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// The base model: a directory with `config.json`, safetensors and `tokenizer.json`, or a
    /// hub id already in the local HF cache.
    #[arg(long)]
    model: String,
    /// A PEFT adapter directory (e.g. from `lorasweep adapter`) to merge into the base.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The prompt, tokenised as given (no chat template).
    prompt: String,
    /// Most tokens to generate (fewer if the model emits EOS).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling threshold (with a temperature above 0).
    #[arg(long)]
    top_p: Option<f64>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Base weights dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

/// Generates and prints the continuation.
pub(crate) fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let dev = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let dir = resolve_model_dir(&args.model)?;
    let opts = GenerateOpts {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    let text = generate(&dir, args.adapter.as_deref(), &args.prompt, dtype, &dev, &opts)
        .with_context(|| format!("generating with {}", dir.display()))?;
    println!("{text}");
    Ok(())
}
