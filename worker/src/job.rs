//! Runs one leased attempt: the trainer on a blocking thread, the point reporter and the lease
//! heartbeat on the async side, and the final `CompleteJob`/`FailJob`. The state they share is
//! [`JobControl`] (in [`crate::control`]).
//!
//! The heartbeat has its own timer task, so a long training step never starves it. Whatever
//! learns first that the attempt is no longer ours (a heartbeat answering `cancel`, or any call
//! answered FAILED_PRECONDITION) calls [`JobControl::stop`]: the trainer sees it through
//! [`Progress::cancelled`] and the job is dropped without another word to the coordinator.
//! A coordinator that keeps answering errors (see `rpc::Patience`) makes the attempt
//! [`StopReason::GaveUp`]: it is given back with `FailJob` and the reason, and the daemon leases
//! the next job.

use std::{sync::Arc, time::Duration};

use lorasweep_common::{JobSpec, LossPoint, Series};
use lorasweep_proto::pb;
use lorasweep_train::{Progress, TrainError, TrainOutcome, Trainer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    artifacts::{self, ArtifactsGrpc, AttemptArtifacts, TrainerArtifacts},
    connect::Authed,
    control::{FINISH_PATIENCE, JobControl, Shutdown, StopReason},
    report::{self, ReportEnd, ReportTarget},
    rpc::{self, Patience},
    status::WorkerStatus,
};

/// Capacity of the trainer → reporter channel. The trainer blocks when it is full, which only
/// happens if the reporter stops draining (see `report::MAX_PENDING`).
const POINT_CHANNEL: usize = 1024;

/// The [`Progress`] the trainer thread sees: points go into the bounded channel.
struct ChannelProgress {
    tx: mpsc::Sender<LossPoint>,
    control: Arc<JobControl>,
    status: Arc<WorkerStatus>,
    /// Checkpoint/adapter uploads, resume downloads and warnings.
    artifacts: TrainerArtifacts,
}

impl Progress for ChannelProgress {
    fn total_steps(&mut self, steps: u64) {
        self.control.set_total(steps);
    }

    fn point(&mut self, point: LossPoint) {
        if point.series == Series::Train {
            self.control.record_step(point.step);
        }
        // An error means the reporter is gone because the job was dropped: nothing to do.
        let _ = self.tx.blocking_send(point);
        self.control.points.record_sent();
    }

    fn cancelled(&self) -> bool {
        self.control.is_dropped() || self.control.hard_stopped()
    }

    fn stop_requested(&self) -> bool {
        self.control.shutting_down()
    }

    fn tokens(&mut self, n: u64) {
        self.status.add_tokens(n);
    }

    fn checkpoint(&mut self, step: u64, bytes: Vec<u8>) {
        self.artifacts.send(pb::ArtifactKind::Checkpoint, step, bytes);
    }

    fn final_adapter(&mut self, bytes: Vec<u8>) {
        self.artifacts.send(pb::ArtifactKind::Adapter, 0, bytes);
    }

    fn resume_candidate(&mut self) -> Option<(u64, Vec<u8>)> {
        self.artifacts.next_candidate()
    }

    fn warning(&mut self, message: String) {
        self.artifacts.warning(message);
    }

    fn resumed(&mut self, step: u64) {
        self.artifacts.resumed(step);
    }
}

/// What one attempt needs from the daemon.
#[derive(Debug, Clone)]
pub(crate) struct JobContext {
    /// The coordinator.
    pub(crate) client: pb::workers_client::WorkersClient<Authed>,
    /// The coordinator's artifact store (checkpoints, adapters).
    pub(crate) artifacts: ArtifactsGrpc,
    /// This worker's id.
    pub(crate) worker_id: String,
    /// Heartbeat period from registration.
    pub(crate) heartbeat_every: Duration,
    /// Retry backoff cap.
    pub(crate) max_backoff: Duration,
    /// The worker's shutdown (soft and hard stop, grace).
    pub(crate) shutdown: Shutdown,
    /// What `/metrics` and `/healthz` show.
    pub(crate) status: Arc<WorkerStatus>,
}

