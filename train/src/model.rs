//! A trainable Qwen2 causal LM: frozen base weights, logits at every position, no KV cache.
//!
//! Modelled on HF transformers `models/qwen2/modeling_qwen2.py` (Qwen2RMSNorm, rotate_half
//! RoPE, eager attention with GQA (K/V heads shared, not repeated), SwiGLU MLP, tied `lm_head`)
//! and candle-transformers `models/qwen2.rs` (weight names, loading). Unlike the latter it uses only ops with a backward
//! ([`super::ops`]) and frozen linears without dW ([`super::frozen`]); candle-transformers' model
//! returns last-position logits, keeps a KV cache and yields zero gradients (candle-notes §1).
//! LoRA adapters are passed into the forward ([`super::lora::Adapters`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use lorasweep_common::Projection;
use serde::Deserialize;

use super::frozen::FrozenLinear;
use super::lora::{Adapters, DropoutKey};
use super::ops;
use crate::TrainError;

/// The `config.json` fields the model uses (HF `Qwen2Config`; defaults as there).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen2Config {
    /// Embedding rows.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Whether `lm_head` shares the embedding (also inferred from a missing `lm_head.weight`).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Longest position (only checked against the block length).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    32_768
}

impl Qwen2Config {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// `(d_in, d_out)` of a projection.
    pub fn proj_dims(&self, module: Projection) -> (usize, usize) {
        module.dims(self.hidden_size, self.num_key_value_heads * self.head_dim(), self.intermediate_size)
    }
}

/// One decoder layer's frozen weights.
#[derive(Debug, Clone)]
struct Layer {
    ln1: Tensor,
    ln2: Tensor,
    /// q, k, v, o, gate, up, down: indexed by [`Projection::index`].
    proj: [FrozenLinear; 7],
}

/// The frozen Qwen2 base model.
#[derive(Debug, Clone)]
pub struct Qwen2Model {
    /// Its configuration.
    pub cfg: Qwen2Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: FrozenLinear,
    dtype: DType,
    device: Device,
    /// RoPE tables and causal mask for the last sequence length seen: every block of a run has
    /// the same length, so they are built (and uploaded) once instead of per forward.
    positional: Arc<Mutex<Option<Positional>>>,
}

