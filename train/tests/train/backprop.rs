//! The vendored candle-core's backward (third_party/candle-core.patch): a gradient whose first
//! contribution is a strided view (here the transpose backward's) is stored contiguous, with
//! the values upstream's zeros + add would give, so no strided gradient reaches a kernel.

use candle_core::{Device, Tensor, Var};

#[test]
fn a_strided_first_contribution_is_stored_contiguous_with_the_same_values() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::arange(0f32, 12., &dev)?.reshape((3, 4))?)?;
    let w = Tensor::arange(1f32, 13., &dev)?.reshape((4, 3))?;
    // d(sum(xᵀ ⊙ w))/dx = wᵀ: the transpose backward hands x a strided view of w.
    let grads = (x.as_tensor().t()? * &w)?.sum_all()?.backward()?;
    let g = grads.get(x.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient for x"))?;
    assert!(g.is_contiguous(), "stored gradient layout: {:?}", g.layout());
    assert_eq!(g.to_vec2::<f32>()?, w.t()?.to_vec2::<f32>()?);
    Ok(())
}