/// Runs `lease` to the end and reports the result. Returns the trainer for the next job (`None`
/// if it panicked: the daemon then builds a fresh one), and whether the attempt ended — false
/// when a shutdown stopped it before it finished, so its work is still to do.
// The span's fields name the attempt for log shipping (crate::logship reads them).
#[tracing::instrument(skip_all, fields(job_id = %lease.job_id, attempt = lease.attempt, worker_id = %ctx.worker_id))]
pub(crate) async fn run_job(
    ctx: &JobContext,
    lease: pb::Lease,
    trainer: Box<dyn Trainer>,
) -> (Option<Box<dyn Trainer>>, bool) {
    let job_id = lease.job_id.clone();
    let attempt = lease.attempt;
    let spec: JobSpec = match serde_json::from_str(&lease.spec_json) {
        Ok(s) => s,
        Err(e) => {
            let error = format!("job spec does not parse: {e}");
            tracing::error!(%job_id, %error);
            fail(ctx, &lease, error, false, false).await;
            return (Some(trainer), true);
        }
    };
    tracing::info!(%job_id, attempt, init = %spec.init, lr = spec.lr, seed = spec.seed, "leased job");

    let control = Arc::new(JobControl::new(ctx.shutdown.clone()));
    ctx.status.begin(&job_id, attempt, control.clone());
    let (tx, rx) = mpsc::channel(POINT_CHANNEL);
    let target =
        ReportTarget { client: ctx.client.clone(), job_id: job_id.clone(), attempt, max_backoff: ctx.max_backoff };
    // The helper tasks log inside this job's span.
    let reporter = tokio::spawn(report::run(target, rx, control.clone()).in_current_span());
    let heartbeat_done = CancellationToken::new();
    let heartbeat = tokio::spawn(
        heartbeat_loop(ctx.clone(), job_id.clone(), attempt, control.clone(), heartbeat_done.clone()).in_current_span(),
    );

    let (upload_tx, upload_rx) = mpsc::channel(artifacts::UPLOAD_CHANNEL);
    let artifact_target = AttemptArtifacts {
        client: ctx.artifacts.clone(),
        worker_id: ctx.worker_id.clone(),
        job_id: job_id.clone(),
        attempt,
        max_backoff: ctx.max_backoff,
    };
    let uploader = tokio::spawn(artifacts::run_uploader(artifact_target.clone(), upload_rx, control.clone()));
    let mut progress = ChannelProgress {
        tx,
        control: control.clone(),
        status: ctx.status.clone(),
        artifacts: TrainerArtifacts {
            target: artifact_target,
            uploads: upload_tx,
            runtime: tokio::runtime::Handle::current(),
            control: control.clone(),
            pending: None,
        },
    };
    let span = tracing::Span::current();
    let training = tokio::task::spawn_blocking(move || {
        let _in_job = span.enter();
        let mut trainer = trainer;
        let result = trainer.train(&spec, &mut progress);
        // `progress` (and so the channel's sender) drops here, which ends the reporter's drain.
        (trainer, result)
    });
    let (trainer, result) = match training.await {
        Ok((t, r)) => (Some(t), r),
        Err(e) => (None, Err(TrainError::Invalid(format!("trainer panicked: {e}")))),
    };
    let reported = reporter.await.unwrap_or(ReportEnd::GaveUp);
    let finished = !ctx.shutdown.requested() || (result.is_ok() && reported == ReportEnd::Flushed);
    // The final adapter is stored before the job completes. Uploads wait for the points before
    // them, so if those were not all delivered the uploader would wait forever: stop it. A
    // shutting-down worker waits for it at most the shutdown grace.
    if reported != ReportEnd::Flushed {
        uploader.abort();
    }
    if ctx.shutdown.requested() {
        // The SIGTERM checkpoint is uploaded unless the hard stop comes first.
        tokio::select! {
            _ = uploader => {}
            () = ctx.shutdown.hard.cancelled() => tracing::warn!(%job_id, "hard stop: abandoning artifact uploads"),
        }
    } else {
        let _ = uploader.await;
    }

    if reported == ReportEnd::Flushed && control.reason().is_none() {
        // Short jobs can end before the timer's first heartbeat carried the step count; one
        // more makes the job's step/total on the coordinator final before it completes.
        send_heartbeat(ctx, &job_id, attempt, &control).await;
    }
    match control.reason() {
        Some(StopReason::GaveUp(why)) => {
            // The coordinator kept answering errors; say so, if it listens, and move on. If it
            // does not, the heartbeat stops below and the lease expires.
            tracing::warn!(%job_id, attempt, reason = %why, "giving the attempt up");
            fail(ctx, &lease, format!("worker gave the attempt up: {why}"), true, false).await;
        }
        Some(reason) => tracing::warn!(%job_id, attempt, ?reason, "dropped job"),
        None => finish(ctx, &lease, result, reported).await,
    }
    heartbeat_done.cancel();
    let _ = heartbeat.await;
    if control.reason() == Some(StopReason::LeaseLost) {
        ctx.status.lease_lost();
    }
    ctx.status.end();
    (trainer, finished)
}

