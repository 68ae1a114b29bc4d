//! `lorasweep bench train`: LoRA training steps at a model shape, with random weights held in
//! memory (no files), timing forward / backward / optimizer separately.
//!
//! Shapes: `tiny` (tests), `0.5b` (Qwen2.5-0.5B: 896 wide, 24 layers, 14/2 heads, 4864 MLP,
//! vocab 151936) and `1.5b` (Qwen2.5-1.5B: ml-spec §5). `layers` truncates depth so a shape fits
//! in memory and time on a small machine; per-layer cost is what the bench is for.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lorasweep_common::job::LoraSpec;
use lorasweep_common::{LoraInit, Projection};
use rand::Rng;

use super::lora::Adapters;
use super::model::{Qwen2Config, Qwen2Model};
use super::optim::{AdamW, AdamWConfig, GradAccum, clip_grad_norm};
use super::rng::{Purpose, stream};
use crate::TrainError;

/// A named model shape.
///
/// # Errors
/// [`TrainError::Invalid`] for an unknown name.
pub fn shape(name: &str) -> Result<Qwen2Config, TrainError> {
    let (v, h, i, l, nh, nkv, theta) = match name {
        "tiny" => (512, 64, 128, 2, 4, 2, 1e6),
        "0.5b" => (151_936, 896, 4864, 24, 14, 2, 1e6),
        "1.5b" => (151_936, 1536, 8960, 28, 12, 2, 1e6),
        other => {
            return Err(TrainError::Invalid(format!("unknown shape {other:?}; allowed: tiny, 0.5b, 1.5b")));
        }
    };
    Ok(Qwen2Config {
        vocab_size: v,
        hidden_size: h,
        intermediate_size: i,
        num_hidden_layers: l,
        num_attention_heads: nh,
        num_key_value_heads: nkv,
        rms_norm_eps: 1e-6,
        rope_theta: theta,
        tie_word_embeddings: true,
        max_position_embeddings: 32_768,
    })
}

/// Random f32 weights for `cfg` under HF names (tied embeddings, no `lm_head.weight`):
/// matrices and biases U(±√3·0.02) (std 0.02, as HF's init), norm weights 1 ± U(√3·0.1).
pub fn random_weights(cfg: &Qwen2Config, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = stream(seed, Purpose::Bench, &[]);
    let mut gen_tensor = |shape: Vec<usize>, center: f32, std: f32| -> candle_core::Result<Tensor> {
        let bound = 3f32.sqrt() * std;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| center + bound * (2.0 * rng.random::<f32>() - 1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    };
    let mut ts = HashMap::new();
    let h = cfg.hidden_size;
    ts.insert("model.embed_tokens.weight".into(), gen_tensor(vec![cfg.vocab_size, h], 0.0, 0.02)?);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for m in Projection::ALL {
            let (d_in, d_out) = cfg.proj_dims(m);
            let name = format!("{p}.{}.{}", m.block(), m.name());
            ts.insert(format!("{name}.weight"), gen_tensor(vec![d_out, d_in], 0.0, 0.02)?);
            if m.has_bias() {
                ts.insert(format!("{name}.bias"), gen_tensor(vec![d_out], 0.0, 0.02)?);
            }
        }
        ts.insert(format!("{p}.input_layernorm.weight"), gen_tensor(vec![h], 1.0, 0.1)?);
        ts.insert(format!("{p}.post_attention_layernorm.weight"), gen_tensor(vec![h], 1.0, 0.1)?);
    }
    ts.insert("model.norm.weight".into(), gen_tensor(vec![h], 1.0, 0.1)?);
    Ok(ts)
}

/// What `bench train` runs.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Model shape name (`tiny`, `0.5b`, `1.5b`).
    pub shape: String,
    /// Keep only this many layers (None = all).
    pub layers: Option<usize>,
    /// Sequence length.
    pub seq: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Timed steps (one extra warm-up step runs first).
    pub steps: usize,
    /// Base dtype.
    pub dtype: DType,
    /// LoRA settings (rank, targets).
    pub lora: LoraSpec,
}

/// Bench results: medians over the timed steps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// The shape actually run (after `layers`).
    pub shape: String,
    /// Layers run.
    pub layers: usize,
    /// Tokens per step.
    pub tokens_per_step: usize,
    /// Trainable parameters.
    pub lora_params: usize,
    /// Median forward seconds (including the loss).
    pub forward_s: f64,
    /// Median backward seconds.
    pub backward_s: f64,
    /// Median optimizer seconds (clip + AdamW).
    pub optimizer_s: f64,
    /// Median whole-step seconds.
    pub step_s: f64,
    /// Tokens per second at the median step.
    pub tokens_per_s: f64,
    /// Process CPU seconds (user + system, all threads) per timed step: robust to other load
    /// on the machine, unlike wall time. `None` where `/proc/self/stat` is unreadable.
    pub cpu_s_per_step: Option<f64>,
    /// Peak resident set size in bytes (`VmHWM`), if readable.
    pub peak_rss_bytes: Option<u64>,
    /// Threads candle's matmuls ran on (`--threads`, see [`super::cpu`]).
    pub threads: usize,
    /// Losses of every step (warm-up first), as a sanity check that training moves.
    pub losses: Vec<f64>,
}

