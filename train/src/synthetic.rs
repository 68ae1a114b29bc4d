//! A deterministic stand-in [`Trainer`] for orchestration tests and demos: no model, no data,
//! just curves shaped like the study's.
//!
//! Every job produces the same curve for the same `(init, lr, seed, train settings)`: the eval
//! loss decays from the base model's 2.381 (ml-spec §1.6) to the study's final eval loss for that
//! cell (ml-spec §1.7, the mean of 4 seeds) plus a small per-seed offset. The cells the study saw
//! explode (Reversed and Ortho-QR-Match from 5e-3, Ortho-QR-Match already at 2e-3, every init at
//! 1e-2) jump to a loss of about 7–9 part-way through and report `diverged: true`, so a sweep run
//! with this trainer yields result tables that look like the study's.

use std::{cell::Cell, thread, time::Duration, time::Instant};

use lorasweep_common::{JobSpec, LoraInit, LossPoint, Series};

use crate::{
    TrainError,
    rng::hash_words as hash,
    trainer::{Progress, TrainOutcome, Trainer},
};

/// Optimizer steps of a job whose `[train] max_steps` is unset: the study's one epoch of
/// no_robots at 16 sequences per step comes to T ≈ 163 (ml-spec §1.4).
pub const DEFAULT_SYNTHETIC_STEPS: u64 = 163;

/// Eval loss of the base model before any update (ml-spec §1.6), where every curve starts.
const BASE_EVAL_LOSS: f64 = 2.381;

/// The learning rates of the study's table (ml-spec §1.7), ascending; rows of [`FINAL_EVAL`].
const TABLE_LRS: [f64; 7] = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2];

/// The study's final eval losses (ml-spec §1.7), row per lr of [`TABLE_LRS`], columns in
/// [`LoraInit::ALL`] order. Values above [`DIVERGED_ABOVE`] are cells that diverged.
const FINAL_EVAL: [[f64; 5]; 7] = [
    [2.2576, 2.2513, 2.2801, 2.2802, 2.2874],
    [2.2391, 2.2440, 2.2633, 2.2667, 2.2809],
    [2.2228, 2.2461, 2.2558, 2.2611, 2.2827],
    [2.2178, 2.2607, 2.2592, 2.2700, 2.3014],
    [2.2173, 2.2898, 2.2721, 2.2925, 7.0413],
    [2.2348, 7.2726, 2.3011, 2.3891, 7.8028],
    [9.3169, 7.7805, 7.4645, 7.1409, 7.8530],
];

/// A table value above this marks a diverged cell (stable cells end near 2.2–2.4).
const DIVERGED_ABOVE: f64 = 5.0;

/// The synthetic trainer. Cheap to construct; holds only its per-step sleep.
#[derive(Debug, Clone)]
pub struct SyntheticTrainer {
    /// Wall time spent per optimizer step, so tests and demos can make jobs take a while.
    step_time: Duration,
}

impl SyntheticTrainer {
    /// A trainer that sleeps `step_time` per optimizer step.
    pub fn new(step_time: Duration) -> Self {
        Self { step_time }
    }
}

/// The final eval loss the synthetic curve of `(init, lr, seed)` ends at, and whether it diverges.
///
/// Learning rates between the table's rows take the row nearest in log space; rates outside the
/// table take its first or last row.
pub fn synthetic_final_loss(init: LoraInit, lr: f64, seed: u64) -> (f64, bool) {
    let row = TABLE_LRS
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| {
            let da = (a.ln() - lr.ln()).abs();
            let db = (b.ln() - lr.ln()).abs();
            da.total_cmp(&db)
        })
        .map(|(i, _)| i)
        .expect("TABLE_LRS is not empty");
    let column = LoraInit::ALL.iter().position(|i| *i == init).expect("ALL lists every init");
    let mean = FINAL_EVAL[row][column];
    let diverged = mean > DIVERGED_ABOVE;
    // The study's seeds spread about ±0.3% around the mean when stable, a few tenths when diverged.
    let spread = if diverged { 0.4 } else { 0.006 };
    (mean + spread * centred_noise(hash(&[column as u64, lr.to_bits(), seed, u64::MAX])), diverged)
}

