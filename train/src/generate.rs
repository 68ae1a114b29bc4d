//! Text generation with a trained adapter merged into the base weights (`lorasweep generate`).
//!
//! The adapter is merged as PEFT's `merge_and_unload` does: `W ← W + (alpha/r)·B·A` for every
//! adapted projection (computed in f32, cast to the base dtype). The merged weights then drive
//! candle-transformers' Qwen2 inference model, which keeps a KV cache, so each new token costs
//! one position of compute. The prompt is tokenised as given (no chat template).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::qwen2;
use lorasweep_common::job::LoraSpec;

use super::adapter;
use super::data::eos_token_id;
use super::lora::{Adapters, peft_prefix};
use super::model::{Qwen2Config, read_config, weight_files};
use crate::TrainError;

/// Sampling settings.
#[derive(Debug, Clone)]
pub struct GenerateOpts {
    /// Most tokens to add after the prompt.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling threshold, if any.
    pub top_p: Option<f64>,
    /// Sampling seed.
    pub seed: u64,
}

impl Default for GenerateOpts {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 0.0, top_p: None, seed: 0 }
    }
}

fn model_err(msg: String) -> TrainError {
    TrainError::Model(msg)
}

/// Reads a PEFT directory's rank, alpha and targets from its `adapter_config.json`.
///
/// # Errors
/// [`TrainError::Model`] naming the file or the missing field.
pub fn adapter_spec(adapter_dir: &Path) -> Result<LoraSpec, TrainError> {
    let path = adapter_dir.join(adapter::CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| model_err(format!("{}: {e}", path.display())))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| model_err(format!("{}: {e}", path.display())))?;
    let field = |k: &str| model_err(format!("{}: missing or invalid {k:?}", path.display()));
    let targets = v["target_modules"]
        .as_array()
        .ok_or_else(|| field("target_modules"))?
        .iter()
        .map(|t| t.as_str().map(str::to_string).ok_or_else(|| field("target_modules")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LoraSpec {
        r: v["r"].as_u64().ok_or_else(|| field("r"))? as usize,
        alpha: v["lora_alpha"].as_f64().ok_or_else(|| field("lora_alpha"))?,
        dropout: 0.0,
        targets,
    })
}

/// The base weights (HF names) with `ads` merged into the adapted projections.
///
/// # Errors
/// [`TrainError::Model`] for a missing weight; tensor errors.
pub fn merged_weights(
    model_dir: &Path,
    ads: Option<&Adapters>,
    dev: &Device,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let mut ts = HashMap::new();
    for f in weight_files(model_dir)? {
        let part = candle_core::safetensors::load(&f, dev).map_err(|e| model_err(format!("{}: {e}", f.display())))?;
        ts.extend(part);
    }
    let Some(ads) = ads else { return Ok(ts) };
    let scale = ads.alpha / ads.r as f64;
    for ad in &ads.list {
        // `base_model.model.model.layers.L…` → `model.layers.L….weight`.
        let name = format!("{}.weight", peft_prefix(ad.layer, ad.module).trim_start_matches("base_model.model."));
        let w = ts.get(&name).ok_or_else(|| model_err(format!("base model has no {name} for the adapter")))?;
        let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * scale)?;
        let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
        ts.insert(name, merged);
    }
    Ok(ts)
}

/// candle-transformers' Qwen2 on the given weights.
///
/// # Errors
/// Tensor errors (missing or mis-shaped weights).
pub fn inference_model(
    cfg: &Qwen2Config,
    weights: HashMap<String, Tensor>,
    dtype: DType,
    dev: &Device,
) -> Result<qwen2::ModelForCausalLM, TrainError> {
    let ct = qwen2::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: cfg.max_position_embeddings,
        max_window_layers: cfg.num_hidden_layers,
        tie_word_embeddings: cfg.tie_word_embeddings || !weights.contains_key("lm_head.weight"),
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    };
    let vb = candle_nn::VarBuilder::from_tensors(weights, dtype, dev);
    Ok(qwen2::ModelForCausalLM::new(&ct, vb)?)
}

/// Generates up to `opts.max_new_tokens` after `prompt` (stopping at EOS) with the base model in
/// `model_dir`, merged with the PEFT adapter in `adapter_dir` if given. Returns the new text.
///
/// # Errors
/// [`TrainError::Model`] for unreadable model/adapter files; tensor errors.
pub fn generate(
    model_dir: &Path,
    adapter_dir: Option<&Path>,
    prompt: &str,
    dtype: DType,
    dev: &Device,
    opts: &GenerateOpts,
) -> Result<String, TrainError> {
    let tok_path = model_dir.join("tokenizer.json");
    let tokenizer =
        tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| model_err(format!("{}: {e}", tok_path.display())))?;
    let eos = eos_token_id(model_dir, &tokenizer)?;
    let mut model = merged_model(model_dir, adapter_dir, dtype, dev)?;
    let ids = tokenizer.encode(prompt, false).map_err(|e| model_err(format!("tokenising the prompt: {e}")))?;
    let new = sample(&mut model, ids.get_ids(), eos, opts, dev)?;
    tokenizer.decode(&new, true).map_err(|e| model_err(format!("decoding: {e}")))
}

/// The inference model `generate` samples from: the base in `model_dir` (its `config.json`
/// read by the trainer's own [`read_config`], so both see the same RoPE θ and sizes) with the
/// PEFT adapter in `adapter_dir` merged in, if given.
///
/// # Errors
/// [`TrainError::Model`] for unreadable model/adapter files; tensor errors.
pub fn merged_model(
    model_dir: &Path,
    adapter_dir: Option<&Path>,
    dtype: DType,
    dev: &Device,
) -> Result<qwen2::ModelForCausalLM, TrainError> {
    let cfg = read_config(model_dir)?;
    let ads = match adapter_dir {
        Some(dir) => Some(adapter::load(dir, &adapter_spec(dir)?, &cfg, dev)?),
        None => None,
    };
    inference_model(&cfg, merged_weights(model_dir, ads.as_ref(), dev)?, dtype, dev)
}

/// The sampling loop over a KV-cached model: the prompt once, then one token per step.
///
/// # Errors
/// [`TrainError::Invalid`] for an empty prompt; tensor errors.
pub fn sample(
    model: &mut qwen2::ModelForCausalLM,
    prompt: &[u32],
    eos: u32,
    opts: &GenerateOpts,
    dev: &Device,
) -> Result<Vec<u32>, TrainError> {
    if prompt.is_empty() {
        return Err(TrainError::Invalid("the prompt tokenises to nothing".into()));
    }
    model.clear_kv_cache();
    let sampling = match (opts.temperature, opts.top_p) {
        (t, _) if t <= 0.0 => Sampling::ArgMax,
        (temperature, None) => Sampling::All { temperature },
        (temperature, Some(p)) => Sampling::TopP { p, temperature },
    };
    let mut lp = LogitsProcessor::from_sampling(opts.seed, sampling);
    let mut out = Vec::new();
    let (mut input, mut pos) = (prompt.to_vec(), 0usize);
    for _ in 0..opts.max_new_tokens {
        let x = Tensor::new(input.as_slice(), dev)?.unsqueeze(0)?;
        let logits = model.forward(&x, pos)?.squeeze(0)?.squeeze(0)?.to_dtype(DType::F32)?;
        pos += input.len();
        let next = lp.sample(&logits)?;
        if next == eos {
            break;
        }
        out.push(next);
        input = vec![next];
    }
    Ok(out)
}
