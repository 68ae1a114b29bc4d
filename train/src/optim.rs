//! AdamW over the adapter tensors, gradient accumulation and global-norm clipping, with
//! PyTorch semantics.
//!
//! - `torch.optim.AdamW` (single-tensor path, amsgrad off): with g the gradient,
//!   `p ← p·(1 − lr·wd)` (decoupled decay, applied before the update);
//!   `m ← β1·m + (1−β1)·g`; `v ← β2·v + (1−β2)·g²`;
//!   `p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)`.
//! - `torch.nn.utils.clip_grad_norm_`: total = ‖(‖g_i‖₂)_i‖₂; if `max_norm/(total+1e-6) < 1`,
//!   every g is multiplied by that factor.
//!
//! Our own implementation rather than `candle_nn::AdamW` so the state (m, v, step) is visible
//! for checkpointing and the update order matches torch exactly. All state is f32.

use candle_core::{Result, Tensor, Var, backprop::GradStore};

/// AdamW hyperparameters (torch defaults except lr and weight decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW state over a fixed list of Vars.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<Var>,
    /// First moments, one per var.
    pub m: Vec<Tensor>,
    /// Second moments, one per var.
    pub v: Vec<Tensor>,
    /// Steps taken (the `t` of the bias correction).
    pub step: u64,
}

impl AdamW {
    /// Zero state for `vars`.
    pub fn new(vars: Vec<Var>, cfg: AdamWConfig) -> Result<Self> {
        let m = vars.iter().map(|v| v.zeros_like()).collect::<Result<Vec<_>>>()?;
        let v = vars.iter().map(|v| v.zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg, vars, m, v, step: 0 })
    }

    /// The optimised Vars, in order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// One update at learning rate `lr` with `grads[i]` the gradient of `vars[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for (i, var) in self.vars.iter().enumerate() {
            let g = &grads[i];
            let p = var.as_tensor();
            // torch: param.mul_(1 - lr * weight_decay)
            let p = (p * (1.0 - lr * c.weight_decay))?;
            self.m[i] = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((self.v[i].sqrt()? / bc2_sqrt)? + c.eps)?;
            let upd = (self.m[i].div(&denom)? * (lr / bc1))?;
            var.set(&(p - upd)?)?;
        }
        Ok(())
    }
}

/// Running sum of gradients over the micro-batches of one optimizer step.
#[derive(Debug)]
pub struct GradAccum {
    /// One sum per var (zeros until the first micro-batch lands).
    pub sums: Vec<Tensor>,
}

impl GradAccum {
    /// Zero sums shaped like `vars`.
    pub fn new(vars: &[Var]) -> Result<Self> {
        Ok(Self { sums: vars.iter().map(|v| v.zeros_like()).collect::<Result<Vec<_>>>()? })
    }

    /// Adds one backward pass's gradients (missing entries count as zero: e.g. B's gradient
    /// is exactly zero-path when A = 0, but candle still reports it; A var unused → none).
    pub fn add(&mut self, vars: &[Var], grads: &GradStore) -> Result<()> {
        for (i, v) in vars.iter().enumerate() {
            if let Some(g) = grads.get(v) {
                self.sums[i] = (&self.sums[i] + g.to_dtype(self.sums[i].dtype())?)?;
            }
        }
        Ok(())
    }

    /// Resets the sums to zero.
    pub fn clear(&mut self) -> Result<()> {
        for s in &mut self.sums {
            *s = s.zeros_like()?;
        }
        Ok(())
    }
}

/// Global L2 norm of `grads` (f64).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads {
        sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// `clip_grad_norm_`: scales `grads` in place so the global norm is at most `max_norm`;
/// returns the norm before clipping. Non-finite norms are returned without scaling (torch
/// would propagate NaN into the parameters; the caller flags divergence instead).
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let total = global_norm(grads)?;
    let coef = max_norm / (total + 1e-6);
    if total.is_finite() && coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    /// A scalar AdamW in plain f64, transcribed from torch's `_single_tensor_adamw`.
    fn torch_adamw(p: &mut f64, m: &mut f64, v: &mut f64, g: f64, lr: f64, t: i32, c: AdamWConfig) {
        *p *= 1.0 - lr * c.weight_decay;
        *m = c.beta1 * *m + (1.0 - c.beta1) * g;
        *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let denom = v.sqrt() / bc2.sqrt() + c.eps;
        *p -= lr / bc1 * *m / denom;
    }

    #[test]
    fn adamw_matches_a_scalar_transcription_of_torch() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let init = [0.5f64, -1.25, 2.0, 0.0];
        let var = Var::from_tensor(&Tensor::new(&init, &dev)?)?;
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(vec![var.clone()], cfg)?;
        let mut want = init;
        let (mut m, mut v) = ([0.0; 4], [0.0; 4]);
        for step in 1..=5 {
            let gs: Vec<f64> = (0..4).map(|i| ((step * 7 + i * 3) % 5) as f64 - 2.0 + 0.1 * i as f64).collect();
            let lr = [0.0, 1e-3, 2e-3, 5e-3, 1e-2][step as usize - 1];
            opt.step(&[Tensor::new(gs.as_slice(), &dev)?], lr)?;
            for i in 0..4 {
                torch_adamw(&mut want[i], &mut m[i], &mut v[i], gs[i], lr, step, cfg);
            }
        }
        let got: Vec<f64> = var.as_tensor().to_vec1()?;
        for i in 0..4 {
            assert!((got[i] - want[i]).abs() < 1e-12, "{i}: {} vs {}", got[i], want[i]);
        }
        assert_eq!(opt.step, 5);
        Ok(())
    }

    #[test]
    fn lr_zero_step_still_moves_moments_but_not_params() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &dev)?)?;
        let mut opt = AdamW::new(vec![var.clone()], AdamWConfig::default())?;
        opt.step(&[Tensor::new(&[0.5f32, -0.5], &dev)?], 0.0)?;
        assert_eq!(var.as_tensor().to_vec1::<f32>()?, vec![1.0, 2.0]);
        assert!(opt.m[0].abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    #[test]
    fn clipping_follows_torch() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let mut g = vec![Tensor::new(&[3.0f32, 0.0], &dev)?, Tensor::new(&[4.0f32], &dev)?];
        let total = clip_grad_norm(&mut g, 1.0)?;
        assert!((total - 5.0).abs() < 1e-9);
        let after = global_norm(&g)?;
        assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-6, "{after}");
        let mut small = vec![Tensor::new(&[0.3f32], &dev)?];
        clip_grad_norm(&mut small, 1.0)?;
        assert_eq!(small[0].to_vec1::<f32>()?, vec![0.3]);
        let _ = DType::F32;
        Ok(())
    }
}
