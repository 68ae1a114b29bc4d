//! LoRA adapters: `y = W·x + b + (alpha/r)·B(A(dropout(x)))` (PEFT `lora.Linear.forward`,
//! `huggingface/peft: src/peft/tuners/lora/layer.py`).
//!
//! The adapters live apart from the frozen base model ([`super::model::Qwen2Model`]) so that a
//! resident base can be reused across jobs with fresh adapters. A and B are f32 `Var`s (PEFT
//! keeps them in the parameter dtype, fp32); as in PEFT, the adapter branch runs in f32 and its
//! output is cast to the base dtype when the base is bf16. Dropout uses our own seeded stream
//! keyed by (seed, micro-batch, layer, module), so a run is reproducible; it is off in eval.

use candle_core::{DType, Device, Result, Tensor, Var};
use lorasweep_common::LoraInit;
use lorasweep_common::job::LoraSpec;

use super::frozen::FrozenLinear;
use lorasweep_common::Projection;

use super::init::init_lora;
use super::rng::{Purpose, dropout_mask, stream};
use crate::TrainError;

/// The PEFT tensor-name prefix of a projection: `base_model.model.model.layers.{L}.{self_attn|mlp}.{m}`.
pub fn peft_prefix(layer: usize, module: Projection) -> String {
    format!("base_model.model.model.layers.{layer}.{}.{}", module.block(), module.name())
}

/// One adapter pair on one projection.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Decoder layer index.
    pub layer: usize,
    /// The projection it sits on.
    pub module: Projection,
    /// `lora_A.weight`, `[r, d_in]`, f32.
    pub a: Var,
    /// `lora_B.weight`, `[d_out, r]`, f32.
    pub b: Var,
}

/// All adapters of a job, with their shared scale and dropout.
#[derive(Debug, Clone)]
pub struct Adapters {
    /// Rank.
    pub r: usize,
    /// `alpha`; the update is scaled by `alpha / r` (not rsLoRA).
    pub alpha: f64,
    /// Dropout probability on the adapter input during training.
    pub dropout: f64,
    /// Adapters in (layer, module) order.
    pub list: Vec<Adapter>,
    /// `index[layer][Projection::index]` → position in `list`.
    index: Vec<[Option<usize>; 7]>,
    /// False for an eval view ([`Adapters::for_eval`]): the forward uses detached A/B, so no
    /// autograd graph is recorded and activations are freed as soon as they are consumed.
    track_grads: bool,
}

/// Per-forward dropout state: `None` in eval mode.
#[derive(Debug, Clone, Copy)]
pub struct DropoutKey {
    /// The job's seed.
    pub seed: u64,
    /// The global micro-batch counter (so every micro-batch draws fresh masks).
    pub micro_step: u64,
}

impl Adapters {
    /// Fresh adapters for every `(layer, target)` with the given init. `dims(module)` gives
    /// `(d_in, d_out)` of a projection.
    ///
    /// # Errors
    /// [`TrainError::Invalid`] for an unknown target or a rank the init refuses.
    pub fn init(
        spec: &LoraSpec,
        init: LoraInit,
        seed: u64,
        n_layers: usize,
        dims: &dyn Fn(Projection) -> (usize, usize),
        dev: &Device,
    ) -> std::result::Result<Self, TrainError> {
        let mut list = Vec::new();
        for layer in 0..n_layers {
            for t in &spec.targets {
                let module = target(t)?;
                let (d_in, d_out) = dims(module);
                let v = init_lora(init, spec.r, d_in, d_out, seed, layer, module.index() as u64)?;
                let a = Var::from_vec(v.a, (spec.r, d_in), dev)?;
                let b = Var::from_vec(v.b, (d_out, spec.r), dev)?;
                list.push(Adapter { layer, module, a, b });
            }
        }
        Self::from_list(spec, n_layers, list)
    }

