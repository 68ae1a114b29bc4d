//! Autograd-safe primitives for the training forward pass, built only from core candle ops
//! that implement a backward.
//!
//! candle-nn's fused `rms_norm`, `softmax_last_dim` and `rotary_emb::rope` return detached
//! tensors: `backward()` succeeds but upstream Vars silently get no gradient (candle-notes §1).
//! Every op here is checked against finite differences in this module's tests.
//!
//! Formulas follow HF transformers `modeling_qwen2.py` (`Qwen2RMSNorm`, `rotate_half`,
//! `apply_rotary_pos_emb`, eager attention with an f32 softmax) and torch's
//! `F.cross_entropy` (mean over targets).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, D, DType, Device, Layout, Result, Shape, Tensor};

use rayon::prelude::*;

use super::fused;

/// The dtype reductions run in: f32, or f64 for f64 inputs (f64 is only used by the
/// finite-difference tests, which need the extra precision end to end).
fn work_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 { DType::F64 } else { DType::F32 }
}

/// RMSNorm as in `Qwen2RMSNorm`: computed in f32, normalised value cast back to the input
/// dtype, then multiplied by the weight (`weight * hs.to(input_dtype)`). One fused op on the
/// CPU in f32/f64 ([`fused::rms_norm`]), [`rms_norm_plain`] elsewhere.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::fusable(x) && weight.dtype() == x.dtype() {
        return fused::rms_norm(x, weight, eps);
    }
    rms_norm_plain(x, weight, eps)
}

/// [`rms_norm`] from core ops only (any device and dtype; the fused op's reference).
pub(crate) fn rms_norm_plain(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(work_dtype(dtype))?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(&weight.to_dtype(dtype)?)
}

/// Precomputed RoPE tables for positions `0..seq_len`: `cos`, `sin` of shape `[seq_len, head_dim]`
/// (the half-dim frequencies concatenated twice, as HF `Qwen2RotaryEmbedding` does).
#[derive(Debug, Clone)]
pub(crate) struct RopeTables {
    /// `cos(pos · inv_freq)`, duplicated over both halves.
    pub(crate) cos: Tensor,
    /// `sin(pos · inv_freq)`, duplicated over both halves.
    pub(crate) sin: Tensor,
}

impl RopeTables {
    /// Tables for `seq_len` positions, `inv_freq_i = theta^(-2i/head_dim)`, computed in f64 and
    /// stored in `dtype`.
    pub(crate) fn new(seq_len: usize, head_dim: usize, theta: f64, dtype: DType, dev: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * head_dim);
        let mut sin = Vec::with_capacity(seq_len * head_dim);
        for pos in 0..seq_len {
            // The half-dim frequencies appear twice (`emb = cat(freqs, freqs)`).
            for _ in 0..2 {
                for i in 0..half {
                    // HF computes inv_freq in f32 (`1.0 / base ** (arange(0, dim, 2).float() / dim)`).
                    let inv = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
                    let angle = pos as f32 * inv;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (seq_len, head_dim), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (seq_len, head_dim), dev)?.to_dtype(dtype)?;
        Ok(Self { cos, sin })
    }

    /// The tables for the first `t` positions (tests build a long table and use a prefix).
    #[cfg(test)]
    pub(crate) fn narrow(&self, t: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?))
    }
}

/// HF `rotate_half`: `cat(-x[..., d/2:], x[..., :d/2])`.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Rotary embedding, non-interleaved (HF `apply_rotary_pos_emb`): `x·cos + rotate_half(x)·sin`.
/// `x` is `[b, heads, t, head_dim]`; `cos`/`sin` are `[t, head_dim]`. Fused on the CPU in
/// f32/f64 ([`fused::rope`]), [`rope_plain`] elsewhere.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused::fusable(x) && cos.dtype() == x.dtype() && sin.dtype() == x.dtype() {
        return fused::rope(x, cos, sin);
    }
    rope_plain(x, cos, sin)
}

/// [`rope`] from core ops only (the fused op's reference).
pub(crate) fn rope_plain(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = cos.to_dtype(x.dtype())?;
    let sin = sin.to_dtype(x.dtype())?;
    x.broadcast_mul(&cos)?.add(&rotate_half(x)?.broadcast_mul(&sin)?)
}

/// An additive causal mask `[t, t]`: 0 on and below the diagonal, -inf above.
pub(crate) fn causal_mask(t: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, t), dev)?.to_dtype(dtype)
}

