//! The learning-rate schedule and step bookkeeping of the study's loop (ml-spec §1.4).
//!
//! transformers `get_linear_schedule_with_warmup` via `LambdaLR`: the factor at scheduler
//! step s is `s/warmup` for `s < warmup`, else `max(0, (T−s)/(T−warmup))`. LambdaLR applies
//! factor(0) before the first optimizer step, so the first step runs at lr 0 (Adam moments still
//! update). `T = (micro_batches_per_epoch × epochs) // grad_accum`, `warmup = int(ratio·T)`.

/// A linear warmup then linear decay schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LinearSchedule {
    /// Peak learning rate.
    pub(crate) peak: f64,
    /// Warmup steps.
    pub(crate) warmup: u64,
    /// Total steps T.
    pub(crate) total: u64,
}

impl LinearSchedule {
    /// The study's schedule for a run.
    pub(crate) fn new(
        peak: f64,
        micro_batches_per_epoch: u64,
        epochs: u64,
        grad_accum: u64,
        warmup_ratio: f64,
    ) -> Self {
        let total = micro_batches_per_epoch * epochs / grad_accum.max(1);
        // Python `int()` truncates toward zero.
        let warmup = (warmup_ratio * total as f64) as u64;
        Self { peak, warmup, total }
    }

    /// The multiplier at scheduler step `s` (0-based: the s-th optimizer step uses factor(s)).
    pub(crate) fn factor(&self, s: u64) -> f64 {
        if s < self.warmup {
            return s as f64 / self.warmup.max(1) as f64;
        }
        let denom = self.total.saturating_sub(self.warmup).max(1) as f64;
        (self.total as f64 - s as f64).max(0.0) / denom
    }

    /// The learning rate of optimizer step `s` (0-based).
    pub(crate) fn lr(&self, s: u64) -> f64 {
        self.peak * self.factor(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_shape_starts_at_zero_peaks_after_warmup_and_decays_to_zero() {
        // One epoch of 653 micro-batches, accumulation 4: T = 163, warmup = 16.
        let s = LinearSchedule::new(1e-3, 653, 1, 4, 0.1);
        assert_eq!((s.total, s.warmup), (163, 16));
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(8) - 0.5e-3).abs() < 1e-15);
        assert!((s.lr(16) - 1e-3).abs() < 1e-15);
        assert!((s.lr(17) - 1e-3 * 146.0 / 147.0).abs() < 1e-15);
        assert_eq!(s.lr(163), 0.0);
        assert_eq!(s.lr(500), 0.0);
    }

    #[test]
    fn zero_warmup_and_tiny_runs_do_not_divide_by_zero() {
        let s = LinearSchedule::new(1.0, 8, 1, 4, 0.1);
        assert_eq!((s.total, s.warmup), (2, 0));
        assert_eq!(s.factor(0), 1.0);
        assert_eq!(s.factor(1), 0.5);
        let s = LinearSchedule::new(1.0, 3, 1, 4, 0.1);
        assert_eq!(s.total, 0);
        assert_eq!(s.factor(0), 0.0);
    }
}