/// Per-length constants of the forward.
#[derive(Debug)]
struct Positional {
    t: usize,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl Qwen2Model {
    /// Builds the model from a `VarBuilder` rooted at the checkpoint's top level (names
    /// `model.embed_tokens.weight`, `model.layers.{i}.…`, optional `lm_head.weight`).
    pub fn new(cfg: &Qwen2Config, vb: VarBuilder<'_>) -> Result<Self> {
        if vb.device().is_cpu() {
            super::cpu::tune();
        }
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let m = vb.pp("model");
        let embed = m.get((v, h), "embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp("layers").pp(i);
            let lin = |module: Projection| -> Result<FrozenLinear> {
                let (d_in, d_out) = cfg.proj_dims(module);
                let p = l.pp(module.block()).pp(module.name());
                let w = p.get((d_out, d_in), "weight")?;
                let b = if module.has_bias() { Some(p.get(d_out, "bias")?) } else { None };
                Ok(FrozenLinear::new(w, b))
            };
            layers.push(Layer {
                ln1: l.get(h, "input_layernorm.weight")?,
                ln2: l.get(h, "post_attention_layernorm.weight")?,
                proj: [
                    lin(Projection::Q)?,
                    lin(Projection::K)?,
                    lin(Projection::V)?,
                    lin(Projection::O)?,
                    lin(Projection::Gate)?,
                    lin(Projection::Up)?,
                    lin(Projection::Down)?,
                ],
            });
        }
        let norm = m.get(h, "norm.weight")?;
        // Tied unless the checkpoint carries its own head (what HF and candle-transformers do).
        let head = if vb.contains_tensor("lm_head.weight") { vb.get((v, h), "lm_head.weight")? } else { embed.clone() };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head: FrozenLinear::new(head, None),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            positional: Arc::new(Mutex::new(None)),
        })
    }

    /// Loads `config.json` and the safetensors weights of a HF model directory.
    ///
    /// # Errors
    /// [`TrainError::Model`] naming the missing or malformed file.
    pub fn load(dir: &Path, dtype: DType, dev: &Device) -> std::result::Result<Self, TrainError> {
        let cfg = read_config(dir)?;
        let files = weight_files(dir)?;
        // SAFETY: the files are memory-mapped read-only; we rely on nobody truncating a model
        // checkpoint while it is being loaded (the same contract as candle's examples).
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, dev) }
            .map_err(|e| TrainError::Model(format!("{}: {e}", dir.display())))?;
        Self::new(&cfg, vb).map_err(|e| TrainError::Model(format!("{}: {e}", dir.display())))
    }

    /// Builds a model from in-memory tensors (tests and benchmarks).
    pub fn from_tensors(cfg: &Qwen2Config, ts: HashMap<String, Tensor>, dtype: DType, dev: &Device) -> Result<Self> {
        Self::new(cfg, VarBuilder::from_tensors(ts, dtype, dev))
    }

    /// The base weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// RoPE `cos`/`sin` `[t, head_dim]` and the causal mask `[t, t]` (f32) for length `t`.
    fn positional(&self, t: usize) -> Result<(Tensor, Tensor, Tensor)> {
        // A poisoned lock only means another forward panicked; the cached tensors are immutable.
        let mut guard = self.positional.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = guard.as_ref().filter(|p| p.t == t) {
            return Ok((p.cos.clone(), p.sin.clone(), p.mask.clone()));
        }
        let rope = ops::RopeTables::new(t, self.cfg.head_dim(), self.cfg.rope_theta, self.dtype, &self.device)?;
        let mask = ops::causal_mask(t, DType::F32, &self.device)?;
        let p = Positional { t, cos: rope.cos, sin: rope.sin, mask };
        let out = (p.cos.clone(), p.sin.clone(), p.mask.clone());
        *guard = Some(p);
        Ok(out)
    }

    /// Final hidden states `[b, t, hidden]` (after the final norm) for `ids` `[b, t]` u32.
    pub fn hidden(&self, ids: &Tensor, ads: Option<&Adapters>, dropout: Option<DropoutKey>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim());
        let (cos, sin, mask) = self.positional(t)?;
        let proj = |layer: usize, m: usize, l: &Layer, x: &Tensor| -> Result<Tensor> {
            match ads {
                Some(a) => a.apply(&l.proj[m], x, layer, m, dropout),
                None => l.proj[m].forward(x),
            }
        };
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, cfg.hidden_size))?;
        for (li, l) in self.layers.iter().enumerate() {
            let hs = ops::rms_norm(&x, &l.ln1, cfg.rms_norm_eps)?;
            let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous();
            let q = heads(proj(li, 0, l, &hs)?, nh)?;
            let k = heads(proj(li, 1, l, &hs)?, nkv)?;
            let v = heads(proj(li, 2, l, &hs)?, nkv)?;
            let q = ops::rope(&q, &cos, &sin)?;
            let k = ops::rope(&k, &cos, &sin)?;
            // GQA without repeating K/V: the `g = nh / nkv` query heads that share a K/V head
            // are adjacent, so q viewed as [b, nkv, g·t, hd] multiplies each K/V head once. Same
            // products as HF's `repeat_kv`, minus two copies forward and their sums backward.
            let g = nh / nkv;
            let scores = q.reshape((b, nkv, g * t, hd))?.matmul(&k.t()?)?.reshape((b, nh, t, t))?;
            let probs = ops::causal_softmax(&scores, &mask, 1.0 / (hd as f64).sqrt())?;
            let attn = probs.reshape((b, nkv, g * t, t))?.matmul(&v)?.reshape((b, nh, t, hd))?;
            let attn = attn.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            x = (x + proj(li, 3, l, &attn)?)?;
            let hs = ops::rms_norm(&x, &l.ln2, cfg.rms_norm_eps)?;
            let gate = proj(li, 4, l, &hs)?;
            let up = proj(li, 5, l, &hs)?;
            x = (x + proj(li, 6, l, &ops::swiglu(&gate, &up)?)?)?;
        }
        ops::rms_norm(&x, &self.norm, cfg.rms_norm_eps)
    }

    /// Logits `[b, t, vocab]` in the base dtype at every position.
    pub fn logits(&self, ids: &Tensor, ads: Option<&Adapters>, dropout: Option<DropoutKey>) -> Result<Tensor> {
        self.lm_head.forward(&self.hidden(ids, ads, dropout)?)
    }

    /// Mean causal-LM cross-entropy over the shifted tokens of `ids` `[b, t]` (HF
    /// `ForCausalLMLoss` with `labels = input_ids`): the scalar f32 loss and the token count.
    pub fn loss(&self, ids: &Tensor, ads: Option<&Adapters>, dropout: Option<DropoutKey>) -> Result<(Tensor, usize)> {
        let (b, t) = ids.dims2()?;
        let hidden = self.hidden(ids, ads, dropout)?.narrow(1, 0, t - 1)?;
        let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
        let n = b * (t - 1);
        let hidden = hidden.reshape((n, self.cfg.hidden_size))?;
        let sum = super::head::head_loss_sum(&hidden, &self.lm_head, &targets, super::head::chunk_elems())?;
        Ok(((sum / n as f64)?, n))
    }
}

