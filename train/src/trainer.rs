//! The seam between the async worker daemon and the synchronous training code.
//!
//! The daemon runs a [`Trainer`] on a blocking thread; the trainer reports loss points and
//! checks for cancellation through [`Progress`]. Two trainers implement it: the candle
//! LoRA trainer ([`crate::CandleTrainer`]) and a deterministic synthetic one for orchestration tests.

use lorasweep_common::{JobSpec, LossPoint};

use crate::TrainError;

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    /// The end-of-training eval loss; `None` if no eval ran.
    pub final_eval_loss: Option<f64>,
    /// The run's loss became NaN/inf or passed the job's divergence threshold.
    pub diverged: bool,
    /// Where it was first seen diverging: the optimizer step and the loss (train or eval) that
    /// crossed the threshold. `None` when not diverged, or when the run resumed from a
    /// checkpoint that was already diverged.
    pub diverged_at: Option<(u64, f64)>,
    /// Training tokens processed.
    pub tokens: u64,
    /// Wall time of the run in seconds.
    pub seconds: f64,
}

/// The daemon's side of a running job, as the trainer sees it. Implementations must be cheap:
/// they are called from the training loop.
pub trait Progress {
    /// The run's total number of optimizer steps, once known (for progress bars and ETAs).
    fn total_steps(&mut self, steps: u64);
    /// A new loss point. Must not block for long; the daemon buffers behind a bounded channel.
    fn point(&mut self, point: LossPoint);
    /// True once the job must stop now (lease lost, job cancelled, a hard shutdown).
    /// Trainers check it at least once per micro-batch.
    fn cancelled(&self) -> bool;
    /// True once the job should stop at the next optimizer-step boundary, after handing over a
    /// [`Progress::checkpoint`] of that step (a preempted worker: SIGTERM), so that the next
    /// attempt resumes there. The trainer then returns [`TrainError::Cancelled`]. The default
    /// never asks.
    fn stop_requested(&self) -> bool {
        false
    }
    /// `n` more tokens went through a forward and backward pass (once per micro-batch), for
    /// live throughput figures. The default ignores them.
    fn tokens(&mut self, n: u64) {
        let _ = n;
    }
    /// A checkpoint taken after optimizer step `step` (every `train.checkpoint_every` steps),
    /// serialised by [`crate::checkpoint::Checkpoint::to_bytes`]. The default drops it:
    /// only a `Progress` that stores checkpoints makes a run resumable.
    fn checkpoint(&mut self, step: u64, bytes: Vec<u8>) {
        let _ = (step, bytes);
    }
    /// The next checkpoint to try resuming from: the newest first, then older ones each time
    /// it is called again (after the trainer rejected the previous one), `None` when there are
    /// no more (the run starts at step 0). The default has none.
    fn resume_candidate(&mut self) -> Option<(u64, Vec<u8>)> {
        None
    }
    /// The run's final adapter, serialised by [`crate::checkpoint::adapter_artifact`],
    /// handed over after a run that ended without error. The default drops it.
    fn final_adapter(&mut self, bytes: Vec<u8>) {
        let _ = bytes;
    }
    /// The run resumed from the checkpoint of optimizer step `step` (after
    /// [`Progress::resume_candidate`]). The default does nothing.
    fn resumed(&mut self, step: u64) {
        let _ = step;
    }
    /// Something the job's owner should see (e.g. a checkpoint that could not be used). The
    /// default logs it.
    fn warning(&mut self, message: String) {
        tracing::warn!("{message}");
    }
}

/// A training backend. Synchronous: it runs on a dedicated blocking thread.
pub trait Trainer: Send {
    /// Runs one job to completion (or until `progress.cancelled()`), reporting points on the way.
    ///
    /// # Errors
    /// [`TrainError`] naming the cause; [`TrainError::Cancelled`] when stopped through `progress`.
    fn train(&mut self, job: &JobSpec, progress: &mut dyn Progress) -> Result<TrainOutcome, TrainError>;
}
