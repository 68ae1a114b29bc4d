//! Fused CPU kernels, each with a fused backward, for the ops a training step repeats per layer:
//! RMSNorm, RoPE, the causal attention softmax, SwiGLU and the LoRA branch.
//!
//! Built from core ops (the `*_plain` functions in [`super::ops`]) each of these is 4–10 candle
//! ops forward and as many again backward, every one a fresh allocation plus, in backward, a
//! zero-filled gradient buffer and an add. At small model shapes that overhead, not arithmetic,
//! was most of a step. Here each is one pass forward and one backward.
//!
//! The kernels take contiguous f32 or f64 CPU tensors (f64 only so that the finite-difference
//! tests can run through them); [`super::ops`] routes anything else (bf16, CUDA) to the plain
//! versions, which stay the gradient reference in this module's tests.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};

/// Whether `x` can take the fused path: a CPU tensor in f32 or f64.
pub fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The float types the kernels are stamped for.
trait Real:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
    + std::ops::Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    fn of(v: f64) -> Self;
    fn max(self, o: Self) -> Self;
}

macro_rules! real {
    ($t:ty, $exp:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn exp(self) -> Self {
                $exp(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn of(v: f64) -> Self {
                v as $t
            }
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
        }
    };
}
real!(f32, fast_exp);
// f64 only serves the finite-difference tests, which need libm's accuracy.
real!(f64, f64::exp);

/// `e^x` for f32 in plain arithmetic that the compiler vectorises (libm's `expf` is a call per
/// element; exp was a tenth of a tiny-shape step). Cephes' `expf`: `x = n·ln2 + r` with `n`
/// rounded to nearest by the 1.5·2²³ trick, a degree-7 polynomial for `e^r` on
/// `|r| ≤ ln2/2`, and `2^n` built in the exponent bits. Within 2 ulp of `f32::exp` on
/// [−87, 88] (the tests measure it); below that the result is tiny instead of 0 or subnormal,
/// above it `e^88` instead of inf, and NaN stays NaN.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Σ v, in eight independent lanes so that the loop vectorises.
fn sum<T: Real>(v: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    let mut s = acc.iter().fold(T::ZERO, |a, &b| a + b);
    for &x in chunks.remainder() {
        s += x;
    }
    s
}

/// Σ a·b, in eight lanes.
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = acc.iter().fold(T::ZERO, |a, &b| a + b);
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// The contiguous elements of `s` under `l`.
fn slice<'a, T>(s: &'a [T], l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => bail!("{op}: non-contiguous input"),
    }
}

/// Runs `$body` with `$a`, `$b`, … bound to the contiguous slices of same-dtype f32/f64 storages,
/// wrapping the `Vec` it returns back into a [`CpuStorage`].
macro_rules! dispatch {
    ($op:expr, [$(($s:expr, $l:expr) => $a:ident),+], |$t:ident| $body:expr) => {{
        let first = [$($s),+][0];
        match first {
            CpuStorage::F32(_) => {
                type $t = f32;
                $(let CpuStorage::F32($a) = $s else { bail!("{}: mixed dtypes", $op) };
                  let $a = slice($a, $l, $op)?;)+
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $(let CpuStorage::F64($a) = $s else { bail!("{}: mixed dtypes", $op) };
                  let $a = slice($a, $l, $op)?;)+
                CpuStorage::F64($body)
            }
            other => bail!("{}: unsupported dtype {:?}", $op, other.dtype()),
        }
    }};
}

/// Two gradients computed in one pass, returned stacked as `[2, ..shape]`, split into two views.
fn split2(stacked: Tensor) -> Result<(Tensor, Tensor)> {
    Ok((stacked.get(0)?, stacked.get(1)?))
}

fn stacked_shape(s: &Shape) -> Shape {
    let mut d = vec![2];
    d.extend_from_slice(s.dims());
    Shape::from(d)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------

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
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

// ---------------------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------------------

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
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { inverse: false })
}

// ---------------------------------------------------------------------------------------------
// Causal softmax
// ---------------------------------------------------------------------------------------------

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
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { scale })
}

// ---------------------------------------------------------------------------------------------
// SwiGLU
// ---------------------------------------------------------------------------------------------

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
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

// ---------------------------------------------------------------------------------------------
// LoRA branch
// ---------------------------------------------------------------------------------------------

