//! Fused rotary embedding (HF `apply_rotary_pos_emb`, non-interleaved) and its backward.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::Real;

/// Rotary embedding (HF `apply_rotary_pos_emb`, non-interleaved) of `x` `[.., t, d]` with
/// `cos`/`sin` `[t, d]`; `inverse` applies the transpose (the backward).
#[derive(Debug, Clone, Copy)]
struct Rope {
    inverse: bool,
}

fn rope_kernel<T: Real>(x: &[T], cos: &[T], sin: &[T], d: usize, inverse: bool) -> Vec<T> {
    let half = d / 2;
    let table = cos.len();
    let mut out = vec![T::ZERO; x.len()];
    for (r, (row, o)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
        let off = (r * d) % table;
        let (c, s) = (&cos[off..off + d], &sin[off..off + d]);
        let (x1, x2) = row.split_at(half);
        let (o1, o2) = o.split_at_mut(half);
        if inverse {
            // y1 = x1·c1 − x2·s1, y2 = x2·c2 + x1·s2  ⇒  dx1 = dy1·c1 + dy2·s2, dx2 = dy2·c2 − dy1·s1.
            for j in 0..half {
                o1[j] = x1[j] * c[j] + x2[j] * s[half + j];
                o2[j] = x2[j] * c[half + j] - x1[j] * s[j];
            }
        } else {
            for j in 0..half {
                o1[j] = x1[j] * c[j] + -x2[j] * s[j];
                o2[j] = x2[j] * c[half + j] + x1[j] * s[half + j];
            }
        }
    }
    out
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
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
        let dims = l1.shape().dims();
        let (t, d) = l2.shape().dims2()?;
        if dims.len() < 2 || dims[dims.len() - 2..] != [t, d] || l3.shape() != l2.shape() || d % 2 != 0 {
            bail!("{}: x {:?} vs tables {:?}/{:?}", self.name(), l1.shape(), l2.shape(), l3.shape())
        }
        let inverse = self.inverse;
        let out = dispatch!(self.name(), [(s1, l1) => x, (s2, l2) => c, (s3, l3) => s],
            |T| rope_kernel::<T>(x, c, s, d, inverse));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = dy.contiguous()?.apply_op3_no_bwd(cos, sin, &Rope { inverse: !self.inverse })?;
        Ok((Some(dx), None, None))
    }
}

/// Fused RoPE: `x` `[.., t, d]`, `cos`/`sin` `[t, d]` (the tables get no gradient).
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { inverse: false })
}
