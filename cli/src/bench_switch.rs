//! `lorasweep bench job-switch`: the time a worker needs between two jobs, with the base model
//! resident (the daemon's case: the next job of the same sweep) and reloading it (a fresh
//! trainer: the first job, or a worker restart).
//!
//! Both cases are [`CandleTrainer::prepare`], the step `run_job` takes before training: load
//! the tokenizer and base weights (or reuse them), tokenize and pack the data (or reuse it),
//! initialise the adapters. Without `--model` the bench writes a random model at a named shape
//! into a temporary directory ([`crate::shape_model`]); data comes from the `make-tiny-data`
//! generator.
//!
//! Each repetition runs in a fresh child process (`--in-process` keeps them in this one): its
//! first job is a reload as a worker's first job or a restart pays it, its second job is the
//! resident case. The files are read through the page cache, which is warm (they were written
//! or read moments before): the figures are "reload" and "resident", not "cold disk".

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context;
use lorasweep_common::{
    JobSpec, LoraInit,
    job::{DataSpec, LoraSpec, ModelSpec, TrainSpec},
};
use lorasweep_train::{
    CandleTrainer,
    bench::peak_rss_bytes,
    local::{PrepTiming, parse_dtype},
    model::read_config,
    tiny,
};
use serde::{Deserialize, Serialize};

/// Arguments of `lorasweep bench job-switch`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchSwitchArgs {
    /// Shape of the generated model: tiny, 0.5b or 1.5b (ignored with --model).
    #[arg(long, default_value = "1.5b")]
    shape: String,
    /// Use this model directory (or hub id in the local cache) instead of generating one.
    #[arg(long)]
    model: Option<String>,
    /// Use this data directory instead of generating no_robots-format rows.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Generated training rows (the test split gets a tenth).
    #[arg(long, default_value_t = 2000)]
    rows: usize,
    /// Base dtype the trainer holds: f32 or bf16 (default: bf16, as the study; f32 for tiny).
    #[arg(long)]
    dtype: Option<String>,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Packed block length.
    #[arg(long, default_value_t = 1024)]
    max_length: usize,
    /// Repetitions (each: a fresh trainer's first job, then its next job); medians are printed.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Run every repetition in this process instead of a fresh child process each (a fresh
    /// process is what a worker's first job or a restart pays; tests use this mode).
    #[arg(long)]
    in_process: bool,
    /// Directory for the generated files (default: the system temp dir); removed afterwards.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the generated model and data (their directory is printed on stderr) to rerun with
    /// --model and --data.
    #[arg(long)]
    keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One prepared job: wall seconds around `prepare` and its own split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Sample {
    pub(crate) wall_s: f64,
    pub(crate) timing: PrepTiming,
}

/// What `bench job-switch` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SwitchReport {
    /// `tiny`, `0.5b`, `1.5b` or `model` (with `--model`).
    pub(crate) shape: String,
    pub(crate) layers: usize,
    pub(crate) vocab: usize,
    pub(crate) dtype: String,
    pub(crate) device: String,
    /// Bytes of the model directory's files (weights, config, tokenizer).
    pub(crate) model_bytes: u64,
    /// Bytes of the weight files alone.
    pub(crate) weights_bytes: u64,
    /// Seconds spent generating the model (0 with `--model`).
    pub(crate) generate_s: f64,
    /// How the page cache stood for the reads.
    pub(crate) page_cache: String,
    /// Each repetition ran in a fresh child process.
    pub(crate) fresh_process: bool,
    pub(crate) train_blocks: usize,
    pub(crate) eval_blocks: usize,
    pub(crate) lora_params: usize,
    /// A fresh trainer's first job, per repetition.
    pub(crate) cold: Vec<Sample>,
    /// The same trainer's next job (another init, lr and seed), per repetition.
    pub(crate) resident: Vec<Sample>,
    pub(crate) cold_median_s: f64,
    pub(crate) resident_median_s: f64,
    pub(crate) peak_rss_bytes: Option<u64>,
}