/// Softmax over the last dim from max/exp/sum/div, which all have a backward
/// (unlike `candle_nn::ops::softmax_last_dim`).
pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// Causal attention probabilities `softmax(scores · scale + mask)` (HF eager attention: the
/// scaled scores in the model dtype, the softmax in f32, cast back). `scores` is `[b, h, t, t]`,
/// `mask` `[t, t]` f32 (only the plain path reads it: the fused one masks by position). Fused
/// on the CPU in f32/f64 ([`fused::causal_softmax`]), [`causal_softmax_plain`] elsewhere.
pub(crate) fn causal_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if fused::fusable(scores) {
        return fused::causal_softmax(scores, scale);
    }
    causal_softmax_plain(scores, mask, scale)
}

/// [`causal_softmax`] from core ops only (the fused op's reference).
pub(crate) fn causal_softmax_plain(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = scores.dtype();
    let wd = work_dtype(dtype);
    let s = (scores * scale)?.to_dtype(wd)?.broadcast_add(&mask.to_dtype(wd)?)?;
    softmax_last(&s)?.to_dtype(dtype)
}

/// The SwiGLU product `silu(gate) · up`: fused on the CPU in f32/f64 ([`fused::swiglu`]),
/// [`swiglu_plain`] elsewhere.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused::fusable(gate) && up.dtype() == gate.dtype() {
        return fused::swiglu(gate, up);
    }
    swiglu_plain(gate, up)
}

/// [`swiglu`] from core ops only (the fused op's reference).
pub(crate) fn swiglu_plain(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// Per-row `logsumexp(logits) - logits[target]`, summed over rows, in f32. `logits` is
/// `[n, vocab]`, `targets` `[n]` u32. Divide by the token count for torch's mean CE.
///
/// On CPU this is one fused op ([`FusedCrossEntropySum`]): at a 152k vocabulary the plain
/// composition allocates (and page-faults in) about eight `[n, vocab]` tensors per step, the
/// fused one a single gradient. Elsewhere it is [`cross_entropy_sum_plain`], which the tests
/// use as the gradient reference.
pub(crate) fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !logits.device().is_cpu() {
        return cross_entropy_sum_plain(logits, targets);
    }
    let logits = logits.to_dtype(work_dtype(logits.dtype()))?.contiguous()?;
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    logits.apply_op2(&targets, FusedCrossEntropySum)
}

/// The gradient of [`cross_entropy_sum`] with respect to the logits, `softmax(row) −
/// onehot(target)`, in the work dtype, without autograd: the fused kernel on the CPU, a softmax
/// and a scatter-add elsewhere.
pub(crate) fn cross_entropy_grad(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(work_dtype(logits.dtype()))?.contiguous()?;
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    if logits.device().is_cpu() {
        return logits.apply_op2_no_bwd(&targets, &FusedCrossEntropyGrad { scale: 1.0 });
    }
    cross_entropy_grad_plain(&logits, &targets)
}

/// [`cross_entropy_grad`] from core ops (any device).
pub(crate) fn cross_entropy_grad_plain(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::softmax_last_dim(logits)?;
    let minus_one = Tensor::full(-1f32, (p.dim(0)?, 1), p.device())?.to_dtype(p.dtype())?;
    p.scatter_add(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, &minus_one, 1)
}

/// [`cross_entropy_sum`] from core ops only (any device; the fused op's reference).
pub(crate) fn cross_entropy_sum_plain(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(work_dtype(logits.dtype()))?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    lse.sub(&picked)?.sum_all()
}

/// CPU cross-entropy summed over rows: `(logits [n, v] f32/f64 contiguous, targets [n] u32)`
/// → scalar. Forward takes one max pass and one exp pass per row (accumulating in f64) and
/// allocates nothing vocab-sized; backward gives the logits `g · (softmax − onehot(target))`
/// in one allocation and the targets no gradient.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedCrossEntropySum;

/// The backward of [`FusedCrossEntropySum`], scaled by the incoming gradient.
#[derive(Debug, Clone, Copy)]
struct FusedCrossEntropyGrad {
    scale: f64,
}

