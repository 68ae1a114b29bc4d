//! `lorasweep train`: runs one job in this process, without a coordinator, and writes
//! `OUT/curve.json`, `OUT/summary.json` and `OUT/adapter/` (PEFT format). Unset flags take the
//! study's defaults (`lorasweep_common::job`).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lorasweep_common::job::{DataSpec, LoraSpec, ModelSpec, TrainSpec};
use lorasweep_common::{JobSpec, LoraInit, LossPoint, Series};
use lorasweep_train::Progress;
use lorasweep_train::{LocalOpts, train_local};

/// Arguments of `lorasweep train`.
#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// Model directory (config.json, model.safetensors or a sharded index, tokenizer.json) or a
    /// hub id in the local Hugging Face cache [default: Qwen/Qwen2.5-1.5B-Instruct].
    #[arg(long)]
    model: Option<String>,
    /// Data directory (`train.jsonl`/`test.jsonl` or hub-layout parquet) or a cached hub id
    /// [default: HuggingFaceH4/no_robots].
    #[arg(long)]
    data: Option<String>,
    /// LoRA init: standard, reversed, ortho-eye, ortho-qr-const, ortho-qr-match.
    #[arg(long, default_value = "standard")]
    init: LoraInit,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed (init, dropout and shuffle derive from it).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// LoRA rank [default: 8].
    #[arg(long)]
    r: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha/r [default: 16].
    #[arg(long)]
    alpha: Option<f64>,
    /// LoRA dropout [default: 0.05].
    #[arg(long)]
    dropout: Option<f64>,
    /// Comma-separated target projections [default: q_proj,k_proj,v_proj,o_proj].
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Packed block length [default: 1024].
    #[arg(long)]
    max_length: Option<usize>,
    /// Sequences per micro-batch [default: 4].
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Micro-batches per optimizer step [default: 4].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Epochs [default: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimizer steps (0: only the initial eval and adapter).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Eval every this many micro-batches (and at the end) [default: 40].
    #[arg(long)]
    eval_every: Option<u64>,
    /// A loss above this (or NaN/inf) marks the run diverged [default: 6.0].
    #[arg(long)]
    divergence_threshold: Option<f64>,
    /// Do not shuffle the training blocks.
    #[arg(long)]
    no_shuffle: bool,
    /// Start from this PEFT adapter directory instead of --init.
    #[arg(long, value_name = "DIR")]
    init_from_adapter: Option<PathBuf>,
    /// Base weight dtype: f32 or bf16 [default: bf16; use f32 on CPU].
    #[arg(long)]
    dtype: Option<String>,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output directory (created).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

impl TrainArgs {
    /// The job these flags describe.
    fn job(&self) -> JobSpec {
        let (m, d, l, t) = (ModelSpec::default(), DataSpec::default(), LoraSpec::default(), TrainSpec::default());
        JobSpec {
            model: ModelSpec {
                path: self.model.clone().unwrap_or(m.path),
                dtype: self.dtype.clone().unwrap_or(m.dtype),
            },
            data: DataSpec {
                path: self.data.clone().unwrap_or(d.path),
                max_length: self.max_length.unwrap_or(d.max_length),
                shuffle: !self.no_shuffle,
            },
            lora: LoraSpec {
                r: self.r.unwrap_or(l.r),
                alpha: self.alpha.unwrap_or(l.alpha),
                dropout: self.dropout.unwrap_or(l.dropout),
                targets: self.targets.clone().unwrap_or(l.targets),
            },
            train: TrainSpec {
                micro_batch: self.micro_batch.unwrap_or(t.micro_batch),
                grad_accum: self.grad_accum.unwrap_or(t.grad_accum),
                epochs: self.epochs.unwrap_or(t.epochs),
                max_steps: self.max_steps.or(t.max_steps),
                eval_every: self.eval_every.unwrap_or(t.eval_every),
                divergence_threshold: self.divergence_threshold.unwrap_or(t.divergence_threshold),
                ..t
            },
            init: self.init,
            lr: self.lr,
            seed: self.seed,
        }
    }
}

/// Collects the curve and drives a progress bar when stderr is a terminal.
struct CliProgress {
    points: Vec<LossPoint>,
    bar: Option<ProgressBar>,
}

impl Progress for CliProgress {
    fn total_steps(&mut self, steps: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(steps);
        }
    }

    fn point(&mut self, point: LossPoint) {
        if let Some(bar) = &self.bar {
            match point.series {
                Series::Train => {
                    bar.set_position(point.step);
                    bar.set_message(format!("train {:.4}", point.loss));
                }
                Series::Eval => bar.println(format!("eval @ micro-batch {}: {:.4}", point.step, point.loss)),
            }
        }
        self.points.push(point);
    }

    fn cancelled(&self) -> bool {
        false
    }
}

