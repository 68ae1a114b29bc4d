//! The sweep file: a TOML document that names a sweep, fixes the shared settings of its jobs
//! (`[model]`, `[data]`, `[lora]`, `[train]`) and spans a `[grid]` of (init, lr, seed) cells.
//!
//! An empty file is the study itself: 5 inits × 7 lrs × 4 seeds = 140 jobs with the ml-spec §7
//! defaults. Every refusal names the source file, the key and what is allowed, because the file is
//! written by hand and the error is all a user sees of why nothing was stored.

use std::collections::HashSet;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use toml::{Table, Value};

use crate::{
    Error, JobSpec, LoraInit,
    job::{DataSpec, LoraSpec, ModelSpec, TrainSpec},
};

/// The study's peak learning rates (ml-spec §1.4).
pub const STUDY_LRS: [f64; 7] = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2];

/// The study's seeds (ml-spec §7.3).
pub const STUDY_SEEDS: [u64; 4] = [42, 43, 44, 45];

/// A grid larger than this is almost certainly a typo, and would make one submission hold the
/// coordinator's single writer for seconds.
pub const MAX_JOBS: usize = 10_000;

/// Longest sweep name: it is a label in tables, not a document.
pub const MAX_NAME_LEN: usize = 256;

/// Longest `model.path`/`data.path`: Linux's PATH_MAX, beyond any real directory or hub id.
pub const MAX_PATH_LEN: usize = 4096;

/// The projections of a Qwen2 decoder layer an adapter may target.
pub const ALLOWED_TARGETS: [&str; 7] = crate::Projection::NAMES;

/// Base weight dtypes the trainer supports.
pub const ALLOWED_DTYPES: [&str; 2] = ["f32", "bf16"];

/// The top-level keys of a sweep file.
const TOP_KEYS: [&str; 9] = ["name", "priority", "fail_fast", "model", "data", "lora", "train", "grid", "requirements"];

/// `fail_fast` when the file does not say: three non-retryable failures with no success yet pause
/// the sweep (a broken model path fails every job the same way within milliseconds).
pub const DEFAULT_FAIL_FAST: u32 = 3;

/// The range of `priority`.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;

/// What a worker must offer to run a sweep's jobs (`[requirements]`); the defaults ask nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RequirementsSpec {
    /// `cpu`, `cuda`, or `any` (the default).
    pub device: String,
    /// Least GPU memory, in GB (10⁹ bytes), a worker must report; 0 asks nothing.
    pub min_gpu_memory_gb: f64,
    /// Least CPU threads a worker's trainer must use; 0 asks nothing.
    pub min_cpu_threads: u32,
}

impl RequirementsSpec {
    /// The device kind asked for, `""` for any.
    pub fn device_kind(&self) -> &str {
        match self.device.as_str() {
            "" | "any" => "",
            other => other,
        }
    }
}

/// The (init, lr, seed) axes of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GridSpec {
    /// LoRA inits, by name (see [`LoraInit::allowed`]).
    pub inits: Vec<LoraInit>,
    /// Peak learning rates, each finite and > 0.
    pub lrs: Vec<f64>,
    /// Seeds.
    pub seeds: Vec<u64>,
}

impl Default for GridSpec {
    fn default() -> Self {
        Self { inits: LoraInit::ALL.to_vec(), lrs: STUDY_LRS.to_vec(), seeds: STUDY_SEEDS.to_vec() }
    }
}

/// A parsed and validated sweep file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// The sweep's display name (`name`; defaults to the source file's stem).
    pub name: String,
    /// `[model]`.
    pub model: ModelSpec,
    /// `[data]`.
    pub data: DataSpec,
    /// `[lora]`.
    pub lora: LoraSpec,
    /// `[train]`.
    pub train: TrainSpec,
    /// `[grid]`.
    pub grid: GridSpec,
    /// `priority`: higher runs first; sweeps of equal priority share the workers (default 0).
    pub priority: i64,
    /// `[requirements]`: which workers may run the jobs.
    pub requirements: RequirementsSpec,
    /// `fail_fast`: pause the sweep once this many jobs failed with a non-retryable error while
    /// none has succeeded (`None`: `fail_fast = false`, never pause). Default
    /// [`DEFAULT_FAIL_FAST`].
    pub fail_fast: Option<u32>,
}

