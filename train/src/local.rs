//! [`CandleTrainer`], the [`Trainer`] the worker daemon runs, and [`train_local`] for the CLI.
//!
//! The trainer keeps the loaded base model (and its tokenizer) resident across jobs while the
//! model path, dtype and device stay the same, and the packed data while the data path, block
//! length and model (tokenizer) stay the same: a sweep's 140 jobs differ only in
//! (init, lr, seed), so only the adapters are re-initialised per job. [`CandleTrainer::prepare`]
//! is that between-jobs step on its own, timed ([`PrepTiming`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use lorasweep_common::JobSpec;

use super::adapter;
use super::checkpoint::Checkpoint;
use super::data::{PackedData, eos_token_id, load_packed};
use super::lora::Adapters;
use super::model::{Qwen2Model, resolve_model_dir};
use super::run::train_loop_from;
use crate::{
    TrainError,
    trainer::{Progress, TrainOutcome, Trainer},
};

/// What a worker reports of its device at registration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// The GPU's name (`NVIDIA H100 80GB HBM3`), `""` on CPU.
    pub name: String,
    /// The GPU's total memory in bytes, 0 on CPU.
    pub memory_bytes: u64,
}

/// Asks the driver for the name and memory of `device` (`cpu`, `cuda`, `cuda:N`).
///
/// # Errors
/// As [`parse_device`]; a CUDA device whose driver does not answer.
pub fn device_info(device: &str) -> Result<DeviceInfo, TrainError> {
    match parse_device(device)? {
        Device::Cuda(_cuda) => {
            #[cfg(feature = "cuda")]
            {
                let ctx = _cuda.cuda_stream().context().clone();
                let driver = |e: candle_core::cuda_backend::cudarc::driver::DriverError| {
                    TrainError::Invalid(format!("device {device:?}: the CUDA driver: {e}"))
                };
                Ok(DeviceInfo {
                    name: ctx.name().map_err(driver)?,
                    memory_bytes: ctx.total_mem().map_err(driver)? as u64,
                })
            }
            #[cfg(not(feature = "cuda"))]
            Err(TrainError::Invalid(format!("device {device:?}: built without the `cuda` feature")))
        }
        _ => Ok(DeviceInfo::default()),
    }
}

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

    /// Loads (or reuses) the base model for `job`; returns the seconds spent on the tokenizer
    /// and on the weights, `None` when the resident model was reused.
    fn base(&mut self, job: &JobSpec) -> Result<Option<(f64, f64)>, TrainError> {
        let dtype = parse_dtype(&job.model.dtype)?;
        let reuse = self.base.as_ref().is_some_and(|b| b.path == job.model.path && b.dtype == dtype);
        if reuse {
            return Ok(None);
        }
        self.base = None; // free the old weights before loading new ones
        let t0 = Instant::now();
        let dir = resolve_model_dir(&job.model.path)?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(TrainError::Model(format!("missing {}", tok_path.display())));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| TrainError::Model(format!("{}: {e}", tok_path.display())))?;
        let eos = eos_token_id(&dir, &tokenizer)?;
        let t1 = Instant::now();
        let model = Qwen2Model::load(&dir, dtype, &self.device)?;
        let weights_s = t1.elapsed().as_secs_f64();
        tracing::info!(path = %dir.display(), ?dtype, eos, seconds = weights_s, "base model loaded");
        self.base = Some(Resident { path: job.model.path.clone(), dtype, dir, model, tokenizer, eos });
        Ok(Some(((t1 - t0).as_secs_f64(), weights_s)))
    }

    /// Everything a job needs before its first step: the base model and packed data (reused
    /// when the job shares them with the previous one) and fresh adapters (from `job`'s init, or
    /// `init_from_adapter`). [`CandleTrainer::run_job`] is this plus the training loop; it is
    /// public so `lorasweep bench job-switch` can time the step between two jobs on its own.
    ///
    /// # Errors
    /// [`TrainError`] naming the missing or malformed model, data or adapter.
    pub fn prepare(&mut self, job: &JobSpec, init_from_adapter: Option<&Path>) -> Result<Prepared<'_>, TrainError> {
        let loaded = self.base(job)?;
        let base = self.base.as_ref().ok_or_else(|| TrainError::Model("base model not loaded".into()))?;
        let t0 = Instant::now();
        let key = (job.data.path.clone(), job.data.max_length, job.model.path.clone());
        let (data, data_reused) = match &self.data {
            Some((k, d)) if *k == key => (d.clone(), true),
            _ => {
                let d = Arc::new(load_packed(&job.data.path, &base.tokenizer, base.eos, job.data.max_length)?);
                self.data = Some((key, d.clone()));
                (d, false)
            }
        };
        let data_s = t0.elapsed().as_secs_f64();
        let cfg = &base.model.cfg;
        if job.data.max_length > cfg.max_position_embeddings {
            tracing::warn!(
                max_length = job.data.max_length,
                limit = cfg.max_position_embeddings,
                "blocks exceed the model's max positions"
            );
        }
        let t1 = Instant::now();
        let adapters = match init_from_adapter {
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
        // Adapter init may queue device work; the figure should include it.
        self.device.synchronize()?;
        let timing = PrepTiming {
            tokenizer_s: loaded.map_or(0.0, |(t, _)| t),
            weights_s: loaded.map_or(0.0, |(_, w)| w),
            base_reused: loaded.is_none(),
            data_s,
            data_reused,
            adapters_s: t1.elapsed().as_secs_f64(),
        };
        Ok(Prepared { model: &base.model, model_dir: &base.dir, data, adapters, timing })
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
        let Prepared { model, model_dir, data, adapters: ads, .. } = self.prepare(job, init_from_adapter)?;
        tracing::info!(
            init = %job.init, lr = job.lr, seed = job.seed, model = %model_dir.display(),
            train_blocks = data.train.len(), eval_blocks = data.eval.len(), lora_params = ads.num_params(),
            "training"
        );
        let resume = pick_checkpoint(job, &ads, progress);
        let out = train_loop_from(model, &data, &ads, job, resume.as_ref(), progress)?;
        if let Some(dir) = save_adapter {
            adapter::save(dir, &ads, &job.lora, &job.model.path)?;
        }
        progress.final_adapter(super::checkpoint::adapter_artifact(&ads, &job.lora, &job.model.path)?);
        tracing::info!(final_eval_loss = ?out.final_eval_loss, diverged = out.diverged, seconds = out.seconds, "finished");
        Ok(out)
    }
}

