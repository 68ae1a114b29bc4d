//! Frozen base-model linear layers whose backward computes only the input gradient.
//!
//! candle's `Op::Matmul` backward always computes both operand gradients (`backprop.rs`), so a
//! plain `x.matmul(&w.t())` with a frozen `w` still pays an `xᵀ·g` matmul per layer and keeps a
//! full-size dW in the `GradStore` (+~50% step FLOPs, ~2× peak memory; candle-notes §1). PyTorch
//! skips it because `requires_grad=False`. [`FrozenLinear`] runs `x·Wᵀ + b` inside a
//! `CustomOp1` whose `bwd` returns `g·W` only; W and b get no gradient at all.

use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, backend::BackendStorage,
};

/// The `x·Wᵀ + b` op over a 2-D input `[n, d_in]`, holding the frozen `W` `[d_out, d_in]` and `b`.
#[derive(Debug, Clone)]
struct FrozenMatmul {
    w: Tensor,
    b: Option<Tensor>,
}

/// `x·Wᵀ + b` on raw storages (CPU or CUDA alike): the product is written straight into the
/// result and the bias added with the backend's broadcast add. Going through tensors instead cost
/// a copy of the input and of the output per projection (155 MB per step for the lm_head at a
/// 152k vocabulary). One generic body, so the CPU tests exercise the code the GPU runs.
fn frozen_fwd<S: BackendStorage>(
    x: &S,
    xl: &Layout,
    w: &S,
    wl: &Layout,
    b: Option<(&S, &Layout)>,
) -> Result<(S, Shape)> {
    let (n, k) = xl.shape().dims2()?;
    let (d_out, d_in) = wl.shape().dims2()?;
    if k != d_in {
        candle_core::bail!("frozen-matmul: input has {k} features, the weight {d_in}")
    }
    let y = x.matmul(w, (1, n, d_out, k), xl, &wl.transpose(0, 1)?)?;
    let y = match b {
        Some((b, bl)) => {
            if bl.shape().dims() != [d_out] {
                candle_core::bail!("frozen-matmul: bias {:?} for {d_out} outputs", bl.shape())
            }
            y.binary_impl::<candle_core::op::Add>(b, &Layout::contiguous((n, d_out)), &bl.broadcast_as((n, d_out))?)?
        }
        None => y,
    };
    Ok((y, Shape::from((n, d_out))))
}

impl FrozenMatmul {
    /// [`frozen_fwd`] with the weight's and bias's storages picked out for the input's device.
    fn forward_on<S: BackendStorage>(
        &self,
        x: &S,
        xl: &Layout,
        device: &str,
        pick: impl Fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)> {
        let on_device = |what: &str| candle_core::Error::Msg(format!("frozen-matmul: {what} is not on the {device}"));
        let (ws, wl) = self.w.storage_and_layout();
        let w = pick(&ws).ok_or_else(|| on_device("weight"))?;
        let bias = self.b.as_ref().map(|b| b.storage_and_layout());
        let b = match &bias {
            Some((bs, bl)) => Some((pick(bs).ok_or_else(|| on_device("bias"))?, *bl)),
            None => None,
        };
        frozen_fwd(x, xl, w, wl, b)
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward_on(storage, layout, "cpu", |s| match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        self.forward_on(storage, layout, "gpu", |s| match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // d(x·Wᵀ + b)/dx = g·W; no dW, no db.
        // contiguous(): cuBLAS rejects some strided layouts; the gradient is usually contiguous
        // already, in which case this is free.
        Ok(Some(grad_res.contiguous()?.matmul(&self.w.to_dtype(grad_res.dtype())?)?))
    }
}

/// A frozen `nn.Linear` (weight `[d_out, d_in]` as stored by HF, optional bias).
#[derive(Debug, Clone)]
pub(crate) struct FrozenLinear {
    op: FrozenMatmul,
}

impl FrozenLinear {
    /// Wraps frozen weight and bias tensors (already in the base dtype, on the target device).
    pub(crate) fn new(w: Tensor, b: Option<Tensor>) -> Self {
        Self { op: FrozenMatmul { w: w.detach(), b: b.map(|b| b.detach()) } }
    }

    /// The weight `[d_out, d_in]`.
    pub(crate) fn weight(&self) -> &Tensor {
        &self.op.w
    }

    /// Output features.
    pub(crate) fn out_dim(&self) -> usize {
        self.op.w.dims()[0]
    }

    /// `x·Wᵀ + b` for `x` of shape `[..., d_in]`, with a backward that yields only dx.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = *dims.last().ok_or_else(|| candle_core::Error::Msg("frozen-linear: scalar input".into()))?;
        let n = x.elem_count() / d_in.max(1);
        let mut x2 = x.reshape((n, d_in))?;
        // cuBLAS rejects some strided layouts; a contiguous input (the usual case) is free.
        if !x2.is_contiguous() {
            x2 = x2.copy()?;
        }
        // `apply_op1` takes an owned op; cloning it clones two `Arc`-backed tensor handles.
        let y = x2.apply_op1(self.op.clone())?;
        let mut out = dims;
        *out.last_mut().expect("non-empty dims checked above") = self.out_dim();
        y.reshape(out)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Var};

    use super::*;
    use crate::ops::tests::{check_grad, rand_f64};

    #[test]
    fn forward_matches_plain_linear_and_grad_is_input_only() -> anyhow::Result<()> {
        let w = rand_f64(&[5, 4], 10);
        let b = rand_f64(&[5], 11);
        let lin = FrozenLinear::new(w.clone(), Some(b.clone()));
        let x = Var::from_tensor(&rand_f64(&[2, 3, 4], 12))?;
        let plain = x.as_tensor().broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
        let ours = lin.forward(x.as_tensor())?;
        assert_eq!(ours.dims(), &[2, 3, 5]);
        let diff = (plain - &ours)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");

        let p = rand_f64(&[2, 3, 5], 13);
        let f = || lin.forward(x.as_tensor())?.mul(&p)?.sum_all();
        assert!(check_grad(&x, &f)? < 1e-6);
        // Only the input (and the loss path) is in the store: nothing shaped like W or b.
        let grads = f()?.backward()?;
        assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
        Ok(())
    }

    #[test]
    fn accepts_strided_and_offset_inputs_and_bf16() -> anyhow::Result<()> {
        let w = rand_f64(&[3, 4], 20);
        let lin = FrozenLinear::new(w.clone(), None);
        let big = rand_f64(&[6, 4], 21);
        let x = big.narrow(0, 2, 3)?; // non-zero offset
        let want = x.matmul(&w.t()?)?;
        let got = lin.forward(&x)?;
        assert!((want - got)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
        let xt = rand_f64(&[4, 3], 22).t()?; // transposed view
        let want = xt.matmul(&w.t()?)?;
        let got = lin.forward(&xt)?;
        assert!((want - got)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);

        let lin16 = FrozenLinear::new(w.to_dtype(DType::BF16)?, None);
        let x16 = rand_f64(&[2, 4], 23).to_dtype(DType::BF16)?;
        let got = lin16.forward(&x16)?.to_dtype(DType::F64)?;
        let want = x16.to_dtype(DType::F64)?.matmul(&w.t()?)?;
        assert!((want - got)?.abs()?.max_all()?.to_scalar::<f64>()? < 0.05);
        assert_eq!(lin16.forward(&x16)?.dtype(), DType::BF16);
        Ok(())
    }
}
