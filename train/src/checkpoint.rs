//! Training checkpoints: everything the loop needs to continue a run exactly where it stopped.
//!
//! A checkpoint is taken at an optimizer-step boundary (after the step, before the next
//! micro-batch), so no gradient accumulation is in flight. It holds:
//! - the adapter tensors (f32, PEFT names `….lora_{A,B}.weight`) and AdamW's moments
//!   (`….exp_avg`, `….exp_avg_sq`, torch's names);
//! - a [`LoopState`]: AdamW's step count, the optimizer step, the position of the next
//!   micro-batch (epoch, index in the epoch, global index), tokens so far, the latest eval and
//!   the divergence flag;
//! - the job it belongs to, so a checkpoint is never resumed into a different run.
//!
//! No RNG state is stored because none is carried: the shuffle order is a function of
//! `(seed, epoch)` ([`super::data::epoch_order`]) and CPU dropout masks of
//! `(seed, global micro-batch, layer, module)` ([`super::lora`]). The points already emitted
//! are not part of it either; the resumed run emits the points after the checkpoint.
//!
//! Format: one safetensors file of f32 tensors whose header metadata carries the state as JSON
//! under [`META_KEY`], with a [`VERSION`] field. The file is self-describing (`safetensors` tools
//! can list it) and needs no second file next to it.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use lorasweep_common::JobSpec;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use super::lora::{Adapters, peft_prefix};
use super::optim::AdamW;
use crate::TrainError;
use crate::safetensors_f32;

/// The metadata key holding the JSON state.
pub const META_KEY: &str = "lorasweep_checkpoint";

/// The format version written; readers refuse any other.
pub const VERSION: u32 = 1;

/// Where the loop stands after an optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps taken (the checkpoint's step).
    pub opt_step: u64,
    /// AdamW's own step count (the bias-correction `t`; equal to `opt_step` in this loop).
    pub adam_step: u64,
    /// Epoch of the next micro-batch.
    pub epoch: usize,
    /// Index of the next micro-batch within that epoch's order.
    pub micro: usize,
    /// Global index of the next micro-batch (the dropout key and eval step).
    pub global: u64,
    /// Training tokens processed so far.
    pub tokens: u64,
    /// `(opt_step, loss bits)` of the latest eval, if any (bits so NaN survives JSON).
    pub last_eval: Option<(u64, u64)>,
    /// The run had diverged.
    pub diverged: bool,
}

/// The JSON document stored under [`META_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    version: u32,
    /// The job with `checkpoint_every` zeroed (the cadence does not change the run).
    job: JobSpec,
    state: LoopState,
}

/// A checkpoint in host memory: the state plus named f32 tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The job it was taken from (`checkpoint_every` zeroed).
    pub job: JobSpec,
    /// Where the loop stands.
    pub state: LoopState,
    /// Tensor name → (shape, values).
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// The job as recorded in (and compared against) a checkpoint.
fn job_key(job: &JobSpec) -> JobSpec {
    let mut j = job.clone();
    j.train.checkpoint_every = 0;
    j
}

/// The `(adapter weight name, moment suffix)` names of var `i` of [`Adapters::vars`].
fn var_names(ads: &Adapters) -> Vec<String> {
    ads.list
        .iter()
        .flat_map(|a| {
            let p = peft_prefix(a.layer, a.module);
            [format!("{p}.lora_A.weight"), format!("{p}.lora_B.weight")]
        })
        .collect()
}

fn host(t: &Tensor) -> Result<(Vec<usize>, Vec<f32>), TrainError> {
    let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    Ok((t.dims().to_vec(), t.flatten_all()?.to_vec1()?))
}

fn bad(msg: impl std::fmt::Display) -> TrainError {
    TrainError::Invalid(format!("checkpoint: {msg}"))
}

impl Checkpoint {
    /// Copies the adapters and optimizer state to host memory.
    ///
    /// # Errors
    /// Tensor errors (device copies).
    pub fn capture(job: &JobSpec, state: LoopState, ads: &Adapters, opt: &AdamW) -> Result<Self, TrainError> {
        let mut tensors = BTreeMap::new();
        for (i, (name, var)) in var_names(ads).into_iter().zip(opt.vars()).enumerate() {
            tensors.insert(format!("{name}.exp_avg"), host(&opt.m[i])?);
            tensors.insert(format!("{name}.exp_avg_sq"), host(&opt.v[i])?);
            tensors.insert(name, host(var.as_tensor())?);
        }
        Ok(Self { job: job_key(job), state, tensors })
    }

