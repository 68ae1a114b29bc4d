//! Seeded random numbers for inits, dropout and shuffling.
//!
//! candle cannot seed its CPU RNG (`Device::Cpu.set_seed` fails; candle-notes §5), and torch's
//! RNG stream cannot be reproduced bit-for-bit anyway (ml-spec §1.4), so every random draw in
//! the trainer comes from a ChaCha8 stream keyed by `(seed, purpose, indices…)`. Keys are mixed
//! with SplitMix64 so neighbouring keys give unrelated streams.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a stream is used for; part of the key so that, e.g., the init and dropout streams of
/// the same seed never coincide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// LoRA A/B initialisation (keyed by layer and module).
    Init = 1,
    /// LoRA dropout masks (keyed by micro-batch, layer and module).
    Dropout = 2,
    /// Synthetic benchmark weights and tokens.
    Bench = 3,
}

/// SplitMix64's increment (2⁶⁴/φ, "the golden gamma").
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// One SplitMix64 step (Steele, Lea, Flood 2014) from state `z`: add the golden gamma, then
/// the finaliser. A bijective 64-bit mixer; the one copy of it in the workspace.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The SplitMix64 generator: outputs [`splitmix64`] of a state that advances by the golden
/// gamma. Used where a stream must be reproducible outside Rust (`tiny_data.py` ports it) or
/// must be cheap (streamed bench weights); training draws from [`stream`].
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is `splitmix64(seed)`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let out = splitmix64(self.state);
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        out
    }

    /// A draw in `0..n` by remainder (the Python reference's `% n`, bias and all).
    pub fn below(&mut self, n: usize) -> u64 {
        self.next_u64() % n as u64
    }

    /// One of `items`, by [`SplitMix64::below`].
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len()) as usize]
    }
}

/// A stable hash of `words`: SplitMix64 steps over the state xored with each word, from the
/// golden gamma (the synthetic trainer's deterministic noise).
pub fn hash_words(words: &[u64]) -> u64 {
    words.iter().fold(GOLDEN_GAMMA, |state, &w| splitmix64(state ^ w))
}

/// A ChaCha8 stream for `(seed, purpose, keys…)`.
pub fn stream(seed: u64, purpose: Purpose, keys: &[u64]) -> ChaCha8Rng {
    let mut h = splitmix64(seed ^ splitmix64(purpose as u64));
    for &k in keys {
        h = splitmix64(h ^ splitmix64(k.wrapping_add(0x1234_5678)));
    }
    ChaCha8Rng::seed_from_u64(h)
}

/// Standard normal draws by the Box–Muller transform, caching the second value of each pair.
#[derive(Debug)]
pub struct Normal {
    rng: ChaCha8Rng,
    spare: Option<f64>,
}

impl Normal {
    /// Wraps a stream.
    pub fn new(rng: ChaCha8Rng) -> Self {
        Self { rng, spare: None }
    }

    /// The next N(0, 1) draw.
    pub fn sample(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // u1 in (0, 1] so ln(u1) is finite.
        let u1 = 1.0 - self.rng.random::<f64>();
        let u2 = self.rng.random::<f64>();
        let rad = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(rad * theta.sin());
        rad * theta.cos()
    }

    /// The next uniform draw in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.rng.random::<f64>()
    }
}

/// A dropout keep-mask of `n` entries, each `1/(1-p)` with probability `1-p` and 0 otherwise
/// (torch `F.dropout` scaling). Draws one `u32` per entry.
pub fn dropout_mask(rng: &mut ChaCha8Rng, n: usize, p: f64) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    // An entry is dropped when u < p·2³²; exact to 2⁻³².
    let threshold = (p * 4_294_967_296.0) as u64;
    (0..n).map(|_| if (rng.random::<u32>() as u64) < threshold { 0.0 } else { keep }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_unit_moments_and_streams_are_keyed() {
        let mut n = Normal::new(stream(42, Purpose::Init, &[0, 1]));
        let xs: Vec<f64> = (0..200_000).map(|_| n.sample()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
        let kurt = xs.iter().map(|x| x.powi(4)).sum::<f64>() / xs.len() as f64;
        assert!((kurt - 3.0).abs() < 0.1, "{kurt}");

        let a: u64 = stream(42, Purpose::Init, &[0, 1]).random();
        let b: u64 = stream(42, Purpose::Init, &[0, 1]).random();
        let c: u64 = stream(42, Purpose::Init, &[1, 0]).random();
        let d: u64 = stream(43, Purpose::Init, &[0, 1]).random();
        let e: u64 = stream(42, Purpose::Dropout, &[0, 1]).random();
        assert_eq!(a, b);
        assert!(a != c && a != d && a != e);
    }

    #[test]
    fn dropout_mask_keeps_the_expected_fraction_and_scales() {
        let mut rng = stream(1, Purpose::Dropout, &[0]);
        let m = dropout_mask(&mut rng, 100_000, 0.05);
        let dropped = m.iter().filter(|&&x| x == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.05).abs() < 0.003, "{dropped}");
        assert!(m.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.95).abs() < 1e-6));
        let mean = m.iter().map(|&x| x as f64).sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.005, "{mean}");
    }
}
