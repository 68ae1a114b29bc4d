//! [`CandleTrainer`], the [`Trainer`] the worker daemon runs, and [`train_local`] for the CLI.
//!
//! The trainer keeps the loaded base model (and its tokenizer) resident across jobs while the
//! model path, dtype and device stay the same, and the packed data while the data path, block
//! length and model (tokenizer) stay the same: a sweep's 140 jobs differ only in
//! (init, lr, seed), so only the adapters are re-initialised per job.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use lorasweep_common::JobSpec;

use super::adapter;
use super::checkpoint::Checkpoint;
use super::data::{PackedData, eos_token_id, load_packed};
use super::lora::Adapters;
use super::model::{Qwen2Model, resolve_model_dir};
use super::run::train_loop_from;
use crate::trainer::{Progress, TrainError, TrainOutcome, Trainer};

/// Parses `cpu`, `cuda` or `cuda:N`.
///
/// # Errors
/// [`TrainError::Invalid`] for another name, or CUDA without the worker's `cuda` feature.
pub fn parse_device(name: &str) -> Result<Device, TrainError> {
    let cuda = |n: usize| {
        Device::new_cuda(n)
            .map_err(|e| TrainError::Invalid(format!("device {name:?}: {e} (built without the `cuda` feature?)")))
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match name.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => cuda(n),
            None => Err(TrainError::Invalid(format!("unknown device {name:?}; use cpu, cuda or cuda:N"))),
        },
    }
}

/// Parses a base dtype name (`f32`, `bf16`, `f16`).
///
/// # Errors
/// [`TrainError::Invalid`] for anything else.
pub fn parse_dtype(name: &str) -> Result<DType, TrainError> {
    match name {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(TrainError::Invalid(format!("unknown dtype {other:?}; use f32 or bf16"))),
    }
}

/// A base model held between jobs.
#[derive(Debug)]
struct Resident {
    path: String,
    dtype: DType,
    dir: PathBuf,
    model: Qwen2Model,
    tokenizer: tokenizers::Tokenizer,
    eos: u32,
}

/// The candle Qwen2 + LoRA trainer.
#[derive(Debug)]
pub struct CandleTrainer {
    device: Device,
    base: Option<Resident>,
    /// `(data path, max_length, model path)` → packed blocks.
    data: Option<((String, usize, String), Arc<PackedData>)>,
}

/// Per-run options of [`CandleTrainer::run_job`] beyond the [`JobSpec`].
#[derive(Debug, Clone, Default)]
pub struct LocalOpts {
    /// Device name (`cpu`, `cuda:N`).
    pub device: String,
    /// Start from this PEFT adapter directory instead of the job's init.
    pub init_from_adapter: Option<PathBuf>,
    /// Save the final adapter (PEFT format) here.
    pub save_adapter: Option<PathBuf>,
}

impl CandleTrainer {
    /// A trainer on `device` (`cpu`, `cuda`, `cuda:N`); nothing is loaded until the first job.
    ///
    /// # Errors
    /// [`TrainError::Invalid`] for an unknown or unavailable device.
    pub fn new(device: &str) -> Result<Self, TrainError> {
        Ok(Self { device: parse_device(device)?, base: None, data: None })
    }

    /// Loads (or reuses) the base model for `job`.
    fn base(&mut self, job: &JobSpec) -> Result<&Resident, TrainError> {
        let dtype = parse_dtype(&job.model.dtype)?;
        let reuse = self.base.as_ref().is_some_and(|b| b.path == job.model.path && b.dtype == dtype);
        if !reuse {
            self.base = None; // free the old weights before loading new ones
            let dir = resolve_model_dir(&job.model.path)?;
            let tok_path = dir.join("tokenizer.json");
            if !tok_path.is_file() {
                return Err(TrainError::Model(format!("missing {}", tok_path.display())));
            }
            let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
                .map_err(|e| TrainError::Model(format!("{}: {e}", tok_path.display())))?;
            let eos = eos_token_id(&dir, &tokenizer)?;
            let t0 = std::time::Instant::now();
            let model = Qwen2Model::load(&dir, dtype, &self.device)?;
            tracing::info!(path = %dir.display(), ?dtype, eos, seconds = t0.elapsed().as_secs_f64(), "base model loaded");
            self.base = Some(Resident { path: job.model.path.clone(), dtype, dir, model, tokenizer, eos });
        }
        self.base.as_ref().ok_or_else(|| TrainError::Model("base model not loaded".into()))
    }