impl SweepSpec {
    /// Parses and validates a sweep file. `source` (a path, usually) only appears in errors.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `source`, the offending key and the allowed values, for TOML
    /// syntax errors, unknown keys (anywhere), wrong types, unknown inits or targets, lr ≤ 0 or
    /// non-finite, empty or duplicated grid entries, zero sizes and out-of-range ratios.
    pub fn parse(text: &str, source: &str) -> Result<SweepSpec, Error> {
        let fail = |key: &str, message: String| Error::invalid(format!("{source}: key `{key}`"), message);
        let mut top: Table = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("{source}: TOML syntax"), e.to_string().trim_end().to_string()))?;
        if let Some(key) = top.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
            return Err(fail(key, format!("unknown key; allowed top-level keys: {}", TOP_KEYS.join(", "))));
        }
        let name = match top.remove("name") {
            None => default_name(source),
            Some(Value::String(s)) if !s.trim().is_empty() => s,
            Some(Value::String(_)) => {
                return Err(fail("name", "is empty; give the sweep a name".into()));
            }
            Some(other) => {
                return Err(fail("name", format!("expected a string, found {}", other.type_str())));
            }
        };
        let priority = match top.remove("priority") {
            None => 0,
            Some(Value::Integer(p)) if PRIORITY_RANGE.contains(&p) => p,
            Some(Value::Integer(p)) => {
                return Err(fail("priority", format!("{p} is out of range; allowed: -1000 to 1000")));
            }
            Some(other) => return Err(fail("priority", format!("expected an integer, found {}", other.type_str()))),
        };
        let fail_fast = match top.remove("fail_fast") {
            None | Some(Value::Boolean(true)) => Some(DEFAULT_FAIL_FAST),
            Some(Value::Boolean(false)) => None,
            Some(Value::Integer(n)) if (1..=MAX_JOBS as i64).contains(&n) => Some(n as u32),
            Some(Value::Integer(n)) => {
                return Err(fail(
                    "fail_fast",
                    format!(
                        "{n} is out of range; allowed: 1 to {MAX_JOBS} failed jobs, or `false` to never pause the sweep"
                    ),
                ));
            }
            Some(other) => {
                return Err(fail(
                    "fail_fast",
                    format!("expected a positive integer or a boolean, found {}", other.type_str()),
                ));
            }
        };
        let spec = SweepSpec {
            name,
            priority,
            fail_fast,
            requirements: section(&mut top, "requirements", &fail)?,
            model: section(&mut top, "model", &fail)?,
            data: section(&mut top, "data", &fail)?,
            lora: section(&mut top, "lora", &fail)?,
            train: section(&mut top, "train", &fail)?,
            grid: section(&mut top, "grid", &fail)?,
        };
        spec.validate(&fail)?;
        Ok(spec)
    }

    /// One job per grid cell, in grid order: init, then lr, then seed.
    pub fn jobs(&self) -> Vec<JobSpec> {
        let mut jobs = Vec::with_capacity(self.job_count());
        for &init in &self.grid.inits {
            for &lr in &self.grid.lrs {
                for &seed in &self.grid.seeds {
                    jobs.push(JobSpec {
                        model: self.model.clone(),
                        data: self.data.clone(),
                        lora: self.lora.clone(),
                        train: self.train.clone(),
                        init,
                        lr,
                        seed,
                    });
                }
            }
        }
        jobs
    }

    /// The number of grid cells.
    pub fn job_count(&self) -> usize {
        self.grid.inits.len() * self.grid.lrs.len() * self.grid.seeds.len()
    }

    fn validate(&self, fail: &impl Fn(&str, String) -> Error) -> Result<(), Error> {
        let (m, d, l, t, g) = (&self.model, &self.data, &self.lora, &self.train, &self.grid);
        for (key, value, max) in [
            ("name", &self.name, MAX_NAME_LEN),
            ("model.path", &m.path, MAX_PATH_LEN),
            ("data.path", &d.path, MAX_PATH_LEN),
        ] {
            if value.len() > max {
                return Err(fail(key, format!("is {} bytes long; allowed: at most {max} bytes", value.len())));
            }
        }
        let r = &self.requirements;
        if !["", "any", "cpu", "cuda"].contains(&r.device.as_str()) {
            return Err(fail("requirements.device", format!("{:?} is not allowed; allowed: any, cpu, cuda", r.device)));
        }
        if !(r.min_gpu_memory_gb.is_finite() && r.min_gpu_memory_gb >= 0.0) {
            return Err(fail(
                "requirements.min_gpu_memory_gb",
                format!("{} is out of range; allowed: finite and ≥ 0", r.min_gpu_memory_gb),
            ));
        }
        if r.min_gpu_memory_gb > 0.0 && r.device_kind() == "cpu" {
            return Err(fail(
                "requirements.min_gpu_memory_gb",
                "asks for GPU memory of a cpu sweep; drop one of the two".into(),
            ));
        }
        if m.path.trim().is_empty() {
            return Err(fail("model.path", "is empty; give a model directory or hub id".into()));
        }
        if !ALLOWED_DTYPES.contains(&m.dtype.as_str()) {
            return Err(fail(
                "model.dtype",
                format!("{:?} is not allowed; allowed: {}", m.dtype, ALLOWED_DTYPES.join(", ")),
            ));
        }
        if d.path.trim().is_empty() {
            return Err(fail("data.path", "is empty; give a data directory or hub id".into()));
        }
        if d.max_length < 2 {
            return Err(fail("data.max_length", format!("{} is too small; allowed: ≥ 2 tokens", d.max_length)));
        }
        if l.r == 0 {
            return Err(fail("lora.r", "0 is not allowed; allowed: ≥ 1".into()));
        }
        positive(fail, "lora.alpha", l.alpha)?;
        if !(l.dropout.is_finite() && (0.0..1.0).contains(&l.dropout)) {
            return Err(fail("lora.dropout", format!("{} is out of range; allowed: 0 ≤ dropout < 1", l.dropout)));
        }
        if l.targets.is_empty() {
            return Err(fail("lora.targets", format!("is empty; allowed: {}", ALLOWED_TARGETS.join(", "))));
        }
        for (i, target) in l.targets.iter().enumerate() {
            if !ALLOWED_TARGETS.contains(&target.as_str()) {
                return Err(fail(
                    &format!("lora.targets[{i}]"),
                    format!("unknown target {target:?}; allowed: {}", ALLOWED_TARGETS.join(", ")),
                ));
            }
        }
        unique(fail, "lora.targets", &l.targets)?;
        for (key, value) in
            [("train.micro_batch", t.micro_batch), ("train.grad_accum", t.grad_accum), ("train.epochs", t.epochs)]
        {
            if value == 0 {
                return Err(fail(key, "0 is not allowed; allowed: ≥ 1".into()));
            }
        }
        if t.eval_every == 0 {
            return Err(fail("train.eval_every", "0 is not allowed; allowed: ≥ 1 micro-batches".into()));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(fail(
                "train.weight_decay",
                format!("{} is out of range; allowed: finite and ≥ 0", t.weight_decay),
            ));
        }
        if !(t.warmup_ratio.is_finite() && (0.0..=1.0).contains(&t.warmup_ratio)) {
            return Err(fail(
                "train.warmup_ratio",
                format!("{} is out of range; allowed: 0 ≤ ratio ≤ 1", t.warmup_ratio),
            ));
        }
        positive(fail, "train.max_grad_norm", t.max_grad_norm)?;
        positive(fail, "train.divergence_threshold", t.divergence_threshold)?;
        for (key, len) in [("grid.inits", g.inits.len()), ("grid.lrs", g.lrs.len()), ("grid.seeds", g.seeds.len())] {
            if len == 0 {
                return Err(fail(key, "is empty; a grid axis needs at least one value".into()));
            }
        }
        for (i, &lr) in g.lrs.iter().enumerate() {
            positive(fail, &format!("grid.lrs[{i}]"), lr)?;
        }
        unique(fail, "grid.inits", &g.inits)?;
        unique(fail, "grid.lrs", &g.lrs.iter().map(|lr| lr.to_bits()).collect::<Vec<_>>())
            .map_err(|_| fail("grid.lrs", format!("has a duplicate value in {:?}; each lr may appear once", g.lrs)))?;
        unique(fail, "grid.seeds", &g.seeds)?;
        if self.job_count() > MAX_JOBS {
            return Err(fail("grid", format!("spans {} jobs; allowed: at most {MAX_JOBS}", self.job_count())));
        }
        Ok(())
    }
}