/// What a job trains with, from [`CandleTrainer::prepare`].
#[derive(Debug)]
pub struct Prepared<'a> {
    /// The resident base model.
    pub model: &'a Qwen2Model,
    /// Its directory (resolved from the job's model path).
    pub model_dir: &'a Path,
    /// The packed blocks of both splits.
    pub data: Arc<PackedData>,
    /// This job's fresh adapters.
    pub adapters: Adapters,
    /// Where the preparation spent its time.
    pub timing: PrepTiming,
}

/// Where [`CandleTrainer::prepare`] spent its time, and what it could reuse from the previous
/// job. A reused part costs a comparison only and reports 0 (tokenizer, weights) or the lookup.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrepTiming {
    /// Seconds loading `tokenizer.json` and resolving the EOS token.
    pub tokenizer_s: f64,
    /// Seconds loading the base weights (mmap, dtype conversion, device copy).
    pub weights_s: f64,
    /// The resident base model was reused (no load).
    pub base_reused: bool,
    /// Seconds getting the packed data (reading, tokenizing and packing on a miss).
    pub data_s: f64,
    /// The cached packed data was reused.
    pub data_reused: bool,
    /// Seconds initialising the adapters (or loading `init_from_adapter`).
    pub adapters_s: f64,
}

impl PrepTiming {
    /// The whole preparation, in seconds.
    pub fn total_s(&self) -> f64 {
        self.tokenizer_s + self.weights_s + self.data_s + self.adapters_s
    }
}

/// The newest of `progress`'s resume candidates that parses and belongs to `job`; each rejected
/// one becomes a warning naming the step and the reason. `None`: start at step 0.
fn pick_checkpoint(job: &JobSpec, ads: &Adapters, progress: &mut dyn Progress) -> Option<Checkpoint> {
    while let Some((step, bytes)) = progress.resume_candidate() {
        let ck = Checkpoint::from_bytes(&bytes).and_then(|ck| ck.check(job, ads).map(|()| ck));
        match ck {
            Ok(ck) if ck.state.opt_step == step => {
                progress.resumed(step);
                return Some(ck);
            }
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

#[cfg(test)]
mod tests {
    use lorasweep_common::LoraInit;

    use super::*;
    use crate::tiny::{self, TinyModelConfig};

    /// The next job of a sweep reuses the model and the packed data and gets fresh adapters; a
    /// different block length repacks the data only, a different dtype reloads the model.
    #[test]
    fn prepare_reuses_what_the_previous_job_loaded() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (model, data) = (dir.path().join("model"), dir.path().join("data"));
        tiny::write_model(&model, &TinyModelConfig { layers: 1, ..TinyModelConfig::default() })?;
        tiny::write_data(&data, 0, 40, 8)?;
        let job = |init, seed, max_length, dtype: &str| -> anyhow::Result<JobSpec> {
            Ok(serde_json::from_value(serde_json::json!({
                "model": {"path": model.display().to_string(), "dtype": dtype},
                "data": {"path": data.display().to_string(), "max_length": max_length, "shuffle": true},
                "lora": {}, "train": {}, "init": init, "lr": 1e-4, "seed": seed
            }))?)
        };
        let a_of = |p: &Prepared<'_>| -> anyhow::Result<Vec<f32>> {
            Ok(p.adapters.list[0].a.as_tensor().flatten_all()?.to_vec1()?)
        };
        let mut trainer = CandleTrainer::new("cpu")?;
        let first = trainer.prepare(&job(LoraInit::Standard, 0, 64, "f32")?, None)?;
        let t = first.timing;
        assert!(!t.base_reused && !t.data_reused && t.weights_s > 0.0 && t.tokenizer_s > 0.0, "{t:?}");
        let (blocks, a0) = (first.data.train.len(), a_of(&first)?);
        drop(first);

        let next = trainer.prepare(&job(LoraInit::Standard, 1, 64, "f32")?, None)?;
        let t = next.timing;
        assert!(t.base_reused && t.data_reused && t.tokenizer_s == 0.0 && t.weights_s == 0.0, "{t:?}");
        assert_eq!(next.data.train.len(), blocks);
        assert_ne!(a_of(&next)?, a0, "another seed, other adapters");
        drop(next);

        let t = trainer.prepare(&job(LoraInit::Standard, 1, 32, "f32")?, None)?.timing;
        assert!(t.base_reused && !t.data_reused, "{t:?}");
        let t = trainer.prepare(&job(LoraInit::Standard, 1, 32, "bf16")?, None)?.timing;
        // The tokenizer is reloaded with the model; the data key does not include the dtype.
        assert!(!t.base_reused && t.data_reused, "{t:?}");
        Ok(())
    }
}
