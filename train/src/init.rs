//! The study's five LoRA initialisations, exactly as ml-spec §2.
//!
//! Shapes follow PEFT: A is `[r, d_in]`, B is `[d_out, r]`, ΔW = B·A.
//! - `standard`: torch `kaiming_uniform_(A, a=√5)` = U(±1/√d_in); B = 0 (PEFT `init_lora_weights=True`).
//! - `reversed`: A = 0; B = U(±1/√r) (Kaiming-uniform with fan_in = r).
//! - orthogonal (aweers `orthogonal_qr`/`orthogonal_eye`, PEFT `orthogonal_init`): Q is r×r
//!   orthogonal (QR of a Gaussian, or I_r for `ortho-eye`); `Q_odd = Q[0::2]`, `Q_even = Q[1::2]`;
//!   `A = s_A·(G_A·Q_odd)ᵀ` with `G_A ~ N(0,1)^{d_in×r/2}`, `B = s_B·G_Bᵀ·Q_even` with
//!   `G_B ~ N(0,1)^{r/2×d_out}`. B·A = 0 because distinct rows of Q are orthonormal.
//!   Scales: `ortho-qr-const` s = 1/10 (PEFT); `ortho-eye`/`ortho-qr-match` s_A = 1/√d_in,
//!   s_B = 1/√r (aweers code).
//!
//! Everything is computed in f64 from a ChaCha stream keyed by (seed, layer, module) and
//! rounded to f32 once. Draw order within a stream: the r×r Gaussian (QR inits only), then
//! G_A row-major, then G_B row-major.

use lorasweep_common::LoraInit;

use super::rng::{Normal, Purpose, stream};
use crate::TrainError;

/// Initial A `[r, d_in]` and B `[d_out, r]`, row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoraInitValues {
    /// `lora_A.weight`, `[r, d_in]` row-major.
    pub(crate) a: Vec<f32>,
    /// `lora_B.weight`, `[d_out, r]` row-major.
    pub(crate) b: Vec<f32>,
}

/// The Q factor of `X = Q·R` for a square row-major f64 matrix, by modified Gram–Schmidt on
/// X's columns (run twice, which makes Q orthogonal to machine precision). Q is square, so its
/// rows are orthonormal too, which is what the orthogonal inits need. r is tiny (8), so the
/// O(r³) cost is nothing. Unlike LAPACK's Householder QR (torch), R's diagonal is positive;
/// any sign convention gives the same distribution of inits.
///
/// # Errors
/// [`TrainError::Invalid`] if the matrix is numerically singular (probability 0 for Gaussians).
pub(crate) fn qr_q(x: &[f64], n: usize) -> Result<Vec<f64>, TrainError> {
    let mut q = x.to_vec();
    for j in 0..n {
        for k in 0..j {
            let dot: f64 = (0..n).map(|i| q[i * n + j] * q[i * n + k]).sum();
            for i in 0..n {
                q[i * n + j] -= dot * q[i * n + k];
            }
        }
        let norm = (0..n).map(|i| q[i * n + j].powi(2)).sum::<f64>().sqrt();
        if norm < 1e-12 {
            return Err(TrainError::Invalid("QR of a singular Gaussian matrix".into()));
        }
        for i in 0..n {
            q[i * n + j] /= norm;
        }
    }
    // Reorthogonalise once (MGS twice is orthogonal to machine precision).
    for j in 0..n {
        for k in 0..j {
            let dot: f64 = (0..n).map(|i| q[i * n + j] * q[i * n + k]).sum();
            for i in 0..n {
                q[i * n + j] -= dot * q[i * n + k];
            }
        }
        let norm = (0..n).map(|i| q[i * n + j].powi(2)).sum::<f64>().sqrt();
        for i in 0..n {
            q[i * n + j] /= norm;
        }
    }
    Ok(q)
}