/// The sweep name when the file gives none: the file's stem, so `study.toml` is "study".
fn default_name(source: &str) -> String {
    std::path::Path::new(source)
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("sweep")
        .to_string()
}

/// Deserializes the table `key` (absent = defaults). toml's own errors name the field only for
/// unknown keys, so on failure each key is retried alone to find the one to blame.
fn section<T: DeserializeOwned>(top: &mut Table, key: &str, fail: &impl Fn(&str, String) -> Error) -> Result<T, Error> {
    let table = match top.remove(key) {
        None => Table::new(),
        Some(Value::Table(t)) => t,
        Some(other) => {
            return Err(fail(key, format!("expected a table `[{key}]`, found {}", other.type_str())));
        }
    };
    match Value::Table(table.clone()).try_into::<T>() {
        Ok(value) => Ok(value),
        Err(whole) => {
            for (field, value) in table {
                let mut alone = Table::new();
                alone.insert(field.clone(), value);
                if let Err(e) = Value::Table(alone).try_into::<T>() {
                    return Err(fail(&format!("{key}.{field}"), e.message().to_string()));
                }
            }
            Err(fail(key, whole.message().to_string()))
        }
    }
}

fn positive(fail: &impl Fn(&str, String) -> Error, key: &str, value: f64) -> Result<(), Error> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(fail(key, format!("{value} is not allowed; allowed: finite and > 0")))
    }
}

fn unique<T: std::hash::Hash + Eq + std::fmt::Debug>(
    fail: &impl Fn(&str, String) -> Error,
    key: &str,
    values: &[T],
) -> Result<(), Error> {
    let mut seen = HashSet::new();
    match values.iter().find(|v| !seen.insert(*v)) {
        Some(dup) => Err(fail(key, format!("{dup:?} appears twice; each value may appear once"))),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;
