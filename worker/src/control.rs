//! One attempt's shared state, as the trainer thread, the point reporter, the artifact uploader
//! and the heartbeat see it. A leaf module: it knows nothing of the coordinator's API, so the
//! modules that talk to it ([`crate::job`], [`crate::report`], [`crate::artifacts`]) all depend
//! on this one and not on each other.
//!
//! The invariant "a checkpoint is uploaded only once every point before it is stored" lives in
//! [`PointLedger`]: the trainer records each point it sends, the reporter records each point the
//! coordinator is done with, and an upload waits until the second count reaches the first as it
//! was when the checkpoint was taken. A resumed attempt emits only the points after its
//! checkpoint, so this is what keeps the stored curve free of gaps.

use std::{
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// How long an attempt's last words (the final points, `CompleteJob`, `FailJob`) are retried
/// while the coordinator is unreachable: a restart takes seconds; after this long the lease has
/// long expired and the job is requeued anyway. A shutting-down worker waits only what is left
/// of its [`Shutdown::grace`].
pub(crate) const FINISH_PATIENCE: Duration = Duration::from_secs(600);

/// The worker's shutdown as every attempt sees it. The first signal (`soft`) asks the trainer to
/// stop at the next optimizer-step boundary, write a checkpoint of that step, and let it be
/// uploaded before the lease is released: a preempted job then resumes where it stopped, not at
/// its last periodic checkpoint. `hard` (a second signal, or [`Shutdown::work_window`] after the
/// first) stops the trainer at once and abandons uploads; what is left of `grace` after that
/// ([`Shutdown::reserve`]) is for releasing the lease, so the process exits within `grace`.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    /// Cancelled by the first SIGTERM/ctrl-c.
    pub(crate) soft: CancellationToken,
    /// Cancelled by a second signal or when the work window ends.
    pub(crate) hard: CancellationToken,
    /// `--shutdown-grace`: from the first signal to the exit.
    pub(crate) grace: Duration,
}

impl Shutdown {
    /// A shutdown of `grace`; [`Shutdown::escalate_after_window`] cancels `hard` if no second
    /// signal does.
    pub(crate) fn new(soft: CancellationToken, hard: CancellationToken, grace: Duration) -> Self {
        Self { soft, hard, grace }
    }

    /// The part of `grace` kept for releasing the lease after a hard stop: 5 s, or a quarter
    /// of a shorter grace.
    pub(crate) fn reserve(&self) -> Duration {
        (self.grace / 4).min(Duration::from_secs(5))
    }

    /// From the first signal to the hard stop: the trainer's time to reach a step boundary,
    /// checkpoint, and have points and checkpoint stored.
    pub(crate) fn work_window(&self) -> Duration {
        self.grace.saturating_sub(self.reserve())
    }

    /// True once the first signal arrived.
    pub(crate) fn requested(&self) -> bool {
        self.soft.is_cancelled()
    }

    /// Cancels `hard` a work window after `soft`, unless it was cancelled already.
    pub(crate) async fn escalate_after_window(self) {
        self.soft.cancelled().await;
        tokio::select! {
            () = self.hard.cancelled() => {}
            () = tokio::time::sleep(self.work_window()) => {
                tracing::warn!(grace = ?self.grace, "shutdown grace running out: stopping the trainer without a checkpoint");
                self.hard.cancel();
            }
        }
    }
}

/// Why an attempt was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The coordinator no longer considers this attempt live (requeued after expiry, or gone):
    /// nothing more is said about it.
    LeaseLost,
    /// A user cancelled the job.
    Cancelled,
    /// The coordinator kept answering an error that retrying did not cure (an `Internal`
    /// status, say): the worker gives the attempt back with this reason and leases the next job.
    GaveUp(String),
}

/// Counts of one attempt's loss points: sent by the trainer, and done with by the reporter
/// (acknowledged by the coordinator, or refused by it and discarded).
#[derive(Debug)]
pub(crate) struct PointLedger {
    sent: AtomicU64,
    done: watch::Sender<u64>,
}

impl PointLedger {
    fn new() -> Self {
        Self { sent: AtomicU64::new(0), done: watch::Sender::new(0) }
    }

    /// The trainer sent one more point.
    pub(crate) fn record_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Points the trainer has sent so far: what an artifact handed over now must wait for.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The reporter is done with `n` more points.
    pub(crate) fn record_done(&self, n: u64) {
        self.done.send_modify(|d| *d += n);
    }

    /// Points sent and not yet done with (buffered, in flight, or waiting for a coordinator).
    pub(crate) fn pending(&self) -> u64 {
        self.sent().saturating_sub(*self.done.borrow())
    }