/// The LoRA branch `((x·Aᵀ)·Bᵀ)·scale` of `x` `[n, d_in]`, `A` `[r, d_in]`, `B` `[d_out, r]`
/// (PEFT: `lora_B(lora_A(x)) * scaling`). As core ops it is five graph nodes, each of whose
/// gradients candle accumulates into a fresh zero-filled buffer; here it is one node whose
/// backward returns dx, dA and dB together, computed in the same order as the core ops' backward
/// (`g·scale` first), so the results are the same bits.
#[derive(Debug, Clone, Copy)]
struct LoraBranch {
    scale: f64,
}

/// `v *= scale` over a CPU storage.
fn scale_in_place(s: &mut CpuStorage, scale: f64) -> Result<()> {
    match s {
        CpuStorage::F32(v) => v.iter_mut().for_each(|x| *x *= scale as f32),
        CpuStorage::F64(v) => v.iter_mut().for_each(|x| *x *= scale),
        other => bail!("fused-lora: unsupported dtype {:?}", other.dtype()),
    }
    Ok(())
}

impl CustomOp3 for LoraBranch {
    fn name(&self) -> &'static str {
        "fused-lora"
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
        let (n, d_in) = l1.shape().dims2()?;
        let (r, a_in) = l2.shape().dims2()?;
        let (d_out, b_r) = l3.shape().dims2()?;
        if a_in != d_in || b_r != r {
            bail!("{}: x {:?}, A {:?}, B {:?}", self.name(), l1.shape(), l2.shape(), l3.shape())
        }
        // Products on the storages: no tensor wrappers, no copies.
        let h = s1.matmul(s2, (1, n, r, d_in), l1, &l2.transpose(0, 1)?)?;
        let mut y = h.matmul(s3, (1, n, d_out, r), &Layout::contiguous((n, r)), &l3.transpose(0, 1)?)?;
        scale_in_place(&mut y, self.scale)?;
        Ok((y, Shape::from((n, d_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Detached: these products are gradients, not graph nodes.
        let (x, a, b, g) = (x.detach(), a.detach(), b.detach(), g.detach());
        let h = x.matmul(&a.t()?)?;
        let gs = (g * self.scale)?;
        let db = gs.t()?.matmul(&h)?;
        let dh = gs.matmul(&b)?;
        let dx = dh.matmul(&a)?;
        let da = dh.t()?.matmul(&x)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// Fused [`LoraBranch`] (`x` `[n, d_in]`, `a` `[r, d_in]`, `b` `[d_out, r]`, one f32/f64 dtype).
pub fn lora_branch(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    x.apply_op3(a, b, LoraBranch { scale })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::train::ops::{self, tests::rand_f64};

    /// Max |a − b| over all elements, in f64.
    fn max_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
        Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
    }

    /// Runs `fused` and `plain` on the same Vars, with a random upstream gradient, and returns
    /// the worst value difference and the worst gradient difference over `vars`.
    fn compare(
        vars: &[&Var],
        fused: &dyn Fn() -> candle_core::Result<Tensor>,
        plain: &dyn Fn() -> candle_core::Result<Tensor>,
    ) -> anyhow::Result<(f64, f64)> {
        let (yf, yp) = (fused()?, plain()?);
        let probe = rand_f64(yf.dims(), 77).to_dtype(yf.dtype())?;
        let (gf, gp) = ((&yf * &probe)?.sum_all()?.backward()?, (&yp * &probe)?.sum_all()?.backward()?);
        let mut worst_grad: f64 = 0.0;
        for v in vars {
            let (a, b) = (gf.get(v).expect("fused grad"), gp.get(v).expect("plain grad"));
            worst_grad = worst_grad.max(max_diff(a, b)?);
        }
        Ok((max_diff(&yf, &yp)?, worst_grad))
    }

    fn var(shape: &[usize], seed: u64, dtype: DType, scale: f64) -> anyhow::Result<Var> {
        Ok(Var::from_tensor(&(rand_f64(shape, seed) * scale)?.to_dtype(dtype)?)?)
    }

    #[test]
    fn fast_exp_is_within_two_ulp_of_libm() {
        let mut worst: f64 = 0.0;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (a, b) = (fast_exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs() as f64);
            x += 0.000_731;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(f32::NAN).is_nan());
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
    }

    /// Each fused op against its plain composition at model-like shapes (GQA-sized head dim,
    /// odd widths that exercise the lane remainders), in f32 (production) and f64.
    #[test]
    fn fused_ops_match_plain_values_and_grads() -> anyhow::Result<()> {
        for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-12)] {
            // RMSNorm, with a trainable weight so that its gradient is compared too.
            let x = var(&[2, 5, 37], 1, dtype, 3.0)?;
            let w = var(&[37], 2, dtype, 1.0)?;
            let (dv, dg) = compare(&[&x, &w], &|| ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-6), &|| {
                ops::rms_norm_plain(x.as_tensor(), w.as_tensor(), 1e-6)
            })?;
            assert!(dv < tol && dg < tol * 10.0, "rms_norm {dtype:?}: {dv:e} {dg:e}");

            // RoPE at head_dim 16 over 7 positions and 3 heads.
            let tables = ops::RopeTables::new(7, 16, 10_000.0, dtype, &Device::Cpu)?;
            let (cos, sin) = tables.narrow(7)?;
            let q = var(&[2, 3, 7, 16], 3, dtype, 2.0)?;
            let (dv, dg) = compare(&[&q], &|| ops::rope(q.as_tensor(), &cos, &sin), &|| {
                ops::rope_plain(q.as_tensor(), &cos, &sin)
            })?;
            assert!(dv < tol && dg < tol, "rope {dtype:?}: {dv:e} {dg:e}");

            // Causal softmax of scaled scores, 2 × 4 heads of 19 × 19 (a GQA view is reshaped
            // to this before the op).
            let s = var(&[2, 4, 19, 19], 4, dtype, 6.0)?;
            let mask = ops::causal_mask(19, DType::F32, &Device::Cpu)?;
            let (dv, dg) = compare(&[&s], &|| ops::causal_softmax(s.as_tensor(), &mask, 0.25), &|| {
                ops::causal_softmax_plain(s.as_tensor(), &mask, 0.25)
            })?;
            assert!(dv < tol && dg < tol, "causal_softmax {dtype:?}: {dv:e} {dg:e}");
            let probs = ops::causal_softmax(s.as_tensor(), &mask, 0.25)?.to_dtype(DType::F64)?;
            let upper: Vec<f64> = probs.get(1)?.get(3)?.get(4)?.narrow(0, 5, 14)?.to_vec1()?;
            assert!(upper.iter().all(|&p| p == 0.0), "masked positions must be exactly 0");

            // SwiGLU.
            let g = var(&[3, 41], 5, dtype, 5.0)?;
            let u = var(&[3, 41], 6, dtype, 2.0)?;
            let (dv, dg) = compare(&[&g, &u], &|| ops::swiglu(g.as_tensor(), u.as_tensor()), &|| {
                ops::swiglu_plain(g.as_tensor(), u.as_tensor())
            })?;
            assert!(dv < tol * 10.0 && dg < tol * 10.0, "swiglu {dtype:?}: {dv:e} {dg:e}");
        }
        Ok(())
    }