/// Contiguous `(logits rows, targets)` slices of the op's inputs, checked against each other.
fn ce_inputs<'a, T>(x: &'a [T], l1: &Layout, t: &'a CpuStorage, l2: &Layout) -> Result<(&'a [T], &'a [u32], usize)> {
    let (n, v) = l1.shape().dims2()?;
    let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
        candle_core::bail!("fused cross-entropy: non-contiguous inputs")
    };
    let CpuStorage::U32(t) = t else { candle_core::bail!("fused cross-entropy: targets must be u32") };
    if d - c != n {
        candle_core::bail!("fused cross-entropy: {n} rows but {} targets", d - c)
    }
    if let Some(&bad) = t[c..d].iter().find(|&&k| k as usize >= v) {
        candle_core::bail!("fused cross-entropy: target {bad} out of range for vocab {v}")
    }
    Ok((&x[a..b], &t[c..d], v))
}

/// `Σ f(z − m)` over `row`, accumulated in f64 over eight lanes: the `f` of a block of eight is
/// computed apart from the (serial) f64 adds, so that it vectorises.
#[inline(always)]
fn exp_sum_f64<T: Copy + Default + std::ops::Sub<Output = T>>(row: &[T], m: T, f: impl Fn(T) -> T) -> f64
where
    f64: From<T>,
{
    let mut acc = [0f64; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        let mut e = [T::default(); 8];
        for k in 0..8 {
            e[k] = f(c[k] - m);
        }
        for k in 0..8 {
            acc[k] += f64::from(e[k]);
        }
    }
    chunks.remainder().iter().fold(acc.iter().sum(), |s, &z| s + f64::from(f(z - m)))
}

/// Logit elements from which the cross-entropy kernels split rows over rayon's pool (the one
/// candle's matmuls use): a 0.5B-shape step's 255 × 151,936 logits are well above it, a tiny
/// model's 255 × 320 well below (there the hand-off would cost more than it saves).
const CE_PARALLEL_MIN: usize = 1 << 20;

/// Stamps the f32 and f64 kernels: per-row (max, logsumexp) and the gradient rows.
macro_rules! ce_kernels {
    ($fwd:ident, $bwd:ident, $t:ty, $exp:path) => {
        /// Σ_rows logsumexp(row) − row[target]. Rows run in parallel at a large vocabulary;
        /// the per-row losses are then summed in row order, so the result is the same bits at
        /// any thread count.
        fn $fwd(x: &[$t], t: &[u32], v: usize) -> f64 {
            let row_loss = |(row, &k): (&[$t], &u32)| {
                let m = row.iter().copied().fold(<$t>::NEG_INFINITY, <$t>::max);
                let s = exp_sum_f64(row, m, |z| $exp(z));
                f64::from(m) + s.ln() - f64::from(row[k as usize])
            };
            if x.len() < CE_PARALLEL_MIN {
                return x.chunks_exact(v).zip(t).map(row_loss).sum();
            }
            let losses: Vec<f64> = x.par_chunks_exact(v).zip(t.par_iter()).map(row_loss).collect();
            losses.iter().sum()
        }

        /// `scale · (softmax(row) − onehot(target))` for every row (rows in parallel at a
        /// large vocabulary; each row is computed alone, so the bits do not depend on it).
        fn $bwd(x: &[$t], t: &[u32], v: usize, scale: f64) -> Vec<$t> {
            let mut out = vec![0 as $t; x.len()];
            let grad_row = |((row, o), &k): ((&[$t], &mut [$t]), &u32)| {
                let m = row.iter().copied().fold(<$t>::NEG_INFINITY, <$t>::max);
                for (o, &z) in o.iter_mut().zip(row) {
                    *o = $exp(z - m);
                }
                let s = exp_sum_f64(o, 0 as $t, |e| e);
                let c = (scale / s) as $t;
                o.iter_mut().for_each(|e| *e *= c);
                o[k as usize] -= scale as $t;
            };
            if x.len() < CE_PARALLEL_MIN {
                x.chunks_exact(v).zip(out.chunks_exact_mut(v)).zip(t).for_each(grad_row);
            } else {
                x.par_chunks_exact(v).zip(out.par_chunks_exact_mut(v)).zip(t.par_iter()).for_each(grad_row);
            }
            out
        }
    };
}
ce_kernels!(ce_fwd_f32, ce_bwd_f32, f32, fused::fast_exp);
ce_kernels!(ce_fwd_f64, ce_bwd_f64, f64, f64::exp);