impl Trainer for SyntheticTrainer {
    fn train(&mut self, job: &JobSpec, progress: &mut dyn Progress) -> Result<TrainOutcome, TrainError> {
        let started = Instant::now();
        let train = &job.train;
        if train.grad_accum == 0 || train.eval_every == 0 {
            return Err(TrainError::Invalid(format!(
                "train.grad_accum ({}) and train.eval_every ({}) must be positive",
                train.grad_accum, train.eval_every
            )));
        }
        let steps = train.max_steps.unwrap_or(DEFAULT_SYNTHETIC_STEPS);
        let accum = train.grad_accum as u64;
        progress.total_steps(steps);

        let curve = Curve::new(job, steps);
        // A Cell so the loop can read it while `note` holds on to it.
        let diverged = Cell::new(false);
        let diverged_at = Cell::new(None);
        let opt_step = Cell::new(0u64);
        let note = |progress: &mut dyn Progress, point: LossPoint| {
            if !point.loss.is_finite() || point.loss > train.divergence_threshold {
                if !diverged.get() {
                    diverged_at.set(Some((opt_step.get(), point.loss)));
                }
                diverged.set(true);
            }
            progress.point(point);
        };

        // Eval at micro-batch 0, before any update (ml-spec §1.5).
        let first = LossPoint { series: Series::Eval, step: 0, loss: curve.eval(0.0) };
        let mut last_eval = Some(first.loss);
        note(progress, first);
        let mut stopped_early = false;
        let tokens_per_step = accum * train.micro_batch as u64 * job.data.max_length as u64;
        for step in 1..=steps {
            // Every step is a boundary, and there is no state worth a checkpoint.
            if progress.cancelled() || progress.stop_requested() {
                return Err(TrainError::Cancelled);
            }
            if !self.step_time.is_zero() {
                thread::sleep(self.step_time);
            }
            progress.tokens(tokens_per_step);
            opt_step.set(step);
            let u = step as f64 / steps as f64;
            note(progress, LossPoint { series: Series::Train, step, loss: curve.train(u, step) });
            // Evals run at micro-batch multiples of eval_every that fall inside this step's group.
            let micro_end = step * accum;
            let first_micro = (step - 1) * accum + 1;
            let mut k = first_micro.div_ceil(train.eval_every) * train.eval_every;
            while k <= micro_end && step < steps {
                let loss = curve.eval(k as f64 / (steps * accum) as f64);
                last_eval = Some(loss);
                note(progress, LossPoint { series: Series::Eval, step: k, loss });
                k += train.eval_every;
            }
            if train.early_stop_on_divergence && diverged.get() {
                stopped_early = true;
                break;
            }
        }
        if !stopped_early && steps > 0 {
            // The end-of-epoch eval (ml-spec §1.5), at the last micro-batch index.
            let loss = curve.eval(1.0);
            last_eval = Some(loss);
            note(progress, LossPoint { series: Series::Eval, step: steps * accum, loss });
        }
        let tokens = steps * accum * train.micro_batch as u64 * job.data.max_length as u64;
        Ok(TrainOutcome {
            final_eval_loss: last_eval,
            diverged: diverged.get(),
            diverged_at: diverged_at.get(),
            tokens,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The shape of one job's curves, as a function of training progress `u` in `[0, 1]`.
#[derive(Debug)]
struct Curve {
    /// Where the eval curve ends (the study's final eval loss plus the seed's offset).
    target: f64,
    /// The progress at which a diverging run blows up; `None` for a stable run.
    blow_up_at: Option<f64>,
    /// Seeds the per-step train noise.
    key: u64,
}

impl Curve {
    fn new(job: &JobSpec, steps: u64) -> Self {
        let (target, diverged) = synthetic_final_loss(job.init, job.lr, job.seed);
        // Higher rates blow up earlier; never at the very start so the curve first looks sane.
        let blow_up_at = diverged.then_some(if job.lr >= 7e-3 { 0.15 } else { 0.35 });
        let key = hash(&[job.init as u64, job.lr.to_bits(), job.seed, steps]);
        Self { target, blow_up_at, key }
    }

    /// The eval loss at progress `u`.
    fn eval(&self, u: f64) -> f64 {
        match self.blow_up_at {
            Some(at) if u >= at => {
                // After the blow-up the loss sits near the target with a slow wobble.
                self.target + 0.3 * (1.0 - u) * (u * 20.0).sin()
            }
            Some(at) => {
                // Before it, the run improves like a healthy one heading for ~2.25.
                let healthy = 2.25;
                healthy + (BASE_EVAL_LOSS - healthy) * (1.0 - u / at * 0.5).powi(2)
            }
            None => self.target + (BASE_EVAL_LOSS - self.target) * (1.0 - u).powi(3),
        }
    }

    /// The train loss of optimizer step `step` at progress `u`: a bit below eval, with noise.
    fn train(&self, u: f64, step: u64) -> f64 {
        let noise = 0.08 * centred_noise(hash(&[self.key, step]));
        (self.eval(u) - 0.05 + noise).max(0.0)
    }
}

/// Maps a hash to `[-1, 1)`.
fn centred_noise(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the trainer reports; cancels after `cancel_after` points if set.
    #[derive(Default)]
    struct Recorder {
        total: Option<u64>,
        points: Vec<LossPoint>,
        cancel_after: Option<usize>,
    }

    impl Progress for Recorder {
        fn total_steps(&mut self, steps: u64) {
            self.total = Some(steps);
        }
        fn point(&mut self, point: LossPoint) {
            self.points.push(point);
        }
        fn cancelled(&self) -> bool {
            self.cancel_after.is_some_and(|n| self.points.len() >= n)
        }
    }

    fn job(init: LoraInit, lr: f64, seed: u64, max_steps: Option<u64>) -> JobSpec {
        let train = lorasweep_common::job::TrainSpec { max_steps, ..Default::default() };
        JobSpec { model: Default::default(), data: Default::default(), lora: Default::default(), train, init, lr, seed }
    }

    fn run(spec: &JobSpec) -> (Recorder, TrainOutcome) {
        let mut rec = Recorder::default();
        let out = SyntheticTrainer::new(Duration::ZERO).train(spec, &mut rec).expect("trains");
        (rec, out)
    }

    #[test]
    fn default_job_has_the_studys_steps_and_eval_schedule() {
        let (rec, out) = run(&job(LoraInit::Standard, 2e-3, 42, None));
        assert_eq!(rec.total, Some(DEFAULT_SYNTHETIC_STEPS));
        let train: Vec<u64> = rec.points.iter().filter(|p| p.series == Series::Train).map(|p| p.step).collect();
        assert_eq!(train, (1..=163).collect::<Vec<_>>());
        let eval: Vec<u64> = rec.points.iter().filter(|p| p.series == Series::Eval).map(|p| p.step).collect();
        // Every 40 micro-batches from 0 up to 640, then the end at 163 * 4 = 652.
        let mut expected: Vec<u64> = (0..=16).map(|k| k * 40).collect();
        expected.push(652);
        assert_eq!(eval, expected);
        assert!(!out.diverged);
        let final_loss = out.final_eval_loss.expect("an eval ran");
        assert!((final_loss - 2.2173).abs() < 0.02, "{final_loss}");
        assert!((rec.points[0].loss - BASE_EVAL_LOSS).abs() < 1e-9);
        assert_eq!(out.tokens, 163 * 4 * 4 * 1024);
    }

    #[test]
    fn same_cell_gives_the_same_curve_and_seeds_differ() {
        let (a, _) = run(&job(LoraInit::Reversed, 1e-3, 43, Some(20)));
        let (b, _) = run(&job(LoraInit::Reversed, 1e-3, 43, Some(20)));
        let (c, _) = run(&job(LoraInit::Reversed, 1e-3, 44, Some(20)));
        assert_eq!(a.points, b.points);
        assert_ne!(a.points, c.points);
    }

    #[test]
    fn divergence_follows_the_studys_table() {
        let diverges = |init, lr| run(&job(init, lr, 42, Some(30))).1.diverged;
        assert!(diverges(LoraInit::OrthoQrMatch, 2e-3));
        assert!(!diverges(LoraInit::Reversed, 2e-3));
        assert!(diverges(LoraInit::Reversed, 5e-3));
        assert!(!diverges(LoraInit::Standard, 5e-3));
        assert!(!diverges(LoraInit::OrthoEye, 5e-3));
        for init in LoraInit::ALL {
            assert!(diverges(init, 1e-2), "{init} at 1e-2");
            assert!(!diverges(init, 1e-4), "{init} at 1e-4");
        }
        let (rec, out) = run(&job(LoraInit::Standard, 1e-2, 45, Some(30)));
        let last = out.final_eval_loss.expect("eval ran");
        assert!((7.0..10.5).contains(&last), "{last}");
        assert!(rec.points.iter().any(|p| p.loss > 6.0));
    }

    #[test]
    fn small_step_counts_still_end_with_an_eval() {
        let (rec, out) = run(&job(LoraInit::OrthoEye, 2e-4, 42, Some(3)));
        let eval: Vec<u64> = rec.points.iter().filter(|p| p.series == Series::Eval).map(|p| p.step).collect();
        assert_eq!(eval, vec![0, 12]);
        assert!(out.final_eval_loss.is_some());
        let (rec, out) = run(&job(LoraInit::OrthoEye, 2e-4, 42, Some(0)));
        assert_eq!(rec.points.len(), 1, "only the step-0 eval");
        assert_eq!(out.final_eval_loss, Some(rec.points[0].loss));
    }

    #[test]
    fn cancellation_stops_the_run() {
        let spec = job(LoraInit::Standard, 1e-3, 42, Some(100));
        let mut rec = Recorder { cancel_after: Some(5), ..Default::default() };
        let err = SyntheticTrainer::new(Duration::ZERO).train(&spec, &mut rec).unwrap_err();
        assert!(matches!(err, TrainError::Cancelled));
        assert!(rec.points.len() < 10);
    }
}