/// Runs the benchmark and prints its figures.
pub(crate) fn run(args: BenchSwitchArgs) -> anyhow::Result<()> {
    let r = measure(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "job switch: {} ({} layers, vocab {}), base {} on {}, r=8 q/k/v/o ({} LoRA params), {} train / {} eval blocks of {}",
        r.shape, r.layers, r.vocab, r.dtype, r.device, r.lora_params, r.train_blocks, r.eval_blocks, args.max_length
    );
    println!(
        "model on disk {} (weights {}){}",
        size(r.model_bytes),
        size(r.weights_bytes),
        if r.generate_s > 0.0 { format!(", generated in {:.1} s", r.generate_s) } else { String::new() }
    );
    println!("page cache: {}", r.page_cache);
    println!("{:<28} {:>9} {:>9} {:>9} {:>9} {:>9}", "", "tokenizer", "weights", "data", "adapters", "wall");
    for (i, (c, h)) in r.cold.iter().zip(&r.resident).enumerate() {
        let reload = if r.fresh_process { "reload (new process)" } else { "reload (new trainer)" };
        for (what, s) in [(reload, c), ("resident (next job)", h)] {
            let t = &s.timing;
            println!(
                "{:<28} {:>8.3}s {:>8.3}s {:>8.3}s {:>8.4}s {:>8.4}s",
                format!("rep {} {what}", i + 1),
                t.tokenizer_s,
                t.weights_s,
                t.data_s,
                t.adapters_s,
                s.wall_s
            );
        }
    }
    println!(
        "median between two jobs: reloading {:.3} s, resident {:.4} s ({:.0}× less), median of {} reps",
        r.cold_median_s,
        r.resident_median_s,
        r.cold_median_s / r.resident_median_s,
        r.cold.len()
    );
    println!("peak RSS {}", r.peak_rss_bytes.map_or("n/a".into(), size));
    Ok(())
}

/// Generates what is missing, then prepares two jobs per fresh trainer, `reps` times.
pub(crate) fn measure(args: &BenchSwitchArgs) -> anyhow::Result<SwitchReport> {
    anyhow::ensure!(args.reps >= 1, "--reps must be ≥ 1");
    let dtype = args.dtype.clone().unwrap_or_else(|| if args.shape == "tiny" { "f32" } else { "bf16" }.into());
    parse_dtype(&dtype)?;
    let work = match &args.work_dir {
        Some(d) => tempfile::Builder::new().prefix("lorasweep-bench-switch-").tempdir_in(d)?,
        None => tempfile::Builder::new().prefix("lorasweep-bench-switch-").tempdir()?,
    };
    let (model, shape_name, generate_s) = match &args.model {
        Some(m) => (m.clone(), "model".to_string(), 0.0),
        None => {
            let dir = work.path().join("model");
            let t0 = Instant::now();
            crate::shape_model::write(&dir, &args.shape).with_context(|| format!("writing a {} model", args.shape))?;
            (dir.display().to_string(), args.shape.clone(), t0.elapsed().as_secs_f64())
        }
    };
    let data = match &args.data {
        Some(d) => d.clone(),
        None => {
            let dir = work.path().join("data");
            tiny::write_data(&dir, 0, args.rows, (args.rows / 10).max(1))?;
            dir
        }
    };
    let model_dir = lorasweep_train::model::resolve_model_dir(&model)?;
    let cfg = read_config(&model_dir)?;
    let (model_bytes, weights_bytes) = dir_bytes(&model_dir)?;
    let job = |init, lr, seed| JobSpec {
        model: ModelSpec { path: model.clone(), dtype: dtype.clone() },
        data: DataSpec { path: data.display().to_string(), max_length: args.max_length, shuffle: true },
        lora: LoraSpec::default(),
        train: TrainSpec::default(),
        init,
        lr,
        seed,
    };
    let (mut cold, mut resident) = (Vec::new(), Vec::new());
    let (mut blocks, mut lora_params, mut peak_rss) = ((0, 0), 0, peak_rss_bytes());
    if args.in_process {
        for rep in 0..args.reps as u64 {
            let first = job(LoraInit::Standard, 1e-4, 2 * rep);
            let next = job(LoraInit::OrthoQrMatch, 2e-4, 2 * rep + 1);
            let t0 = Instant::now();
            let mut trainer = CandleTrainer::new(&args.device)?;
            let p = trainer.prepare(&first, None)?;
            cold.push(Sample { wall_s: t0.elapsed().as_secs_f64(), timing: p.timing });
            drop(p);
            let t0 = Instant::now();
            let p = trainer.prepare(&next, None)?;
            resident.push(Sample { wall_s: t0.elapsed().as_secs_f64(), timing: p.timing });
            anyhow::ensure!(p.timing.base_reused && p.timing.data_reused, "the next job reloaded what it should reuse");
            (blocks, lora_params) = ((p.data.train.len(), p.data.eval.len()), p.adapters.num_params());
        }
        peak_rss = peak_rss_bytes();
    } else {
        for _ in 0..args.reps {
            let child = in_child(args, &model, &data, &dtype)?;
            cold.extend(child.cold);
            resident.extend(child.resident);
            (blocks, lora_params) = ((child.train_blocks, child.eval_blocks), child.lora_params);
            peak_rss = peak_rss.max(child.peak_rss_bytes);
        }
    }
    if args.keep {
        eprintln!("kept {}", work.keep().display());
    }
    let median = |v: &[Sample]| {
        let mut w: Vec<f64> = v.iter().map(|s| s.wall_s).collect();
        w.sort_by(f64::total_cmp);
        w[w.len() / 2]
    };
    let page_cache = match &args.model {
        None => "warm: the model was written by this run just before".to_string(),
        Some(_) => "as found for repetition 1 (warm if the model was read recently), warm for the later ones".into(),
    };
    Ok(SwitchReport {
        shape: shape_name,
        layers: cfg.num_hidden_layers,
        vocab: cfg.vocab_size,
        dtype,
        device: args.device.clone(),
        model_bytes,
        weights_bytes,
        generate_s,
        page_cache,
        fresh_process: !args.in_process,
        train_blocks: blocks.0,
        eval_blocks: blocks.1,
        lora_params,
        cold_median_s: median(&cold),
        resident_median_s: median(&resident),
        cold,
        resident,
        peak_rss_bytes: peak_rss,
    })
}