impl CustomOp2 for FusedCrossEntropySum {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-sum"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(x) => {
                let (x, t, v) = ce_inputs(x, l1, s2, l2)?;
                CpuStorage::F32(vec![ce_fwd_f32(x, t, v) as f32])
            }
            CpuStorage::F64(x) => {
                let (x, t, v) = ce_inputs(x, l1, s2, l2)?;
                CpuStorage::F64(vec![ce_fwd_f64(x, t, v)])
            }
            other => candle_core::bail!("fused cross-entropy: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let g = logits.apply_op2_no_bwd(targets, &FusedCrossEntropyGrad { scale })?;
        Ok((Some(g), None))
    }
}

impl CustomOp2 for FusedCrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(x) => {
                let (x, t, v) = ce_inputs(x, l1, s2, l2)?;
                CpuStorage::F32(ce_bwd_f32(x, t, v, self.scale))
            }
            CpuStorage::F64(x) => {
                let (x, t, v) = ce_inputs(x, l1, s2, l2)?;
                CpuStorage::F64(ce_bwd_f64(x, t, v, self.scale))
            }
            other => candle_core::bail!("fused cross-entropy: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Token-mean cross-entropy (`F.cross_entropy`, reduction "mean") in f32: the tests' check
/// of the sum the head computes against candle-nn's.
#[cfg(test)]
pub(crate) fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let n = targets.dim(0)?;
    cross_entropy_sum(logits, targets)? / n as f64
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::{Var, backprop::GradStore};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// A random f64 tensor of `shape` from a seeded RNG, values in [-1, 1).
    pub(crate) fn rand_f64(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches")
    }

    /// Compares the autograd gradient of `f` (a scalar function) w.r.t. `var` against central
    /// finite differences on every element (f64). Returns the worst relative error.
    pub(crate) fn check_grad(var: &Var, f: &dyn Fn() -> Result<Tensor>) -> anyhow::Result<f64> {
        let loss = f()?;
        let grads: GradStore = loss.backward()?;
        let g = grads.get(var).ok_or_else(|| anyhow::anyhow!("no gradient for var"))?;
        let g: Vec<f64> = g.flatten_all()?.to_vec1()?;
        let base: Vec<f64> = var.as_tensor().flatten_all()?.to_vec1()?;
        let shape = var.as_tensor().shape().clone();
        let h = 1e-6;
        let mut worst: f64 = 0.0;
        let scale = g.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-3);
        for i in 0..base.len() {
            let mut p = base.clone();
            p[i] += h;
            var.set(&Tensor::from_vec(p.clone(), &shape, &Device::Cpu)?)?;
            let lp = f()?.to_scalar::<f64>()?;
            p[i] -= 2.0 * h;
            var.set(&Tensor::from_vec(p, &shape, &Device::Cpu)?)?;
            let lm = f()?.to_scalar::<f64>()?;
            let fd = (lp - lm) / (2.0 * h);
            worst = worst.max((fd - g[i]).abs() / scale);
        }
        var.set(&Tensor::from_vec(base, &shape, &Device::Cpu)?)?;
        Ok(worst)
    }

    /// A fixed random projection so that the scalar loss depends on every output element.
    fn probe(shape: &[usize]) -> Tensor {
        rand_f64(shape, 999)
    }

    #[test]
    fn rms_norm_grads_match_finite_differences() -> anyhow::Result<()> {
        let x = Var::from_tensor(&rand_f64(&[2, 3, 8], 1))?;
        let w = Var::from_tensor(&rand_f64(&[8], 2))?;
        let p = probe(&[2, 3, 8]);
        // Both the fused CPU op and the plain composition it is checked against.
        for norm in [rms_norm, rms_norm_plain] {
            let f = || norm(x.as_tensor(), w.as_tensor(), 1e-6)?.mul(&p)?.sum_all();
            assert!(check_grad(&x, &f)? < 1e-6);
            assert!(check_grad(&w, &f)? < 1e-6);
        }
        // The f32 path (the production dtype) agrees with the f64 one: y_i = x_i/rms(x)·w_i.
        let xf = x.as_tensor().to_dtype(DType::F32)?;
        let wf = w.as_tensor().to_dtype(DType::F32)?;
        let a = rms_norm(&xf, &wf, 1e-6)?.to_dtype(DType::F64)?;
        let b = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-6, "{diff}");
        let xv: Vec<f64> = x.as_tensor().narrow(2, 0, 8)?.get(0)?.get(0)?.to_vec1()?;
        let rms = (xv.iter().map(|v| v * v).sum::<f64>() / 8.0 + 1e-6).sqrt();
        let wv: Vec<f64> = w.as_tensor().to_vec1()?;
        let bv: Vec<f64> = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6)?.get(0)?.get(0)?.to_vec1()?;
        for i in 0..8 {
            assert!((bv[i] - xv[i] / rms * wv[i]).abs() < 1e-12);
        }
        Ok(())
    }

    #[test]
    fn rope_grads_match_finite_differences_and_rotate_pairs() -> anyhow::Result<()> {
        let tables = RopeTables::new(5, 8, 10_000.0, DType::F64, &Device::Cpu)?;
        let (cos, sin) = tables.narrow(5)?;
        let x = Var::from_tensor(&rand_f64(&[1, 2, 5, 8], 3))?;
        let p = probe(&[1, 2, 5, 8]);
        for rot in [rope, rope_plain] {
            let f = || rot(x.as_tensor(), &cos, &sin)?.mul(&p)?.sum_all();
            assert!(check_grad(&x, &f)? < 1e-6);
        }
        // Position 0 is the identity; every (i, i+d/2) pair keeps its norm (a rotation).
        let y = rope(x.as_tensor(), &cos, &sin)?;
        let d0 = (y.narrow(2, 0, 1)? - x.as_tensor().narrow(2, 0, 1)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(d0 < 1e-12);
        let xv: Vec<f64> = x.as_tensor().flatten_all()?.to_vec1()?;
        let yv: Vec<f64> = y.flatten_all()?.to_vec1()?;
        for row in 0..10 {
            for i in 0..4 {
                let (a, b) = (row * 8 + i, row * 8 + i + 4);
                let nx = xv[a].hypot(xv[b]);
                let ny = yv[a].hypot(yv[b]);
                // The tables are computed in f32 (as HF does), so cos²+sin² = 1 to ~1e-7.
                assert!((nx - ny).abs() < 1e-6 * nx.max(1.0));
            }
        }
        Ok(())
    }

    #[test]
    fn causal_softmax_grads_match_and_mask_holds() -> anyhow::Result<()> {
        let s = Var::from_tensor(&rand_f64(&[1, 2, 4, 4], 4))?;
        let mask = causal_mask(4, DType::F64, &Device::Cpu)?;
        let p = probe(&[1, 2, 4, 4]);
        let f = || softmax_last(&s.as_tensor().broadcast_add(&mask)?)?.mul(&p)?.sum_all();
        assert!(check_grad(&s, &f)? < 1e-6);
        let probs: Vec<f64> = softmax_last(&s.as_tensor().broadcast_add(&mask)?)?.flatten_all()?.to_vec1()?;
        for (k, v) in probs.iter().enumerate() {
            let (i, j) = ((k / 4) % 4, k % 4);
            if j > i {
                assert_eq!(*v, 0.0);
            }
        }
        // The scaled production ops, fused and plain, against finite differences.
        for sm in [causal_softmax, causal_softmax_plain] {
            let f = || sm(s.as_tensor(), &mask, 0.7)?.mul(&p)?.sum_all();
            assert!(check_grad(&s, &f)? < 1e-6);
        }
        // Rows sum to one, and the f32 production op agrees with the f64 one.
        let prod = causal_softmax(&s.as_tensor().to_dtype(DType::F32)?, &mask.to_dtype(DType::F32)?, 1.0)?;
        let row = prod.sum(D::Minus1)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        assert!(row.iter().all(|r| (r - 1.0).abs() < 1e-6));
        Ok(())
    }

    #[test]
    fn cross_entropy_grads_match_and_equal_log_softmax_nll() -> anyhow::Result<()> {
        let logits = Var::from_tensor(&rand_f64(&[6, 5], 5))?;
        let targets = Tensor::new(&[0u32, 4, 2, 2, 1, 3], &Device::Cpu)?;
        let f = || cross_entropy_sum(logits.as_tensor(), &targets);
        assert!(check_grad(&logits, &f)? < 1e-6);
        let ours = cross_entropy(&logits.as_tensor().to_dtype(DType::F32)?, &targets)?.to_scalar::<f32>()? as f64;
        let reference = candle_nn::loss::cross_entropy(logits.as_tensor(), &targets)?.to_scalar::<f64>()?;
        assert!((ours - reference).abs() < 1e-6, "{ours} vs {reference}");
        Ok(())
    }

    /// The fused CPU op against the plain composition: values and logit gradients, f64 and
    /// f32, with an upstream scale (the mean's 1/n), plus finite differences on the fused op.
    #[test]
    fn fused_cross_entropy_matches_plain_values_and_grads() -> anyhow::Result<()> {
        let targets = Tensor::new(&[0u32, 6, 2, 2, 1, 3, 6], &Device::Cpu)?;
        let logits = Var::from_tensor(&(rand_f64(&[7, 7], 11) * 4.0)?)?;
        let f = || cross_entropy_sum(logits.as_tensor(), &targets)? / 7.0;
        assert!(check_grad(&logits, &f)? < 1e-6);
        for dtype in [DType::F64, DType::F32] {
            let x = Var::from_tensor(&logits.as_tensor().to_dtype(dtype)?)?;
            let fused = (cross_entropy_sum(x.as_tensor(), &targets)? / 7.0)?;
            let plain = (cross_entropy_sum_plain(x.as_tensor(), &targets)? / 7.0)?;
            let (a, b) =
                (fused.to_dtype(DType::F64)?.to_scalar::<f64>()?, plain.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            assert!((a - b).abs() < 1e-6 * b.abs().max(1.0), "{dtype:?}: {a} vs {b}");
            let (gf, gp) = (fused.backward()?, plain.backward()?);
            let diff = (gf.get(&x).expect("fused grad") - gp.get(&x).expect("plain grad"))?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            assert!(diff < 1e-6, "{dtype:?}: max grad diff {diff}");
        }
        assert!(cross_entropy_sum(logits.as_tensor(), &Tensor::new(&[7u32; 7], &Device::Cpu)?).is_err());
        Ok(())
    }

    /// At a large vocabulary the kernels split rows over threads; the loss and every gradient
    /// row are still the bits the one-row (serial) kernel gives.
    #[test]
    fn parallel_cross_entropy_is_the_serial_bits() {
        let (n, v) = (37, 40_000);
        assert!(n * v >= CE_PARALLEL_MIN && v < CE_PARALLEL_MIN);
        let x: Vec<f32> = rand_f64(&[n * v], 8).to_dtype(DType::F32).and_then(|t| t.to_vec1()).expect("x");
        let x: Vec<f32> = x.iter().map(|z| z * 9.0).collect();
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % v as u32).collect();
        let whole = ce_fwd_f32(&x, &t, v);
        let serial = (0..n).fold(0f64, |s, i| s + ce_fwd_f32(&x[i * v..(i + 1) * v], &t[i..=i], v));
        assert_eq!(whole.to_bits(), serial.to_bits());
        let g = ce_bwd_f32(&x, &t, v, 0.25);
        for i in [0, 17, n - 1] {
            let row = ce_bwd_f32(&x[i * v..(i + 1) * v], &t[i..=i], v, 0.25);
            assert!(g[i * v..(i + 1) * v].iter().zip(&row).all(|(a, b)| a.to_bits() == b.to_bits()), "row {i}");
        }
    }

    /// The two ways to get the logits' gradient agree with autograd through the plain op.
    #[test]
    fn cross_entropy_grad_matches_autograd() -> anyhow::Result<()> {
        let logits = Var::from_tensor(&(rand_f64(&[9, 13], 21) * 5.0)?)?;
        let targets = Tensor::new(&[0u32, 12, 3, 3, 7, 1, 5, 9, 2], &Device::Cpu)?;
        let auto = cross_entropy_sum_plain(logits.as_tensor(), &targets)?.backward()?;
        let auto = auto.get(&logits).expect("grad").clone();
        for g in
            [cross_entropy_grad(logits.as_tensor(), &targets)?, cross_entropy_grad_plain(logits.as_tensor(), &targets)?]
        {
            let diff = (g - &auto)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "{diff:e}");
        }
        Ok(())
    }

    #[test]
    fn silu_grads_match_finite_differences() -> anyhow::Result<()> {
        let x = Var::from_tensor(&rand_f64(&[3, 4], 6))?;
        let p = probe(&[3, 4]);
        let f = || x.as_tensor().silu()?.mul(&p)?.sum_all();
        assert!(check_grad(&x, &f)? < 1e-6);
        let up = Var::from_tensor(&rand_f64(&[3, 4], 7))?;
        for glu in [swiglu, swiglu_plain] {
            let f = || glu(x.as_tensor(), up.as_tensor())?.mul(&p)?.sum_all();
            assert!(check_grad(&x, &f)? < 1e-6);
            assert!(check_grad(&up, &f)? < 1e-6);
        }
        Ok(())
    }
}