/// Peak RSS from `/proc/self/status` `VmHWM` (Linux), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Process CPU time (utime + stime) in seconds from `/proc/self/stat`, assuming the usual
/// 100 clock ticks per second.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Builds the model and runs `1 + steps` training steps (forward, backward, clip + AdamW).
///
/// # Errors
/// [`TrainError::Invalid`] for a bad shape or sizes; tensor errors.
pub fn run_bench(opts: &BenchOpts, dev: &Device) -> Result<BenchReport, TrainError> {
    let mut cfg = shape(&opts.shape)?;
    if let Some(l) = opts.layers {
        cfg.num_hidden_layers = l.min(cfg.num_hidden_layers);
    }
    if opts.seq < 2 || opts.batch == 0 {
        return Err(TrainError::Invalid("bench needs seq ≥ 2 and batch ≥ 1".into()));
    }
    let ts = random_weights(&cfg, 0)?;
    let model = Qwen2Model::from_tensors(&cfg, ts, opts.dtype, dev)?;
    let ads = Adapters::init(&opts.lora, LoraInit::Standard, 0, cfg.num_hidden_layers, &|m| cfg.proj_dims(m), dev)?;
    let vars = ads.vars();
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
    let mut rng = stream(1, Purpose::Bench, &[]);
    let n = opts.batch * opts.seq;
    let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..cfg.vocab_size as u32)).collect();
    let ids = Tensor::from_vec(ids, (opts.batch, opts.seq), dev)?;
    let (mut fwd, mut bwd, mut optim, mut step, mut losses) = (vec![], vec![], vec![], vec![], vec![]);
    let mut cpu_start = None;
    for s in 0..=opts.steps {
        if s == 1 {
            cpu_start = process_cpu_seconds();
        }
        let t0 = Instant::now();
        let (loss, _) = model.loss(&ids, Some(&ads), None)?;
        let loss_val = loss.to_scalar::<f32>()? as f64;
        dev.synchronize()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let mut acc = GradAccum::new(&vars)?;
        acc.add(&vars, &grads)?;
        drop(grads);
        dev.synchronize()?;
        let t2 = Instant::now();
        clip_grad_norm(&mut acc.sums, 1.0)?;
        opt.step(&acc.sums, 1e-3)?;
        dev.synchronize()?;
        let t3 = Instant::now();
        losses.push(loss_val);
        tracing::info!(step = s, loss = loss_val, seconds = (t3 - t0).as_secs_f64(), "bench step");
        if s > 0 {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            optim.push((t3 - t2).as_secs_f64());
            step.push((t3 - t0).as_secs_f64());
        }
    }
    let cpu_s_per_step = match (cpu_start, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / opts.steps as f64),
        _ => None,
    };
    let step_s = median(step);
    Ok(BenchReport {
        shape: opts.shape.clone(),
        layers: cfg.num_hidden_layers,
        tokens_per_step: n,
        lora_params: ads.num_params(),
        forward_s: median(fwd),
        backward_s: median(bwd),
        optimizer_s: median(optim),
        step_s,
        tokens_per_s: n as f64 / step_s,
        cpu_s_per_step,
        peak_rss_bytes: peak_rss_bytes(),
        threads: candle_core::utils::get_num_threads(),
        losses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bench_runs_and_trains() -> anyhow::Result<()> {
        let opts = BenchOpts {
            shape: "tiny".into(),
            layers: Some(1),
            seq: 16,
            batch: 2,
            steps: 3,
            dtype: DType::F32,
            lora: LoraSpec::default(),
        };
        let r = run_bench(&opts, &Device::Cpu)?;
        assert_eq!((r.layers, r.tokens_per_step, r.losses.len()), (1, 32, 4));
        // One layer × 4 targets × r·(d_in + d_out): q/o 8·128, k/v 8·96.
        assert_eq!(r.lora_params, 2 * 8 * 128 + 2 * 8 * 96);
        assert!(r.tokens_per_s > 0.0 && r.step_s >= r.forward_s);
        assert!(r.losses.iter().all(|l| l.is_finite()));
        assert!(shape("7b").is_err());
        Ok(())
    }
}