/// One repetition in a fresh `lorasweep bench job-switch --in-process --reps 1` child, so the
/// first load pays what a first job or a restarted worker pays.
fn in_child(args: &BenchSwitchArgs, model: &str, data: &Path, dtype: &str) -> anyhow::Result<SwitchReport> {
    let exe = std::env::current_exe().context("finding the lorasweep binary for the child")?;
    let max_length = args.max_length.to_string();
    let out = std::process::Command::new(&exe)
        .args(["bench", "job-switch", "--in-process", "--reps", "1", "--json", "--model", model, "--data"])
        .arg(data)
        .args(["--dtype", dtype, "--device", &args.device, "--max-length", &max_length])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    anyhow::ensure!(out.status.success(), "the child {} failed: {}", exe.display(), out.status);
    serde_json::from_slice(&out.stdout).context("parsing the child's report")
}

/// Bytes in GB or MB, whichever reads better.
fn size(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.2} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.2} MB", bytes as f64 / 1e6)
    }
}

/// `(all files, *.safetensors)` bytes in `dir` (not recursive).
fn dir_bytes(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut all, mut weights) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::metadata(entry.path())?; // follows hub-cache symlinks
        if meta.is_file() {
            all += meta.len();
            if entry.path().extension().is_some_and(|e| e == "safetensors") {
                weights += meta.len();
            }
        }
    }
    Ok((all, weights))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchSwitchArgs,
    }

    #[test]
    fn tiny_job_switch_reuses_model_and_data() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let work = dir.path().display().to_string();
        let cli = Cli::try_parse_from([
            "job-switch",
            "--shape=tiny",
            "--rows=60",
            "--max-length=64",
            "--reps=2",
            "--in-process",
            "--work-dir",
            &work,
        ])?;
        let r = measure(&cli.args)?;
        // The report survives JSON (what --json prints).
        let json: serde_json::Value = serde_json::to_value(&r)?;
        assert_eq!(json["shape"], "tiny");
        assert_eq!(json["dtype"], "f32");
        assert_eq!((r.layers, r.vocab), (2, 512));
        assert_eq!((r.cold.len(), r.resident.len()), (2, 2));
        // tiny: 2 layers × r·(d_in + d_out) with q/o 64→64, k/v 64→32.
        assert_eq!(r.lora_params, 2 * 8 * (2 * (64 + 64) + 2 * (64 + 32)));
        for c in &r.cold {
            assert!(!c.timing.base_reused && !c.timing.data_reused, "{c:?}");
            assert!(c.timing.weights_s > 0.0 && c.timing.tokenizer_s > 0.0 && c.timing.data_s > 0.0, "{c:?}");
            assert!(c.wall_s >= c.timing.total_s(), "{c:?}");
        }
        for h in &r.resident {
            assert!(h.timing.base_reused && h.timing.data_reused, "{h:?}");
            assert_eq!((h.timing.tokenizer_s, h.timing.weights_s), (0.0, 0.0));
        }
        assert!(r.resident_median_s < r.cold_median_s, "{} vs {}", r.resident_median_s, r.cold_median_s);
        // 512 × 64 + 2 × (…) f32 parameters plus a small header and the tokenizer files.
        assert!(r.weights_bytes > 4 * 512 * 64 && r.model_bytes > r.weights_bytes);
        assert!(r.train_blocks > 0);
        // Nothing left behind in the work dir.
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        Ok(())
    }
}