    /// Builds the container from explicit adapters (e.g. loaded from a PEFT directory).
    ///
    /// # Errors
    /// [`TrainError::Invalid`] if an adapter's layer is out of range or a pair is duplicated.
    pub fn from_list(spec: &LoraSpec, n_layers: usize, list: Vec<Adapter>) -> std::result::Result<Self, TrainError> {
        let mut index = vec![[None; 7]; n_layers];
        for (i, ad) in list.iter().enumerate() {
            let m = ad.module.index();
            let slot = index
                .get_mut(ad.layer)
                .ok_or_else(|| TrainError::Invalid(format!("adapter layer {} out of range", ad.layer)))?;
            if slot[m].replace(i).is_some() {
                return Err(TrainError::Invalid(format!("duplicate adapter {}", peft_prefix(ad.layer, ad.module))));
            }
        }
        Ok(Self { r: spec.r, alpha: spec.alpha, dropout: spec.dropout, list, index, track_grads: true })
    }

    /// A view sharing the same A/B storage whose forward records no gradient graph (for eval).
    pub fn for_eval(&self) -> Self {
        Self { track_grads: false, ..self.clone() }
    }

    /// The adapter on `(layer, module)`, if any.
    pub fn get(&self, layer: usize, module: usize) -> Option<&Adapter> {
        self.index.get(layer).and_then(|s| s[module]).map(|i| &self.list[i])
    }

    /// All trainable Vars, A then B per adapter, in a fixed order (the optimizer's order).
    pub fn vars(&self) -> Vec<Var> {
        self.list.iter().flat_map(|a| [a.a.clone(), a.b.clone()]).collect()
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.list.iter().map(|a| a.a.elem_count() + a.b.elem_count()).sum()
    }

    /// `base(x) + (alpha/r)·B(A(dropout(x)))` on a frozen projection.
    pub(crate) fn apply(
        &self,
        base: &FrozenLinear,
        x: &Tensor,
        layer: usize,
        module: usize,
        dropout: Option<DropoutKey>,
    ) -> Result<Tensor> {
        let y = base.forward(x)?;
        let Some(ad) = self.get(layer, module) else {
            return Ok(y);
        };
        // PEFT computes the adapter branch in the adapter's dtype (fp32): it casts the input to
        // `lora_A.weight.dtype` (`_cast_input_dtype`) and casts the sum back to the base dtype.
        // Doing the same keeps bf16 rounding out of the A/B gradients; the branch is rank r, so
        // the f32 cost is small.
        let work = ad.a.dtype();
        let xw = cast(x, work)?;
        let x_in = match dropout {
            Some(key) if self.dropout > 0.0 => xw.mul(&self.dropout_mask(x, work, key, layer, module)?)?,
            _ => xw,
        };
        let d_in = x.dim(candle_core::D::Minus1)?;
        let n = x.elem_count() / d_in;
        let (a, b) = if self.track_grads {
            (ad.a.as_tensor().clone(), ad.b.as_tensor().clone())
        } else {
            (ad.a.as_tensor().detach(), ad.b.as_tensor().detach())
        };
        let x2 = x_in.reshape((n, d_in))?;
        let scale = self.alpha / self.r as f64;
        let h = if super::fused::fusable(&x2) && a.dtype() == x2.dtype() {
            super::fused::lora_branch(&x2, &a, &b, scale)?
        } else {
            (x2.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?
        };
        let h = cast(&h, y.dtype())?;
        y.add(&h.reshape(y.shape())?)
    }
}

impl Adapters {
    /// The dropout keep-mask (`1/(1-p)` or 0) for one adapter input.
    ///
    /// On CPU it comes from our ChaCha stream keyed by (seed, micro-batch, layer, module). On a
    /// GPU, drawing ~10⁸ numbers per micro-batch on the host would starve the device, so the
    /// mask comes from the device RNG, which [`super::run::train_loop`] seeds from the job seed:
    /// reproducible on the same device, but not the same masks as on CPU.
    fn dropout_mask(&self, x: &Tensor, dtype: DType, key: DropoutKey, layer: usize, module: usize) -> Result<Tensor> {
        if x.device().is_cpu() {
            let mut rng = stream(key.seed, Purpose::Dropout, &[key.micro_step, layer as u64, module as u64]);
            let mask = dropout_mask(&mut rng, x.elem_count(), self.dropout);
            Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(dtype)
        } else {
            let keep = Tensor::rand(0f32, 1f32, x.shape(), x.device())?.ge(self.dropout)?;
            keep.to_dtype(dtype)? * (1.0 / (1.0 - self.dropout))
        }
    }
}

/// `to_dtype` only when needed (keeps the f32 graph short).
fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype { Ok(t.clone()) } else { t.to_dtype(dtype) }
}

