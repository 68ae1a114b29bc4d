//! Fused RMSNorm (`Qwen2RMSNorm` in f32/f64) and its backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::{Real, dot};

/// `x · rsqrt(mean(x²) + eps) · w` over the last dim (`Qwen2RMSNorm` in f32/f64).
#[derive(Debug, Clone, Copy)]
struct RmsNorm {
    eps: f64,
}

/// dX of [`RmsNorm`] from `(x, w, dy)`.
#[derive(Debug, Clone, Copy)]
struct RmsNormGrad {
    eps: f64,
}

fn rms_fwd<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let mut out = vec![T::ZERO; x.len()];
    for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let r = T::ONE / (dot(row, row) / T::of(h as f64) + T::of(eps)).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
            *o = v * r * w;
        }
    }
    out
}

fn rms_bwd<T: Real>(x: &[T], w: &[T], dy: &[T], eps: f64) -> Vec<T> {
    let h = w.len();
    let hf = T::of(h as f64);
    let mut out = vec![T::ZERO; x.len()];
    for ((row, g), o) in x.chunks_exact(h).zip(dy.chunks_exact(h)).zip(out.chunks_exact_mut(h)) {
        let r = T::ONE / (dot(row, row) / hf + T::of(eps)).sqrt();
        // n = x·r, dn = dy·w; dx = r·(dn − n·mean(dn·n)) = r·dn − x·r³·mean(dy·w·x).
        let mut c = T::ZERO;
        for ((&v, &g), &w) in row.iter().zip(g).zip(w) {
            c += g * w * v;
        }
        let c = c / hf * r * r * r;
        for (((o, &v), &g), &w) in o.iter_mut().zip(row).zip(g).zip(w) {
            *o = r * g * w - v * c;
        }
    }
    out
}

fn rms_dims(l1: &Layout, l2: &Layout, op: &str) -> Result<()> {
    let h = l1.shape().dims().last().copied().unwrap_or(0);
    if l2.shape().dims() != [h] || h == 0 {
        bail!("{op}: weight {:?} does not match input {:?}", l2.shape(), l1.shape())
    }
    Ok(())
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        rms_dims(l1, l2, self.name())?;
        let out = dispatch!(self.name(), [(s1, l1) => x, (s2, l2) => w], |T| rms_fwd::<T>(x, w, self.eps));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &dy, &RmsNormGrad { eps: self.eps })?;
        // The model's norm weights are frozen: their gradient is only built when something
        // trains them.
        let dw = if w.track_op() {
            let ones = w.ones_like()?;
            let normed = x.apply_op2_no_bwd(&ones, &RmsNorm { eps: self.eps })?;
            let h = w.dim(0)?;
            Some((dy * normed)?.reshape(((), h))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        rms_dims(l1, l2, self.name())?;
        if l1.shape() != l3.shape() {
            bail!("{}: gradient {:?} vs input {:?}", self.name(), l3.shape(), l1.shape())
        }
        let out = dispatch!(self.name(), [(s1, l1) => x, (s2, l2) => w, (s3, l3) => g],
            |T| rms_bwd::<T>(x, w, g, self.eps));
        Ok((out, l1.shape().clone()))
    }
}

/// Fused [`RmsNorm`]: `x` `[.., h]` and `w` `[h]` in the same f32/f64 dtype.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}