fn series(points: &[LossPoint], s: Series) -> Vec<(u64, f64)> {
    points.iter().filter(|p| p.series == s).map(|p| (p.step, p.loss)).collect()
}

/// Runs one job locally.
pub(crate) fn run(args: TrainArgs) -> anyhow::Result<()> {
    let job = args.job();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:40}] step {pos}/{len} {msg} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let mut progress = CliProgress { points: Vec::new(), bar };
    let opts = LocalOpts {
        device: args.device.clone(),
        init_from_adapter: args.init_from_adapter.clone(),
        save_adapter: Some(args.out.join("adapter")),
    };
    let out = train_local(&job, &opts, &mut progress).context("training failed")?;
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    let curve = serde_json::json!({
        "train": series(&progress.points, Series::Train),
        "eval": series(&progress.points, Series::Eval),
    });
    let write = |name: &str, v: &serde_json::Value| -> anyhow::Result<()> {
        let path = args.out.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(v)? + "\n").with_context(|| path.display().to_string())
    };
    write("curve.json", &curve)?;
    let summary = serde_json::json!({
        "final_eval_loss": out.final_eval_loss,
        "diverged": out.diverged,
        "tokens": out.tokens,
        "seconds": out.seconds,
        "tokens_per_s": out.tokens as f64 / out.seconds.max(1e-9),
        "optimizer_steps": series(&progress.points, Series::Train).len(),
        "job": job,
    });
    write("summary.json", &summary)?;
    println!(
        "final eval loss {} ({} tokens in {:.1} s, {:.0} tokens/s){}; wrote {}",
        out.final_eval_loss.map_or("-".into(), |l| format!("{l:.4}")),
        out.tokens,
        out.seconds,
        out.tokens as f64 / out.seconds.max(1e-9),
        if out.diverged { ", DIVERGED" } else { "" },
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: TrainArgs,
    }

    #[test]
    fn unset_flags_take_the_study_defaults_and_set_ones_override() {
        let w = Wrap::parse_from(["x", "--out", "o"]);
        let job = w.args.job();
        assert_eq!(job.lora, LoraSpec::default());
        assert_eq!(job.train, TrainSpec::default());
        assert_eq!(job.model, ModelSpec::default());
        assert_eq!(job.data, DataSpec::default());
        assert_eq!((job.init, job.seed), (LoraInit::Standard, 42));

        let w = Wrap::parse_from([
            "x",
            "--out",
            "o",
            "--init",
            "ortho-eye",
            "--targets",
            "q_proj,up_proj",
            "--r",
            "4",
            "--no-shuffle",
            "--max-steps",
            "0",
            "--dtype",
            "f32",
        ]);
        let job = w.args.job();
        assert_eq!(job.init, LoraInit::OrthoEye);
        assert_eq!(job.lora.targets, vec!["q_proj".to_string(), "up_proj".to_string()]);
        assert_eq!((job.lora.r, job.data.shuffle, job.train.max_steps), (4, false, Some(0)));
        assert_eq!(job.model.dtype, "f32");
    }
}
