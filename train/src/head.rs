//! The lm_head and the token cross-entropy, in chunks of rows.
//!
//! At a 151,936-token vocabulary the logits dominate a step's memory: at the study's micro-batch
//! (4 × 1024 tokens) they are 1.2 GB in bf16, 2.5 GB once cast to f32 for the softmax, and the
//! plain cross-entropy keeps several such tensors for its backward. Here the loss and its gradient
//! with respect to the hidden states are computed chunk by chunk during the forward pass
//! (`logits_c = h_c·Wᵀ`, `g_c = softmax(logits_c) − onehot`, `dh_c = g_c·W`), so only one chunk
//! of logits exists at a time; the returned loss carries `dh` as its gradient. The FLOPs are those
//! of the unchunked forward + backward (the frozen head has no weight gradient either way).

use candle_core::{DType, Result, Tensor};

use super::frozen::FrozenLinear;
use super::ops;

/// Logit elements per chunk: 256 Mi, 1 GiB in f32, about 1,770 rows at Qwen2's vocabulary, so
/// the study's micro-batch (4,095 rows) runs in 3 chunks of large GEMMs. Smaller problems take
/// the unchunked path. Measured on the CPU (`lorasweep bench train --shape 0.5b --layers 4
/// --seq 1024`, `LORASWEEP_HEAD_CHUNK_ELEMS` set): 32 Mi chunks cut peak RSS from 3,184 to 2,142
/// MiB but cost 6 % more time per step (4.92 → 5.22 s), which is why the default only bounds the
/// study-sized logits rather than chunking finely.
pub(crate) const CHUNK_ELEMS: usize = 256 << 20;

/// [`CHUNK_ELEMS`], or `LORASWEEP_HEAD_CHUNK_ELEMS` when set (for measurement).
pub(crate) fn chunk_elems() -> usize {
    static ELEMS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ELEMS.get_or_init(|| {
        std::env::var("LORASWEEP_HEAD_CHUNK_ELEMS").ok().and_then(|v| v.parse().ok()).unwrap_or(CHUNK_ELEMS)
    })
}

/// `Σ_rows logsumexp(h·Wᵀ) − (h·Wᵀ)[target]` for `hidden` `[n, h]` and `targets` `[n]`, as a
/// scalar in the cross-entropy's work dtype (f32, or f64 for f64 inputs), chunked when the
/// logits exceed `chunk_elems`. Its gradient with respect to `hidden` is that of
/// `cross_entropy_sum(head(hidden), targets)`.
pub(crate) fn head_loss_sum(
    hidden: &Tensor,
    head: &FrozenLinear,
    targets: &Tensor,
    chunk_elems: usize,
) -> Result<Tensor> {
    let n = hidden.dim(0)?;
    let rows = (chunk_elems / head.out_dim().max(1)).max(1);
    if n <= rows {
        return ops::cross_entropy_sum(&head.forward(hidden)?, targets);
    }
    let need_grad = hidden.track_op();
    let x = hidden.detach();
    let mut total = 0f64;
    let mut work = DType::F32;
    let mut dh = Vec::new();
    for r0 in (0..n).step_by(rows) {
        let len = rows.min(n - r0);
        let logits = head.forward(&x.narrow(0, r0, len)?)?;
        let targets = targets.narrow(0, r0, len)?;
        let loss = ops::cross_entropy_sum(&logits, &targets)?;
        work = loss.dtype();
        total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if need_grad {
            let g = ops::cross_entropy_grad(&logits, &targets)?;
            dh.push(g.to_dtype(head.weight().dtype())?.matmul(head.weight())?);
        }
    }
    let total = Tensor::new(total, hidden.device())?.to_dtype(work)?;
    if !need_grad {
        return Ok(total);
    }
    // A term whose value is exactly 0 (for finite values; NaN or inf stay visible) and whose
    // gradient with respect to `hidden` is `dh`.
    let dh = Tensor::cat(&dh, 0)?.to_dtype(hidden.dtype())?;
    let s = (hidden * &dh)?.sum_all()?;
    let zero = (&s - s.detach())?.to_dtype(work)?;
    zero + total
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::tests::rand_f64;

    /// Chunked (with a remainder chunk) against the unchunked head + cross-entropy: the loss
    /// and the gradient of the hidden states, in f32 and f64; and no gradient work without a
    /// graph.
    #[test]
    fn chunked_matches_unchunked_loss_and_grad() -> anyhow::Result<()> {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let w = (rand_f64(&[37, 12], 1) * 2.0)?.to_dtype(dtype)?;
            let head = FrozenLinear::new(w, None);
            let h = Var::from_tensor(&rand_f64(&[50, 12], 2).to_dtype(dtype)?)?;
            let t = Tensor::from_vec((0..50u32).map(|i| (i * 7) % 37).collect::<Vec<_>>(), 50, &Device::Cpu)?;
            let whole = head_loss_sum(h.as_tensor(), &head, &t, usize::MAX)?;
            let chunked = head_loss_sum(h.as_tensor(), &head, &t, 37 * 8)?; // 8 rows: 6 chunks + 2
            let (a, b) =
                (whole.to_dtype(DType::F64)?.to_scalar::<f64>()?, chunked.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            assert!((a - b).abs() < tol * a.abs(), "{dtype:?}: {a} vs {b}");
            let (gw, gc) = ((whole / 50.0)?.backward()?, (chunked / 50.0)?.backward()?);
            let diff = (gw.get(&h).expect("grad") - gc.get(&h).expect("grad"))?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            assert!(diff < tol, "{dtype:?}: grad diff {diff:e}");
            // Without a graph (eval) the chunked path is the loss alone.
            let eval = head_loss_sum(&h.as_tensor().detach(), &head, &t, 37 * 8)?;
            assert_eq!(eval.to_dtype(DType::F64)?.to_scalar::<f64>()?, b);
        }
        Ok(())
    }
}