    /// Resolves once the reporter is done with at least `n` points.
    pub(crate) async fn wait_done(&self, n: u64) {
        let mut done = self.done.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = done.wait_for(|d| *d >= n).await;
    }
}

/// State shared by the trainer thread, the reporter, the uploader and the heartbeat of one
/// attempt.
#[derive(Debug)]
pub(crate) struct JobControl {
    /// Cancelled when the attempt is dropped.
    drop_token: CancellationToken,
    /// The first reason it was dropped.
    reason: Mutex<Option<StopReason>>,
    /// The worker's shutdown: stops the trainer (soft: at a step, after a checkpoint) but not
    /// the reporting.
    shutdown: Shutdown,
    /// Highest train step reported, for heartbeats.
    step: AtomicU64,
    /// Total steps, once the trainer said.
    total: AtomicU64,
    /// Wakes the heartbeat when the total becomes known, so progress displays get it at once
    /// rather than a heartbeat interval later.
    total_known: Notify,
    /// When a shutting-down worker stops retrying; fixed the first time it is asked for.
    deadline: OnceLock<Instant>,
    /// Sent and stored points; see the module doc.
    pub(crate) points: PointLedger,
}

impl JobControl {
    pub(crate) fn new(shutdown: Shutdown) -> Self {
        Self {
            drop_token: CancellationToken::new(),
            reason: Mutex::new(None),
            shutdown,
            step: AtomicU64::new(0),
            total: AtomicU64::new(0),
            total_known: Notify::new(),
            deadline: OnceLock::new(),
            points: PointLedger::new(),
        }
    }

    /// Drops the attempt; the first reason sticks.
    pub(crate) fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().expect("no code panics while holding this lock");
        r.get_or_insert(reason);
        self.drop_token.cancel();
    }

    /// Resolves once the attempt is dropped.
    pub(crate) async fn dropped(&self) {
        self.drop_token.cancelled().await;
    }

    /// True once the attempt is dropped.
    pub(crate) fn is_dropped(&self) -> bool {
        self.drop_token.is_cancelled()
    }

    /// Why the attempt was dropped, if it was.
    pub(crate) fn reason(&self) -> Option<StopReason> {
        self.reason.lock().expect("no code panics while holding this lock").clone()
    }

    /// True once the worker is shutting down (the trainer should stop at the next step).
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutdown.requested()
    }

    /// True once the trainer must stop at once (a second signal, or the grace running out).
    pub(crate) fn hard_stopped(&self) -> bool {
        self.shutdown.hard.is_cancelled()
    }

    /// `None` while the worker runs; during shutdown, the moment to stop retrying deliveries
    /// (the end of the shutdown's work window).
    pub(crate) fn final_deadline(&self) -> Option<Instant> {
        self.shutdown.requested().then(|| *self.deadline.get_or_init(|| Instant::now() + self.shutdown.work_window()))
    }

    /// Records a train step reached.
    pub(crate) fn record_step(&self, step: u64) {
        self.step.fetch_max(step, Ordering::Relaxed);
    }

    /// The highest train step reached.
    pub(crate) fn step(&self) -> u64 {
        self.step.load(Ordering::Relaxed)
    }

    /// Records the run's total steps and wakes the heartbeat.
    pub(crate) fn set_total(&self, steps: u64) {
        self.total.store(steps, Ordering::Relaxed);
        self.total_known.notify_one();
    }

    /// The run's total steps (0 until known).
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Resolves when the total steps become known.
    pub(crate) async fn total_known(&self) {
        self.total_known.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upload_waits_until_every_point_before_it_is_done() {
        let control =
            JobControl::new(Shutdown::new(CancellationToken::new(), CancellationToken::new(), Duration::from_secs(25)));
        for _ in 0..3 {
            control.points.record_sent();
        }
        let before = control.points.sent();
        let wait = control.points.wait_done(before);
        tokio::pin!(wait);
        control.points.record_done(2);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut wait).await.is_err(),
            "2 of 3 points stored: the upload must still wait"
        );
        control.points.record_done(1);
        tokio::time::timeout(Duration::from_secs(5), wait).await.expect("all 3 stored: the wait ends");
    }

    #[test]
    fn the_first_stop_reason_sticks() {
        let control =
            JobControl::new(Shutdown::new(CancellationToken::new(), CancellationToken::new(), Duration::from_secs(25)));
        assert!(!control.is_dropped());
        control.stop(StopReason::GaveUp("internal".into()));
        control.stop(StopReason::LeaseLost);
        assert!(control.is_dropped());
        assert_eq!(control.reason(), Some(StopReason::GaveUp("internal".into())));
    }
}
