//! Each fused op against its plain composition in `ops`: values and gradients.

use candle_core::{Device, Var};

use super::*;
use crate::ops::{self, tests::rand_f64};

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
        let (dv, dg) =
            compare(&[&q], &|| ops::rope(q.as_tensor(), &cos, &sin), &|| ops::rope_plain(q.as_tensor(), &cos, &sin))?;
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