    /// Serialises to safetensors bytes with the JSON header in the metadata.
    ///
    /// # Errors
    /// [`TrainError::Invalid`] if serialisation fails (it does not for well-formed tensors).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let header = Header { version: VERSION, job: self.job.clone(), state: self.state.clone() };
        let json = serde_json::to_string(&header).map_err(bad)?;
        let meta = HashMap::from([(META_KEY.to_string(), json)]);
        safetensors_f32::serialize(self.tensors.iter().map(|(n, (s, v))| (n.as_str(), &s[..], &v[..])), meta)
            .map_err(bad)
    }

    /// Parses bytes written by [`Checkpoint::to_bytes`].
    ///
    /// # Errors
    /// [`TrainError::Invalid`] naming what is wrong: not safetensors, no header, another version,
    /// a non-f32 tensor.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrainError> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(bad)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(bad)?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| bad(format!("no {META_KEY:?} metadata (not a lorasweep checkpoint)")))?;
        let version: serde_json::Value = serde_json::from_str(json).map_err(bad)?;
        if version.get("version").and_then(serde_json::Value::as_u64) != Some(VERSION as u64) {
            return Err(bad(format!("version {} is not the supported {VERSION}", version["version"])));
        }
        let header: Header = serde_json::from_value(version).map_err(bad)?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("{name}: dtype {:?}, expected F32", view.dtype())));
            }
            let v: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(name, (view.shape().to_vec(), v));
        }
        Ok(Self { job: header.job, state: header.state, tensors })
    }

    /// Checks that the checkpoint belongs to `job` and has exactly the tensors `ads` needs.
    ///
    /// # Errors
    /// [`TrainError::Invalid`] naming the differing job or the missing/mis-shaped tensor.
    pub fn check(&self, job: &JobSpec, ads: &Adapters) -> Result<(), TrainError> {
        if self.job != job_key(job) {
            return Err(bad("taken from a different job spec"));
        }
        let mut want = 0;
        for (name, var) in var_names(ads).into_iter().zip(ads.vars()) {
            for n in [format!("{name}.exp_avg"), format!("{name}.exp_avg_sq"), name] {
                match self.tensors.get(&n) {
                    None => return Err(bad(format!("missing tensor {n}"))),
                    Some((shape, _)) if shape.as_slice() != var.dims() => {
                        return Err(bad(format!("{n}: shape {shape:?}, expected {:?}", var.dims())));
                    }
                    Some(_) => want += 1,
                }
            }
        }
        if want != self.tensors.len() {
            return Err(bad(format!("{} tensors, expected {want}", self.tensors.len())));
        }
        if self.state.adam_step != self.state.opt_step {
            return Err(bad("AdamW and optimizer step counts differ"));
        }
        Ok(())
    }

    /// Writes the adapter values and the optimizer state into `ads` and `opt` (call
    /// [`Checkpoint::check`] first).
    ///
    /// # Errors
    /// [`TrainError::Invalid`] for a missing tensor; tensor errors.
    pub fn restore(&self, ads: &Adapters, opt: &mut AdamW) -> Result<(), TrainError> {
        let names = var_names(ads);
        let vars = opt.vars().to_vec();
        for (i, (name, var)) in names.into_iter().zip(vars).enumerate() {
            let load = |n: &str| -> Result<Tensor, TrainError> {
                let (shape, v) = self.tensors.get(n).ok_or_else(|| bad(format!("missing tensor {n}")))?;
                Ok(Tensor::from_vec(v.clone(), shape.as_slice(), var.device())?.to_dtype(var.dtype())?)
            };
            opt.m[i] = load(&format!("{name}.exp_avg"))?;
            opt.v[i] = load(&format!("{name}.exp_avg_sq"))?;
            var.set(&load(&name)?)?;
        }
        opt.step = self.state.adam_step;
        Ok(())
    }

    /// The loss of the latest eval, decoded.
    pub fn last_eval(&self) -> Option<(u64, f64)> {
        self.state.last_eval.map(|(s, bits)| (s, f64::from_bits(bits)))
    }
}

/// The metadata key of an adapter artifact holding `adapter_config.json`.
pub const ADAPTER_CONFIG_KEY: &str = "lorasweep_adapter_config";