/// The projection a sweep file's target names.
fn target(name: &str) -> std::result::Result<Projection, TrainError> {
    name.parse().map_err(|e| TrainError::Invalid(format!("LoRA target: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::rand_f64;

    fn spec(targets: &[&str], dropout: f64) -> LoraSpec {
        LoraSpec { r: 4, alpha: 8.0, dropout, targets: targets.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn forward_is_base_plus_scaled_low_rank_update() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let w = rand_f64(&[6, 5], 1).to_dtype(DType::F32)?;
        let base = FrozenLinear::new(w.clone(), None);
        let ads = Adapters::init(&spec(&["q_proj"], 0.0), LoraInit::OrthoQrConst, 3, 1, &|_| (5, 6), &dev)?;
        let x = rand_f64(&[2, 3, 5], 2).to_dtype(DType::F32)?;
        let y = ads.apply(&base, &x, 0, 0, None)?;
        let ad = ads.get(0, 0).expect("q_proj adapter");
        let want = x
            .broadcast_matmul(&w.t()?)?
            .add(&(x.broadcast_matmul(&ad.a.t()?)?.broadcast_matmul(&ad.b.t()?)? * 2.0)?)?;
        let diff = (y - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        // No adapter on k_proj: the base output passes through unchanged.
        let yk = ads.apply(&base, &x, 0, 1, None)?;
        let diff = (yk - x.broadcast_matmul(&w.t()?)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6);
        Ok(())
    }

    #[test]
    fn dropout_is_seeded_per_micro_step_and_off_in_eval() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let base = FrozenLinear::new(Tensor::zeros((6, 5), DType::F32, &dev)?, None);
        let ads = Adapters::init(&spec(&["v_proj"], 0.5), LoraInit::OrthoQrMatch, 3, 1, &|_| (5, 6), &dev)?;
        let x = rand_f64(&[4, 5], 2).to_dtype(DType::F32)?;
        let k = |s| Some(DropoutKey { seed: 9, micro_step: s });
        let a = ads.apply(&base, &x, 0, 2, k(0))?.flatten_all()?.to_vec1::<f32>()?;
        let a2 = ads.apply(&base, &x, 0, 2, k(0))?.flatten_all()?.to_vec1::<f32>()?;
        let b = ads.apply(&base, &x, 0, 2, k(1))?.flatten_all()?.to_vec1::<f32>()?;
        let e = ads.apply(&base, &x, 0, 2, None)?.flatten_all()?.to_vec1::<f32>()?;
        let e2 = ads.apply(&base, &x, 0, 2, None)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_ne!(a, e);
        assert_eq!(e, e2);
        Ok(())
    }

    #[test]
    fn unknown_target_and_peft_names() {
        let err =
            Adapters::init(&spec(&["qkv"], 0.0), LoraInit::Standard, 0, 1, &|_| (4, 4), &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("qkv"));
        assert_eq!(peft_prefix(3, Projection::K), "base_model.model.model.layers.3.self_attn.k_proj");
        assert_eq!(peft_prefix(0, Projection::Up), "base_model.model.model.layers.0.mlp.up_proj");
    }
}