/// Sends the attempt's end: release on shutdown, completion, or failure.
async fn finish(ctx: &JobContext, lease: &pb::Lease, result: Result<TrainOutcome, TrainError>, reported: ReportEnd) {
    let job_id = &lease.job_id;
    match result {
        Err(TrainError::Cancelled) if ctx.shutdown.requested() => {
            tracing::info!(%job_id, "shutting down: giving the job back");
            fail(ctx, lease, "worker shut down".into(), true, true).await;
        }
        _ if reported != ReportEnd::Flushed => {
            // Completing with points missing would store a gapped curve; the lease will expire
            // and another attempt reruns the job.
            tracing::warn!(%job_id, ?reported, "points undelivered; leaving the job to lease expiry");
        }
        Ok(outcome) => {
            let state = if outcome.diverged { pb::JobState::Diverged } else { pb::JobState::Succeeded };
            let req = pb::CompleteJobRequest {
                worker_id: ctx.worker_id.clone(),
                job_id: job_id.clone(),
                attempt: lease.attempt,
                state: state as i32,
                final_eval_loss: outcome.final_eval_loss,
                tokens: outcome.tokens,
                seconds: outcome.seconds,
                diverged_step: outcome.diverged_at.map(|(step, _)| step),
                diverged_loss: outcome.diverged_at.map(|(_, loss)| loss),
            };
            let sent = rpc::retry("CompleteJob", finish_patience(ctx), || {
                let mut client = ctx.client.clone();
                let req = req.clone();
                async move { client.complete_job(req).await }
            })
            .await;
            match sent {
                Ok(_) => {
                    tracing::info!(%job_id, ?state, final_eval_loss = ?outcome.final_eval_loss,
                    seconds = outcome.seconds, "job finished")
                }
                Err(status) if rpc::is_lease_lost(&status) => {
                    tracing::warn!(%job_id, error = %status.message(), "completion refused: lease lost")
                }
                Err(status) => {
                    // Not lost, not accepted: a coordinator answering errors, or unreachable for
                    // FINISH_PATIENCE. Give the attempt back (retryable) so it is run again
                    // rather than left `running` under a lease nobody renews.
                    tracing::warn!(%job_id, code = ?status.code(), error = %status.message(),
                        "completion not accepted; giving the attempt back");
                    let why = format!(
                        "the coordinator did not accept the completion ({:?}: {})",
                        status.code(),
                        status.message()
                    );
                    fail(ctx, lease, why, true, false).await;
                }
            }
        }
        Err(e) => {
            let retryable = is_retryable(&e);
            tracing::warn!(%job_id, error = %e, retryable, "job failed");
            fail(ctx, lease, e.to_string(), retryable, false).await;
        }
    }
}

/// Whether a failed run may succeed on another attempt: bad models, data and settings do not
/// fix themselves; tensor and I/O errors (out of memory, a flaky disk) may.
fn is_retryable(e: &TrainError) -> bool {
    match e {
        TrainError::Model(_) | TrainError::Data(_) | TrainError::Invalid(_) => false,
        TrainError::Candle(_) | TrainError::Io { .. } | TrainError::Cancelled => true,
    }
}

/// `FailJob`, retried while the coordinator is unreachable.
async fn fail(ctx: &JobContext, lease: &pb::Lease, error: String, retryable: bool, released: bool) {
    let req = pb::FailJobRequest {
        worker_id: ctx.worker_id.clone(),
        job_id: lease.job_id.clone(),
        attempt: lease.attempt,
        error,
        retryable,
        released,
    };
    let sent = rpc::retry("FailJob", finish_patience(ctx), || {
        let mut client = ctx.client.clone();
        let req = req.clone();
        async move { client.fail_job(req).await }
    })
    .await;
    if let Err(status) = sent {
        tracing::warn!(job_id = %lease.job_id, code = ?status.code(), error = %status.message(),
            "failure report not accepted; the lease will expire and the job be requeued");
    }
}

/// How long the attempt's last word is retried: the shutdown's release reserve while shutting
/// down, [`FINISH_PATIENCE`] otherwise.
fn finish_patience(ctx: &JobContext) -> Patience {
    let within = if ctx.shutdown.requested() { ctx.shutdown.reserve() } else { FINISH_PATIENCE };
    Patience::within(ctx.max_backoff, within)
}

/// Extends the lease every `heartbeat_every` until `done`, independently of training. Stops the
/// attempt when the coordinator says `cancel` or that the lease is gone.
async fn heartbeat_loop(
    ctx: JobContext,
    job_id: String,
    attempt: u32,
    control: Arc<JobControl>,
    done: CancellationToken,
) {
    let mut ticker = tokio::time::interval(ctx.heartbeat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            () = control.dropped() => return,
            () = control.total_known() => {}
            _ = ticker.tick() => {}
        }
        if !send_heartbeat(&ctx, &job_id, attempt, &control).await {
            return;
        }
    }
}

/// One heartbeat. Returns false once the attempt is dropped (cancelled or lease lost), which it
/// records in `control`; transient failures are logged and return true.
async fn send_heartbeat(ctx: &JobContext, job_id: &str, attempt: u32, control: &JobControl) -> bool {
    let req = pb::HeartbeatRequest {
        worker_id: ctx.worker_id.clone(),
        job_id: job_id.to_string(),
        attempt,
        step: control.step(),
        total_steps: control.total(),
    };
    let mut client = ctx.client.clone();
    match client.heartbeat(req).await {
        Ok(resp) if resp.get_ref().cancel => {
            tracing::info!(%job_id, "job cancelled by the coordinator");
            control.stop(StopReason::Cancelled);
            false
        }
        Ok(_) => {
            ctx.status.contact();
            true
        }
        Err(status) if rpc::is_lease_lost(&status) => {
            tracing::warn!(%job_id, attempt, code = ?status.code(), error = %status.message(), "heartbeat rejected: lease lost");
            control.stop(StopReason::LeaseLost);
            false
        }
        Err(status) => {
            tracing::warn!(%job_id, code = ?status.code(), error = %status.message(),
                coordinator_unreachable = true, "heartbeat failed; will keep trying");
            ctx.status.heartbeat_failed();
            true
        }
    }
}