/// A job's final adapter as one file: exactly PEFT's `adapter_model.safetensors` (f32
/// `….lora_{A,B}.weight`, metadata `format: pt`) plus the `adapter_config.json` text under
/// [`ADAPTER_CONFIG_KEY`], so one artifact carries the whole PEFT directory.
///
/// # Errors
/// Tensor errors; [`TrainError::Invalid`] if serialisation fails.
pub fn adapter_artifact(
    ads: &Adapters,
    spec: &lorasweep_common::job::LoraSpec,
    base_model: &str,
) -> Result<Vec<u8>, TrainError> {
    let tensors = super::adapter::tensors(ads)?;
    let config = serde_json::to_string_pretty(&super::adapter::adapter_config(spec, base_model)).map_err(bad)?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string()), (ADAPTER_CONFIG_KEY.to_string(), config)]);
    safetensors_f32::serialize_named(&tensors, meta).map_err(bad)
}

/// Writes an [`adapter_artifact`] as a PEFT directory: `adapter_model.safetensors` (the bytes as
/// they are) and `adapter_config.json` (from the metadata), creating `dir`.
///
/// # Errors
/// [`TrainError::Invalid`] if the bytes are not an adapter artifact; [`TrainError::Io`].
pub fn write_adapter_dir(bytes: &[u8], dir: &std::path::Path) -> Result<(), TrainError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("adapter: {e}")))?;
    let config = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(ADAPTER_CONFIG_KEY))
        .ok_or_else(|| bad(format!("adapter: no {ADAPTER_CONFIG_KEY:?} metadata")))?
        .clone();
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let cfg = dir.join(super::adapter::CONFIG_FILE);
    std::fs::write(&cfg, config + "\n").map_err(|e| TrainError::io(&cfg, e))?;
    let weights = dir.join(super::adapter::WEIGHTS_FILE);
    std::fs::write(&weights, bytes).map_err(|e| TrainError::io(&weights, e))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use lorasweep_common::job::LoraSpec;
    use lorasweep_common::{JobSpec, LoraInit};

    use super::super::optim::{AdamW, AdamWConfig};
    use super::*;

    /// Checkpoint size and timing at the study's shape (Qwen2.5-1.5B, r = 8 on q/k/v/o): the
    /// bytes are 3 × 4 × (LoRA parameters) plus the header (~0.1 MB of tensor names), and the
    /// round trip is exact.
    #[test]
    fn a_1_5b_r8_checkpoint_round_trips_and_is_three_copies_of_the_adapter() -> anyhow::Result<()> {
        let cfg = super::super::bench::shape("1.5b")?;
        let spec = LoraSpec { r: 8, ..LoraSpec::default() };
        let ads = Adapters::init(
            &spec,
            LoraInit::OrthoQrConst,
            1,
            cfg.num_hidden_layers,
            &|m| cfg.proj_dims(m),
            &Device::Cpu,
        )?;
        let mut opt = AdamW::new(ads.vars(), AdamWConfig::default())?;
        let grads: Vec<Tensor> = ads.vars().iter().map(|v| v.ones_like()).collect::<candle_core::Result<_>>()?;
        opt.step(&grads, 1e-3)?;
        let state = LoopState {
            opt_step: 1,
            adam_step: 1,
            epoch: 0,
            micro: 4,
            global: 4,
            tokens: 4096,
            last_eval: Some((0, 2.5f64.to_bits())),
            diverged: false,
        };
        let job = JobSpec {
            lora: spec,
            ..serde_json::from_value(serde_json::json!({
                "model": {"path": "m", "dtype": "f32"}, "data": {"path": "d", "max_length": 1024, "shuffle": true},
                "lora": {"r": 8, "alpha": 16.0, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                "train": {}, "init": "standard", "lr": 1e-3, "seed": 1
            }))?
        };
        let t0 = std::time::Instant::now();
        let bytes = Checkpoint::capture(&job, state, &ads, &opt)?.to_bytes()?;
        let save = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let back = Checkpoint::from_bytes(&bytes)?;
        let load = t1.elapsed().as_secs_f64();
        back.check(&job, &ads)?;
        let params = ads.num_params();
        assert_eq!(params, 28 * 8 * (2 * (1536 + 1536) + 2 * (1536 + 256)));
        assert!(bytes.len() >= 12 * params && bytes.len() < 12 * params + 256 * 1024, "{}", bytes.len());
        let mut opt2 = AdamW::new(ads.vars(), AdamWConfig::default())?;
        back.restore(&ads, &mut opt2)?;
        assert_eq!(opt2.step, 1);
        assert_eq!(opt2.v[5].flatten_all()?.to_vec1::<f32>()?, opt.v[5].flatten_all()?.to_vec1::<f32>()?);
        println!(
            "1.5b r=8 qkvo checkpoint: {params} LoRA params, {} bytes, capture+serialise {save:.3}s, parse {load:.3}s",
            bytes.len()
        );
        Ok(())
    }
}
