//! Fused SwiGLU product `silu(gate) · up` and its backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::{Real, split2, stacked_shape};

/// `silu(gate) · up`.
#[derive(Debug, Clone, Copy)]
struct SwiGlu;

/// `[d gate, d up]` stacked, from `(gate, up, dy)`.
#[derive(Debug, Clone, Copy)]
struct SwiGluGrad;

fn swiglu_fwd<T: Real>(g: &[T], u: &[T]) -> Vec<T> {
    // candle's (and torch's) silu: v / (1 + exp(−v)).
    g.iter().zip(u).map(|(&g, &u)| g / (T::ONE + (-g).exp()) * u).collect()
}

fn swiglu_bwd<T: Real>(g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
    let n = g.len();
    let mut out = vec![T::ZERO; 2 * n];
    let (dg, du) = out.split_at_mut(n);
    for i in 0..n {
        let sig = T::ONE / (T::ONE + (-g[i]).exp());
        let silu = g[i] * sig;
        du[i] = dy[i] * silu;
        dg[i] = dy[i] * u[i] * (sig + silu * (T::ONE - sig));
    }
    out
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("{}: gate {:?} vs up {:?}", self.name(), l1.shape(), l2.shape())
        }
        let out = dispatch!(self.name(), [(s1, l1) => g, (s2, l2) => u], |T| swiglu_fwd::<T>(g, u));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = split2(g.apply_op3_no_bwd(u, &dy.contiguous()?, &SwiGluGrad)?)?;
        Ok((Some(dg), Some(du)))
    }
}

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad"
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
        if l1.shape() != l2.shape() || l1.shape() != l3.shape() {
            bail!("{}: shapes {:?} {:?} {:?}", self.name(), l1.shape(), l2.shape(), l3.shape())
        }
        let out = dispatch!(self.name(), [(s1, l1) => g, (s2, l2) => u, (s3, l3) => dy], |T| swiglu_bwd::<T>(g, u, dy));
        Ok((out, stacked_shape(l1.shape())))
    }
}

/// Fused `silu(gate) · up` (same shape, f32/f64).
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}
