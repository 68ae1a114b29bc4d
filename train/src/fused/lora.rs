//! The LoRA branch as one op with one backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

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
pub(crate) fn lora_branch(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    x.apply_op3(a, b, LoraBranch { scale })
}