    /// The fused LoRA branch gives the same values and the same gradient bits as the core ops.
    #[test]
    fn fused_lora_branch_matches_core_ops_bit_for_bit() -> anyhow::Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let x = var(&[13, 24], 1, dtype, 1.0)?;
            let a = var(&[4, 24], 2, dtype, 0.3)?;
            let b = var(&[20, 4], 3, dtype, 0.3)?;
            let plain = || x.as_tensor().matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)? * 2.5;
            let (dv, dg) =
                compare(&[&x, &a, &b], &|| lora_branch(x.as_tensor(), a.as_tensor(), b.as_tensor(), 2.5), &plain)?;
            assert!(dv == 0.0 && dg == 0.0, "fused lora {dtype:?}: {dv:e} {dg:e}");
        }
        let z = Tensor::zeros((3, 5), DType::F32, &Device::Cpu)?;
        assert!(lora_branch(&z, &Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?, &z, 1.0).is_err());
        Ok(())
    }

    /// A frozen (plain tensor) weight gets no gradient from the fused RMSNorm; the input does.
    #[test]
    fn frozen_norm_weight_gets_no_gradient() -> anyhow::Result<()> {
        let x = var(&[4, 8], 1, DType::F32, 1.0)?;
        let w = rand_f64(&[8], 2).to_dtype(DType::F32)?;
        let grads = ops::rms_norm(x.as_tensor(), &w, 1e-6)?.sum_all()?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(&w).is_none());
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        assert!(rms_norm(&x, &Tensor::zeros(7, DType::F32, &dev).unwrap(), 1e-6).is_err());
        assert!(causal_softmax(&Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap(), 1.0).is_err());
        assert!(swiglu(&x, &Tensor::zeros((2, 7), DType::F32, &dev).unwrap()).is_err());
        let t = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        assert!(rope(&Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap(), &t, &t).is_err());
        assert!(rms_norm(&x.to_dtype(DType::BF16).unwrap(), &x.get(0).unwrap(), 1e-6).is_err());
    }
}
