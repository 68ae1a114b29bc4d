//! Fused causal attention softmax of scaled scores and its backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};

use super::{Real, dot, sum};

/// `softmax(scale · s + causal mask)` over the last dim of `s` `[.., t, t]`: row `i` of each
/// `t × t` block sees columns `0..=i`; the rest of the row is exactly 0 (as `exp(−inf)` is).
#[derive(Debug, Clone, Copy)]
struct CausalSoftmax {
    scale: f64,
}

/// dS of [`CausalSoftmax`] from `(probs, dprobs)`.
#[derive(Debug, Clone, Copy)]
struct CausalSoftmaxGrad {
    scale: f64,
}

fn softmax_fwd<T: Real>(x: &[T], t: usize, scale: f64) -> Vec<T> {
    let scale = T::of(scale);
    let mut out = vec![T::ZERO; x.len()];
    for (r, (row, o)) in x.chunks_exact(t).zip(out.chunks_exact_mut(t)).enumerate() {
        let n = r % t + 1;
        let (row, o) = (&row[..n], &mut o[..n]);
        let m = row.iter().fold(T::NEG_INFINITY, |m, &z| m.max(z * scale));
        for (o, &z) in o.iter_mut().zip(row) {
            *o = (z * scale - m).exp();
        }
        let inv = T::ONE / sum(o);
        o.iter_mut().for_each(|e| *e *= inv);
    }
    out
}

fn softmax_bwd<T: Real>(y: &[T], dy: &[T], t: usize, scale: f64) -> Vec<T> {
    let scale = T::of(scale);
    let mut out = vec![T::ZERO; y.len()];
    for (r, ((yr, g), o)) in y.chunks_exact(t).zip(dy.chunks_exact(t)).zip(out.chunks_exact_mut(t)).enumerate() {
        let n = r % t + 1;
        let c = dot(&yr[..n], &g[..n]);
        for ((o, &y), &g) in o[..n].iter_mut().zip(&yr[..n]).zip(&g[..n]) {
            *o = scale * y * (g - c);
        }
    }
    out
}

fn square_last(l: &Layout, op: &str) -> Result<usize> {
    let dims = l.shape().dims();
    match dims {
        [.., a, b] if a == b && *b > 0 => Ok(*b),
        _ => bail!("{op}: expected [.., t, t], got {:?}", l.shape()),
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let t = square_last(l, self.name())?;
        let out = dispatch!(self.name(), [(s, l) => x], |T| softmax_fwd::<T>(x, t, self.scale));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, probs: &Tensor, dprobs: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(probs.apply_op2_no_bwd(&dprobs.contiguous()?, &CausalSoftmaxGrad { scale: self.scale })?))
    }
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-causal-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let t = square_last(l1, self.name())?;
        if l1.shape() != l2.shape() {
            bail!("{}: gradient {:?} vs probabilities {:?}", self.name(), l2.shape(), l1.shape())
        }
        let out = dispatch!(self.name(), [(s1, l1) => y, (s2, l2) => g], |T| softmax_bwd::<T>(y, g, t, self.scale));
        Ok((out, l1.shape().clone()))
    }
}

/// Fused causal softmax of `scale · scores` (`[.., t, t]`, f32/f64).
pub(crate) fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { scale })
}