/// Initial values for one adapter.
///
/// # Errors
/// [`TrainError::Invalid`] for r = 0, or an odd r with an orthogonal init (PEFT errors too).
pub(crate) fn init_lora(
    init: LoraInit,
    r: usize,
    d_in: usize,
    d_out: usize,
    seed: u64,
    layer: usize,
    module: u64,
) -> Result<LoraInitValues, TrainError> {
    if r == 0 {
        return Err(TrainError::Invalid("LoRA rank must be positive".into()));
    }
    let mut g = Normal::new(stream(seed, Purpose::Init, &[layer as u64, module]));
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    match init {
        LoraInit::Standard => {
            let bound = 1.0 / (d_in as f64).sqrt();
            let a = (0..r * d_in).map(|_| g.uniform(-bound, bound)).collect();
            Ok(LoraInitValues { a: to_f32(a), b: vec![0.0; d_out * r] })
        }
        LoraInit::Reversed => {
            let bound = 1.0 / (r as f64).sqrt();
            let b = (0..d_out * r).map(|_| g.uniform(-bound, bound)).collect();
            Ok(LoraInitValues { a: vec![0.0; r * d_in], b: to_f32(b) })
        }
        LoraInit::OrthoEye | LoraInit::OrthoQrConst | LoraInit::OrthoQrMatch => {
            if !r.is_multiple_of(2) {
                return Err(TrainError::Invalid(format!("init {init} needs an even rank, got r={r}")));
            }
            let q = if init == LoraInit::OrthoEye {
                (0..r * r).map(|k| if k / r == k % r { 1.0 } else { 0.0 }).collect()
            } else {
                let x: Vec<f64> = (0..r * r).map(|_| g.sample()).collect();
                qr_q(&x, r)?
            };
            let (s_a, s_b) = if init == LoraInit::OrthoQrConst {
                (0.1, 0.1)
            } else {
                (1.0 / (d_in as f64).sqrt(), 1.0 / (r as f64).sqrt())
            };
            let h = r / 2;
            let ga: Vec<f64> = (0..d_in * h).map(|_| g.sample()).collect(); // [d_in, h]
            let gb: Vec<f64> = (0..h * d_out).map(|_| g.sample()).collect(); // [h, d_out]
            // A[i, j] = s_A Σ_k G_A[j, k] Q[2k, i]
            let mut a = vec![0.0; r * d_in];
            for i in 0..r {
                for j in 0..d_in {
                    a[i * d_in + j] = s_a * (0..h).map(|k| ga[j * h + k] * q[(2 * k) * r + i]).sum::<f64>();
                }
            }
            // B[o, i] = s_B Σ_k G_B[k, o] Q[2k+1, i]
            let mut b = vec![0.0; d_out * r];
            for o in 0..d_out {
                for i in 0..r {
                    b[o * r + i] = s_b * (0..h).map(|k| gb[k * d_out + o] * q[(2 * k + 1) * r + i]).sum::<f64>();
                }
            }
            Ok(LoraInitValues { a: to_f32(a), b: to_f32(b) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D_IN: usize = 1536;
    const D_OUT: usize = 1536;
    const R: usize = 8;

    fn var(v: &[f32]) -> f64 {
        let n = v.len() as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n
    }

    fn max_abs(v: &[f32]) -> f64 {
        v.iter().fold(0.0, |m, &x| m.max((x as f64).abs()))
    }

    /// Numerical rank of the rows of a row-major `[rows, cols]` matrix (Gram–Schmidt, rel. tol 1e-6).
    fn rank(m: &[f32], rows: usize, cols: usize) -> usize {
        let mut basis: Vec<Vec<f64>> = Vec::new();
        let scale = m.iter().fold(0f64, |s, &x| s.max((x as f64).abs())).max(1e-30) * (cols as f64).sqrt();
        for i in 0..rows {
            let mut v: Vec<f64> = m[i * cols..(i + 1) * cols].iter().map(|&x| x as f64).collect();
            for b in &basis {
                let d: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
            }
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if n > 1e-6 * scale {
                basis.push(v.into_iter().map(|x| x / n).collect());
            }
        }
        basis.len()
    }

    /// max |B·A| relative to max |B|·max |A|·r (computed in f64 from the stored f32 values).
    fn ba_relative(v: &LoraInitValues, d_in: usize, d_out: usize, r: usize) -> f64 {
        let mut worst: f64 = 0.0;
        for o in 0..d_out {
            for j in 0..d_in {
                let s: f64 = (0..r).map(|i| v.b[o * r + i] as f64 * v.a[i * d_in + j] as f64).sum();
                worst = worst.max(s.abs());
            }
        }
        worst / (max_abs(&v.b) * max_abs(&v.a) * r as f64)
    }

    #[test]
    fn standard_and_reversed_are_kaiming_uniform() -> anyhow::Result<()> {
        let s = init_lora(LoraInit::Standard, R, D_IN, D_OUT, 42, 0, 0)?;
        let bound = 1.0 / (D_IN as f64).sqrt();
        assert!(max_abs(&s.a) <= bound && max_abs(&s.a) > 0.99 * bound);
        let rel = var(&s.a) / (1.0 / (3.0 * D_IN as f64));
        eprintln!("standard: max |A| {:.5} (bound {bound:.5}), Var(A) / (1/(3 d_in)) = {rel:.4}", max_abs(&s.a));
        assert!((rel - 1.0).abs() < 0.05, "Var(A) ratio {rel}");
        assert!(s.b.iter().all(|&x| x == 0.0));

        let rv = init_lora(LoraInit::Reversed, R, D_IN, D_OUT, 42, 0, 0)?;
        let bound = 1.0 / (R as f64).sqrt();
        assert!(max_abs(&rv.b) <= bound && max_abs(&rv.b) > 0.99 * bound);
        let rel = var(&rv.b) / (1.0 / (3.0 * R as f64));
        eprintln!("reversed: max |B| {:.5} (bound {bound:.5}), Var(B) / (1/(3 r)) = {rel:.4}", max_abs(&rv.b));
        assert!((rel - 1.0).abs() < 0.05, "Var(B) ratio {rel}");
        assert!(rv.a.iter().all(|&x| x == 0.0));
        Ok(())
    }

    #[test]
    fn orthogonal_inits_have_zero_product_half_rank_and_spec_variances() -> anyhow::Result<()> {
        for (init, var_a, var_b) in [
            (LoraInit::OrthoQrMatch, 1.0 / (2.0 * D_IN as f64), 1.0 / (2.0 * R as f64)),
            (LoraInit::OrthoQrConst, 0.01 / 2.0, 0.01 / 2.0),
            (LoraInit::OrthoEye, 1.0 / (2.0 * D_IN as f64), 1.0 / (2.0 * R as f64)),
        ] {
            let v = init_lora(init, R, D_IN, D_OUT, 7, 3, 1)?;
            let ra = var(&v.a) / var_a;
            let rb = var(&v.b) / var_b;
            assert!((ra - 1.0).abs() < 0.06, "{init}: Var(A) ratio {ra}");
            assert!((rb - 1.0).abs() < 0.06, "{init}: Var(B) ratio {rb}");
            let ba = ba_relative(&v, D_IN, D_OUT, R);
            eprintln!(
                "{init}: std A {:.5} (spec {:.5}), std B {:.5} (spec {:.5}), |BA| rel {ba:.1e}",
                var(&v.a).sqrt(),
                var_a.sqrt(),
                var(&v.b).sqrt(),
                var_b.sqrt()
            );
            assert!(ba < 1e-6, "{init}: |BA| relative {ba}");
            assert_eq!(rank(&v.a, R, D_IN), R / 2, "{init}: rank A");
            // rank of B = rank of its transpose's rows.
            let bt: Vec<f32> =
                (0..R).flat_map(|i| (0..D_OUT).map(move |o| (i, o))).map(|(i, o)| v.b[o * R + i]).collect();
            assert_eq!(rank(&bt, R, D_OUT), R / 2, "{init}: rank B");
        }
        // Eye: odd rows of A and even columns of B are exactly zero.
        let e = init_lora(LoraInit::OrthoEye, R, 64, 32, 1, 0, 0)?;
        assert!((0..R).filter(|i| i % 2 == 1).all(|i| e.a[i * 64..(i + 1) * 64].iter().all(|&x| x == 0.0)));
        assert!((0..32).all(|o| (0..R).filter(|i| i % 2 == 0).all(|i| e.b[o * R + i] == 0.0)));
        Ok(())
    }

    #[test]
    fn qr_is_orthogonal_in_f64() -> anyhow::Result<()> {
        let mut g = Normal::new(stream(5, Purpose::Init, &[]));
        let x: Vec<f64> = (0..64).map(|_| g.sample()).collect();
        let q = qr_q(&x, 8)?;
        for i in 0..8 {
            for j in 0..8 {
                let d: f64 = (0..8).map(|k| q[i * 8 + k] * q[j * 8 + k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((d - want).abs() < 1e-14, "QQᵀ[{i},{j}] = {d}");
            }
        }
        Ok(())
    }

    #[test]
    fn reproducible_per_key_and_different_across_seeds_layers_modules() -> anyhow::Result<()> {
        for init in LoraInit::ALL {
            let a = init_lora(init, R, 64, 32, 42, 1, 2)?;
            assert_eq!(a, init_lora(init, R, 64, 32, 42, 1, 2)?);
            assert_ne!(a, init_lora(init, R, 64, 32, 43, 1, 2)?);
            assert_ne!(a, init_lora(init, R, 64, 32, 42, 2, 2)?);
            assert_ne!(a, init_lora(init, R, 64, 32, 42, 1, 3)?);
        }
        Ok(())
    }

    #[test]
    fn odd_rank_orthogonal_is_refused() {
        for init in [LoraInit::OrthoEye, LoraInit::OrthoQrConst, LoraInit::OrthoQrMatch] {
            let err = init_lora(init, 7, 16, 16, 0, 0, 0).unwrap_err();
            assert!(matches!(err, TrainError::Invalid(_)) && err.to_string().contains("r=7"), "{err}");
        }
        assert!(init_lora(LoraInit::Standard, 7, 16, 16, 0, 0, 0).is_ok());
    }
}