/// Parses `DIR/config.json`.
///
/// # Errors
/// [`TrainError::Model`] if it is missing or lacks a required field.
pub fn read_config(dir: &Path) -> std::result::Result<Qwen2Config, TrainError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| TrainError::Model(format!("missing or unreadable {}: {e}", path.display())))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::Model(format!("{}: {e}", path.display())))?;
    // transformers ≥ 5 writes `rope_parameters: {rope_theta, rope_type}` instead of `rope_theta`.
    if json.get("rope_theta").is_none() {
        let theta = json.get("rope_parameters").and_then(|r| r.get("rope_theta")).cloned();
        if let (Some(theta), Some(obj)) = (theta, json.as_object_mut()) {
            obj.insert("rope_theta".into(), theta);
        }
    }
    serde_json::from_value(json).map_err(|e| TrainError::Model(format!("{}: {e}", path.display())))
}

/// The weight files of a model directory: `model.safetensors`, or every shard named in
/// `model.safetensors.index.json`.
///
/// # Errors
/// [`TrainError::Model`] naming the missing file.
pub fn weight_files(dir: &Path) -> std::result::Result<Vec<PathBuf>, TrainError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| {
        TrainError::Model(format!(
            "missing weights in {}: neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        ))
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::Model(format!("{}: {e}", index.display())))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| TrainError::Model(format!("{}: no weight_map", index.display())))?;
    let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(TrainError::Model(format!("missing shard {}", missing.display())));
    }
    Ok(files)
}

/// Resolves a model path: an existing directory as is, else a hub id (`org/name`) in the
/// local Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`,
/// newest snapshot). Never downloads.
///
/// # Errors
/// [`TrainError::Model`] if neither exists.
pub fn resolve_model_dir(path: &str) -> std::result::Result<PathBuf, TrainError> {
    let p = PathBuf::from(path);
    if p.is_dir() {
        return Ok(p);
    }
    let hub = std::env::var_os("HF_HUB_CACHE").map(PathBuf::from).or_else(|| {
        std::env::var_os("HF_HOME")
            .map(|h| PathBuf::from(h).join("hub"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub")))
    });
    if let Some(hub) = hub {
        let snaps = hub.join(format!("models--{}", path.replace('/', "--"))).join("snapshots");
        if let Ok(rd) = std::fs::read_dir(&snaps) {
            let newest = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("config.json").is_file())
                .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
            if let Some(e) = newest {
                return Ok(e.path());
            }
        }
    }
    Err(TrainError::Model(format!("model {path:?}: no such directory, and not in the local Hugging Face cache")))
}
