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
//!
//! This file holds what the kernels share (the float trait, lane sums, the dtype dispatch); each
//! op with its backward lives in its own module.

use candle_core::{DType, Layout, Result, Shape, Tensor, bail};

/// Whether `x` can take the fused path: a CPU tensor in f32 or f64.
pub(crate) fn fusable(x: &Tensor) -> bool {
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
pub(crate) fn fast_exp(x: f32) -> f32 {
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
    let p = p * r + 0.5; // Cephes writes 5.0000001201e-1, which is 0.5 in f32
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
            candle_core::CpuStorage::F32(_) => {
                type $t = f32;
                $(let candle_core::CpuStorage::F32($a) = $s else { candle_core::bail!("{}: mixed dtypes", $op) };
                  let $a = $crate::fused::slice($a, $l, $op)?;)+
                candle_core::CpuStorage::F32($body)
            }
            candle_core::CpuStorage::F64(_) => {
                type $t = f64;
                $(let candle_core::CpuStorage::F64($a) = $s else { candle_core::bail!("{}: mixed dtypes", $op) };
                  let $a = $crate::fused::slice($a, $l, $op)?;)+
                candle_core::CpuStorage::F64($body)
            }
            other => candle_core::bail!("{}: unsupported dtype {:?}", $op, candle_core::backend::BackendStorage::dtype(other)),
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

mod glu;
mod lora;
mod norm;
mod rope;
mod softmax;
#[cfg(test)]
mod tests;

pub(crate) use glu::swiglu;
pub(crate) use lora::lora_branch;
pub(crate) use norm::rms_norm;
pub(crate) use rope::rope;
pub(crate) use softmax::causal_softmax;
