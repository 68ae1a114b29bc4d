//! The five LoRA initialisations compared by the study (ml-spec §2), by their CLI/sweep-file names.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::Error;

/// One of the study's LoRA inits. The exact formulas live in `lorasweep-train` (`init.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraInit {
    /// A ~ Kaiming-uniform(a=√5), B = 0 (PEFT's default; the study's Init[A]).
    Standard,
    /// A = 0, B ~ Kaiming-uniform(a=√5) with fan_in = r (the study's Init[B]).
    Reversed,
    /// A ⟂ B with Q = I_r and Kaiming-matched scales 1/√d_in, 1/√r.
    OrthoEye,
    /// A ⟂ B from a QR of a Gaussian r×r, scales 1/10 (PEFT `init_lora_weights="orthogonal"`).
    OrthoQrConst,
    /// A ⟂ B from a QR of a Gaussian r×r, scales 1/√d_in, 1/√r (the study's `orthogonal_qr`).
    OrthoQrMatch,
}

impl LoraInit {
    /// All inits, in the column order of the study's tables.
    pub const ALL: [LoraInit; 5] =
        [LoraInit::Standard, LoraInit::Reversed, LoraInit::OrthoEye, LoraInit::OrthoQrConst, LoraInit::OrthoQrMatch];

    /// The name used on the command line, in sweep files and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            LoraInit::Standard => "standard",
            LoraInit::Reversed => "reversed",
            LoraInit::OrthoEye => "ortho-eye",
            LoraInit::OrthoQrConst => "ortho-qr-const",
            LoraInit::OrthoQrMatch => "ortho-qr-match",
        }
    }

    /// The column title the study's tables use.
    pub fn title(self) -> &'static str {
        match self {
            LoraInit::Standard => "Standard",
            LoraInit::Reversed => "Reversed",
            LoraInit::OrthoEye => "Ortho (Eye)",
            LoraInit::OrthoQrConst => "Ortho QR (Const)",
            LoraInit::OrthoQrMatch => "Ortho QR (Match)",
        }
    }

    /// The allowed names, comma-separated, for error messages.
    pub fn allowed() -> String {
        Self::ALL.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for LoraInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LoraInit {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| Error::invalid("init", format!("unknown init {s:?}; allowed: {}", Self::allowed())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_refused() {
        for init in LoraInit::ALL {
            assert_eq!(init.name().parse::<LoraInit>().unwrap(), init);
        }
        let err = "kaiming".parse::<LoraInit>().unwrap_err().to_string();
        assert!(err.contains("kaiming") && err.contains("ortho-qr-match"), "{err}");
    }
}