    /// Runs one job: (re)uses the resident base and data, fresh adapters, the study's loop.
    ///
    /// # Errors
    /// [`TrainError`] naming the cause; [`TrainError::Cancelled`] when `progress` says so.
    pub fn run_job(
        &mut self,
        job: &JobSpec,
        init_from_adapter: Option<&Path>,
        save_adapter: Option<&Path>,
        progress: &mut dyn Progress,
    ) -> Result<TrainOutcome, TrainError> {
        self.base(job)?;
        let base = self.base.as_ref().ok_or_else(|| TrainError::Model("base model not loaded".into()))?;
        let key = (job.data.path.clone(), job.data.max_length, job.model.path.clone());
        let data = match &self.data {
            Some((k, d)) if *k == key => d.clone(),
            _ => {
                let d = Arc::new(load_packed(&job.data.path, &base.tokenizer, base.eos, job.data.max_length)?);
                self.data = Some((key, d.clone()));
                d
            }
        };
        let cfg = &base.model.cfg;
        if job.data.max_length > cfg.max_position_embeddings {
            tracing::warn!(
                max_length = job.data.max_length,
                limit = cfg.max_position_embeddings,
                "blocks exceed the model's max positions"
            );
        }
        let ads = match init_from_adapter {
            Some(dir) => adapter::load(dir, &job.lora, cfg, &self.device)?,
            None => Adapters::init(
                &job.lora,
                job.init,
                job.seed,
                cfg.num_hidden_layers,
                &|m| cfg.proj_dims(m),
                &self.device,
            )?,
        };
        tracing::info!(
            init = %job.init, lr = job.lr, seed = job.seed, model = %base.dir.display(),
            train_blocks = data.train.len(), eval_blocks = data.eval.len(), lora_params = ads.num_params(),
            "training"
        );
        let resume = pick_checkpoint(job, &ads, progress);
        let out = train_loop_from(&base.model, &data, &ads, job, resume.as_ref(), progress)?;
        if let Some(dir) = save_adapter {
            adapter::save(dir, &ads, &job.lora, &job.model.path)?;
        }
        progress.final_adapter(super::checkpoint::adapter_artifact(&ads, &job.lora, &job.model.path)?);
        tracing::info!(final_eval_loss = ?out.final_eval_loss, diverged = out.diverged, seconds = out.seconds, "finished");
        Ok(out)
    }
}

/// The newest of `progress`'s resume candidates that parses and belongs to `job`; each rejected
/// one becomes a warning naming the step and the reason. `None`: start at step 0.
fn pick_checkpoint(job: &JobSpec, ads: &Adapters, progress: &mut dyn Progress) -> Option<Checkpoint> {
    while let Some((step, bytes)) = progress.resume_candidate() {
        let ck = Checkpoint::from_bytes(&bytes).and_then(|ck| ck.check(job, ads).map(|()| ck));
        match ck {
            Ok(ck) if ck.state.opt_step == step => return Some(ck),
            Ok(ck) => progress
                .warning(format!("checkpoint for step {step} holds step {}; not resuming from it", ck.state.opt_step)),
            Err(e) => progress.warning(format!("checkpoint at step {step} not usable ({e}); trying an older one")),
        }
    }
    None
}

impl Trainer for CandleTrainer {
    fn train(&mut self, job: &JobSpec, progress: &mut dyn Progress) -> Result<TrainOutcome, TrainError> {
        self.run_job(job, None, None, progress)
    }
}

/// Runs one job in this process (the `lorasweep train` command).
///
/// # Errors
/// As [`CandleTrainer::run_job`], plus an invalid device.
pub fn train_local(job: &JobSpec, opts: &LocalOpts, progress: &mut dyn Progress) -> Result<TrainOutcome, TrainError> {
    let mut trainer = CandleTrainer::new(if opts.device.is_empty() { "cpu" } else { &opts.device })?;
    trainer.run_job(job, opts.init_from_adapter.as_deref(), opts.save_adapter.as_deref(), progress)
}
