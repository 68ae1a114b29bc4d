//! The seven linear projections of a Qwen2 decoder layer, the places a LoRA adapter can sit.
//!
//! Their order is part of the study's reproducibility: a projection's [`Projection::index`] is
//! one component of the key of the random streams its adapter is initialised and dropped out
//! from, so reordering [`Projection::ALL`] would change every adapter a seed produces.

use std::{fmt, str::FromStr};

/// One projection of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// `self_attn.q_proj` (with bias).
    Q,
    /// `self_attn.k_proj` (with bias).
    K,
    /// `self_attn.v_proj` (with bias).
    V,
    /// `self_attn.o_proj`.
    O,
    /// `mlp.gate_proj`.
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl Projection {
    /// Every projection, in index order (see the module doc: this order is a seed key).
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// The Hugging Face / PEFT module names, in [`Projection::ALL`] order.
    pub const NAMES: [&'static str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// The module name (`q_proj`, …), as in checkpoints, PEFT files and sweep files.
    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// The position in [`Projection::ALL`]: the random-stream key component and array slot.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The projection named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().position(|n| *n == name).map(|i| Self::ALL[i])
    }

    /// The block of the decoder layer it belongs to: `self_attn` or `mlp`.
    pub fn block(self) -> &'static str {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => "self_attn",
            Projection::Gate | Projection::Up | Projection::Down => "mlp",
        }
    }

    /// Whether Qwen2 gives it a bias (only q, k and v do).
    pub fn has_bias(self) -> bool {
        matches!(self, Projection::Q | Projection::K | Projection::V)
    }

    /// `(d_in, d_out)` for a model of width `hidden`, key/value width `kv` (heads × head size)
    /// and MLP width `intermediate`.
    pub fn dims(self, hidden: usize, kv: usize, intermediate: usize) -> (usize, usize) {
        match self {
            Projection::Q | Projection::O => (hidden, hidden),
            Projection::K | Projection::V => (hidden, kv),
            Projection::Gate | Projection::Up => (hidden, intermediate),
            Projection::Down => (intermediate, hidden),
        }
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Projection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| format!("unknown projection {s:?}; allowed: {}", Self::NAMES.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_the_seed_key_order() {
        // The order is a seed key: this list is what every stored adapter was drawn with.
        assert_eq!(Projection::NAMES, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
        for (i, p) in Projection::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i);
            assert_eq!(Projection::from_name(p.name()), Some(p));
            assert_eq!(p.to_string().parse::<Projection>(), Ok(p));
        }
        assert!("lm_head".parse::<Projection>().unwrap_err().contains("q_proj"));
    }

    #[test]
    fn blocks_biases_and_dims_follow_qwen2() {
        assert_eq!(Projection::K.block(), "self_attn");
        assert_eq!(Projection::Down.block(), "mlp");
        assert_eq!(Projection::ALL.iter().filter(|p| p.has_bias()).count(), 3);
        assert_eq!(Projection::V.dims(64, 16, 128), (64, 16));
        assert_eq!(Projection::Down.dims(64, 16, 128), (128, 64));
    }
}
