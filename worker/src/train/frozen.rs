//! Frozen base-model linear layers whose backward computes only the input gradient.
//!
//! candle's `Op::Matmul` backward always computes both operand gradients (`backprop.rs`), so a
//! plain `x.matmul(&w.t())` with a frozen `w` still pays an `xᵀ·g` matmul per layer and keeps a
//! full-size dW in the `GradStore` (+~50% step FLOPs, ~2× peak memory; candle-notes §1). PyTorch
//! skips it because `requires_grad=False`. [`FrozenLinear`] runs `x·Wᵀ + b` inside a
//! `CustomOp1` whose `bwd` returns `g·W` only; W and b get no gradient at all.

use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, backend::BackendStorage, op::BackpropOp,
};

/// The `x·Wᵀ + b` op over a 2-D input `[n, d_in]`, holding the frozen `W` `[d_out, d_in]` and `b`.
#[derive(Debug, Clone)]
struct FrozenMatmul {
    w: Tensor,
    b: Option<Tensor>,
}

impl FrozenMatmul {
    /// The plain forward on a detached input tensor.
    fn forward_plain(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Rejects layouts this op cannot rewrap without a strided copy; [`FrozenLinear::forward`]
    /// always passes a fresh contiguous tensor.
    fn check_layout(layout: &Layout) -> Result<(usize, usize)> {
        match layout.contiguous_offsets() {
            Some(offsets) => Ok(offsets),
            None => candle_core::bail!("frozen-matmul: non-contiguous input {layout:?}"),
        }
    }
}

/// Moves a freshly computed tensor's storage out as the op's result.
fn result_storage(y: &Tensor) -> Result<Storage> {
    let (storage, layout) = y.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok(Storage::Cpu(s.try_clone(layout)?)),
        Storage::Cuda(s) => Ok(Storage::Cuda(s.try_clone(layout)?)),
        Storage::Metal(_) => candle_core::bail!("frozen-matmul: metal is not supported"),
    }
}

/// `y[i, :] += b` for every row of a contiguous `[n, d]` buffer.
fn add_bias_rows<T: Copy + std::ops::Add<Output = T>>(y: &mut [T], b: &[T]) {
    for row in y.chunks_exact_mut(b.len()) {
        for (v, &c) in row.iter_mut().zip(b) {
            *v = *v + c;
        }
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    /// The matmul runs on the storages themselves, writing straight into the result: going
    /// through tensors cost a copy of the input and of the output (155 MB per step for the
    /// lm_head at a 152k vocabulary).
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = layout.shape().dims2()?;
        let (d_out, d_in) = self.w.dims2()?;
        if k != d_in {
            candle_core::bail!("frozen-matmul: input has {k} features, the weight {d_in}")
        }
        let (ws, wl) = self.w.storage_and_layout();
        let Storage::Cpu(ws) = &*ws else { candle_core::bail!("frozen-matmul: weight is not on the cpu") };
        let mut y = storage.matmul(ws, (1, n, d_out, k), layout, &wl.transpose(0, 1)?)?;
        if let Some(b) = &self.b {
            let (bs, bl) = b.storage_and_layout();
            let Storage::Cpu(bs) = &*bs else { candle_core::bail!("frozen-matmul: bias is not on the cpu") };
            let Some((lo, hi)) = bl.contiguous_offsets().filter(|(lo, hi)| hi - lo == d_out) else {
                candle_core::bail!("frozen-matmul: bias {:?} for {d_out} outputs", bl.shape())
            };
            match (&mut y, bs) {
                (CpuStorage::F32(y), CpuStorage::F32(b)) => add_bias_rows(y, &b[lo..hi]),
                (CpuStorage::F64(y), CpuStorage::F64(b)) => add_bias_rows(y, &b[lo..hi]),
                (CpuStorage::BF16(y), CpuStorage::BF16(b)) => add_bias_rows(y, &b[lo..hi]),
                (CpuStorage::F16(y), CpuStorage::F16(b)) => add_bias_rows(y, &b[lo..hi]),
                (y, b) => candle_core::bail!("frozen-matmul: bias {:?} for a {:?} output", b.dtype(), y.dtype()),
            }
        }
        Ok((y, Shape::from((n, d_out))))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        // Untested here (no GPU): the input must start at offset 0 so that the cloned buffer,
        // viewed with the layout's shape, is exactly the input. cuBLAS does the matmul.
        let (start, _) = Self::check_layout(layout)?;
        if start != 0 {
            candle_core::bail!("frozen-matmul: cuda input must start at offset 0");
        }
        let x = Tensor::from_storage(
            Storage::Cuda(storage.try_clone(layout)?),
            layout.shape().clone(),
            BackpropOp::none(),
            false,
        );
        let y = self.forward_plain(&x)?.contiguous()?;
        let shape = y.shape().clone();
        match result_storage(&y)? {
            Storage::Cuda(s) => Ok((s, shape)),
            _ => candle_core::bail!("frozen-matmul: cuda op produced a non-cuda result"),
        }
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
pub struct FrozenLinear {
    op: FrozenMatmul,
}

impl FrozenLinear {
    /// Wraps frozen weight and bias tensors (already in the base dtype, on the target device).
    pub fn new(w: Tensor, b: Option<Tensor>) -> Self {
        Self { op: FrozenMatmul { w: w.detach(), b: b.map(|b| b.detach()) } }
    }

    /// The weight `[d_out, d_in]`.
    pub fn weight(&self) -> &Tensor {
        &self.op.w
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.op.b.as_ref()
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.op.w.dims()[0]
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.op.w.dims()[1]
    }

    /// `x·Wᵀ + b` for `x` of shape `[..., d_in]`, with a backward that yields only dx.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d_in = *dims.last().ok_or_else(|| candle_core::Error::Msg("frozen-linear: scalar input".into()))?;
        let n = x.elem_count() / d_in.max(1);
        let mut x2 = x.reshape((n, d_in))?;
        // The CUDA path rewraps raw storage, so it needs a contiguous buffer starting at 0; the
        // CPU path multiplies any layout candle's matmul takes, which includes this one.
        if !x2.is_contiguous() || (!x2.device().is_cpu() && x2.layout().start_offset() != 0) {
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
    use crate::train::ops::tests::{check_grad, rand_f64};

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
