//! `lorasweep bench train`: LoRA training steps at a real model shape with random in-memory
//! weights; prints tokens/s, the forward/backward/optimizer split (medians) and peak RSS.
//! The work lives in `lorasweep_train::bench`.

use anyhow::Context;
use lorasweep_common::job::LoraSpec;
use lorasweep_train::bench::{BenchOpts, run_bench};
use lorasweep_train::local::{parse_device, parse_dtype};

/// Arguments of `lorasweep bench train`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchTrainArgs {
    /// Model shape: tiny, 0.5b (Qwen2.5-0.5B) or 1.5b (Qwen2.5-1.5B).
    #[arg(long, default_value = "tiny")]
    shape: String,
    /// Keep only the first N decoder layers (the full 1.5b in f32 needs ~6 GB of weights).
    #[arg(long)]
    layers: Option<usize>,
    /// Sequence length.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Base dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    r: usize,
    /// Comma-separated LoRA targets.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj")]
    targets: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark.
pub(crate) fn run(args: BenchTrainArgs) -> anyhow::Result<()> {
    let dev = parse_device(&args.device)?;
    let opts = BenchOpts {
        shape: args.shape.clone(),
        layers: args.layers,
        seq: args.seq,
        batch: args.batch,
        steps: args.steps.max(1),
        dtype: parse_dtype(&args.dtype)?,
        lora: LoraSpec { r: args.r, alpha: 2.0 * args.r as f64, dropout: 0.0, targets: args.targets.clone() },
    };
    let r = run_bench(&opts, &dev).context("bench failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "shape {} ({} layers), {} {}, {} tokens/step, {} LoRA params, {} threads",
        r.shape, r.layers, args.dtype, args.device, r.tokens_per_step, r.lora_params, r.threads
    );
    println!(
        "median step {:.3} s = forward {:.3} s + backward {:.3} s + optimizer {:.4} s  →  {:.1} tokens/s",
        r.step_s, r.forward_s, r.backward_s, r.optimizer_s, r.tokens_per_s
    );
    println!(
        "process CPU time {} per step (user+sys, all threads; compare with wall time to see contention)",
        r.cpu_s_per_step.map_or("n/a".into(), |c| format!("{c:.2} s"))
    );
    println!(
        "peak RSS {}; losses {:?}",
        r.peak_rss_bytes.map_or("n/a".into(), |b| format!("{:.2} GB", b as f64 / 1e9)),
        r.losses.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>()
    );
    Ok(())
}
