//! Ships one attempt's loss points to the coordinator.
//!
//! The trainer thread feeds a bounded channel; [`run`] drains it into a pending buffer and
//! flushes the buffer every [`FLUSH_INTERVAL`] (or when it is large) with one client-streaming
//! `ReportPoints` call. A flush that fails for a transient reason keeps its points and they go
//! again with the next flush: the coordinator ignores duplicates by (job, series, step), so
//! resending is always safe, and a point is only forgotten once a response acknowledged it.
//! One short stream per flush (rather than one stream per job) is what makes the
//! acknowledgement, and so the durability, arrive every flush instead of at the end of the job.

use std::{sync::Arc, time::Duration};

use lorasweep_common::LossPoint;
use lorasweep_proto::pb;
use tokio::{sync::mpsc, time::Instant};

use crate::{
    connect::Authed,
    control::{FINISH_PATIENCE, JobControl, StopReason},
    rpc::{self, Backoff, Class},
};

/// How often pending points are flushed: often enough for live curves in `lorasweep watch`,
/// rare enough that a 100k-step run makes a few calls per second at most.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// Points per `ReportPointsRequest` message, well under gRPC's 4 MiB default message limit.
const POINTS_PER_MESSAGE: usize = 1024;

/// Flush early once this many points are pending.
const FLUSH_AT: usize = 4096;

/// Stop draining the channel (so the trainer blocks) while this many points are unacknowledged,
/// which bounds the worker's memory when the coordinator is away for a long time.
const MAX_PENDING: usize = 1 << 20;

/// How the reporter ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportEnd {
    /// Every point was acknowledged.
    Flushed,
    /// The job was dropped (lease lost or cancelled); unsent points were discarded.
    Dropped,
    /// The deadline passed with points still unacknowledged (a shutdown, or a coordinator
    /// unreachable for [`FINISH_PATIENCE`] after training ended).
    GaveUp,
}

/// Who the reporter reports for.
#[derive(Debug, Clone)]
pub(crate) struct ReportTarget {
    /// The coordinator.
    pub(crate) client: pb::workers_client::WorkersClient<Authed>,
    /// The job.
    pub(crate) job_id: String,
    /// The attempt (fencing token).
    pub(crate) attempt: u32,
    /// Retry backoff cap.
    pub(crate) max_backoff: Duration,
}

/// Drains `points` until the trainer closes it, then flushes until every point is acknowledged,
/// the job is dropped, or `control`'s final-flush deadline passes.
pub(crate) async fn run(
    target: ReportTarget,
    mut points: mpsc::Receiver<LossPoint>,
    control: Arc<JobControl>,
) -> ReportEnd {
    let mut pending: Vec<pb::Point> = Vec::new();
    let mut flusher = Flusher { backoff: Backoff::new(target.max_backoff), server_errors: 0 };
    let mut next_try = Instant::now();
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = control.dropped() => return ReportEnd::Dropped,
            point = points.recv(), if pending.len() < MAX_PENDING => match point {
                Some(p) => {
                    pending.push(pb::Point::from(p));
                    if pending.len() >= FLUSH_AT && Instant::now() >= next_try {
                        flusher.flush(&target, &mut pending, &mut next_try, &control).await;
                    }
                }
                None => break,
            },
            _ = ticker.tick() => {
                if !pending.is_empty() && Instant::now() >= next_try {
                    flusher.flush(&target, &mut pending, &mut next_try, &control).await;
                }
            }
        }
    }
    // The trainer is done: everything left must reach the coordinator before the job can end.
    let patience_end = Instant::now() + FINISH_PATIENCE;
    loop {
        if control.is_dropped() {
            return ReportEnd::Dropped;
        }
        if pending.is_empty() {
            return ReportEnd::Flushed;
        }
        let deadline = control.final_deadline().map_or(patience_end, |d| d.min(patience_end));
        if Instant::now() >= deadline {
            tracing::warn!(job_id = %target.job_id, unsent = pending.len(), "giving up on unsent points");
            return ReportEnd::GaveUp;
        }
        tokio::select! {
            () = control.dropped() => return ReportEnd::Dropped,
            () = tokio::time::sleep_until(next_try) => {}
        }
        flusher.flush(&target, &mut pending, &mut next_try, &control).await;
    }
}

/// The retry state of one reporter.
struct Flusher {
    backoff: Backoff,
    /// Server errors (`Internal`, ...) in a row: after [`rpc::SERVER_ERROR_TRIES`] the attempt
    /// is given up rather than the same batch resent for as long as the heartbeat holds the lease.
    server_errors: u32,
}

impl Flusher {
    /// One `ReportPoints` call carrying every pending point. Success empties `pending`; a lost
    /// lease drops the job; an unreachable coordinator keeps the points and schedules the next
    /// try; a coordinator that keeps answering server errors makes the worker give the attempt up.
    async fn flush(
        &mut self,
        target: &ReportTarget,
        pending: &mut Vec<pb::Point>,
        next_try: &mut Instant,
        control: &JobControl,
    ) {
        let messages: Vec<pb::ReportPointsRequest> = pending
            .chunks(POINTS_PER_MESSAGE)
            .map(|chunk| pb::ReportPointsRequest {
                job_id: target.job_id.clone(),
                attempt: target.attempt,
                points: chunk.to_vec(),
            })
            .collect();
        let mut client = target.client.clone();
        let status = match client.report_points(tokio_stream::iter(messages)).await {
            Ok(resp) => {
                tracing::debug!(job_id = %target.job_id, committed = resp.get_ref().committed, "points acknowledged");
                control.points.record_done(pending.len() as u64);
                pending.clear();
                self.backoff.reset();
                self.server_errors = 0;
                return;
            }
            Err(status) => status,
        };
        match rpc::classify(&status) {
            Class::LeaseLost => {
                tracing::warn!(job_id = %target.job_id, attempt = target.attempt, code = ?status.code(), error = %status.message(),
                    "coordinator rejected points: lease lost; dropping the job");
                control.stop(StopReason::LeaseLost);
            }
            Class::ServerError if self.server_errors + 1 >= rpc::SERVER_ERROR_TRIES => {
                let why = format!(
                    "the coordinator answered {} ReportPoints calls in a row with an error ({:?}: {})",
                    self.server_errors + 1,
                    status.code(),
                    status.message()
                );
                tracing::error!(job_id = %target.job_id, unsent = pending.len(), "{why}");
                control.stop(StopReason::GaveUp(why));
            }
            class @ (Class::Unreachable | Class::ServerError) => {
                if class == Class::ServerError {
                    self.server_errors += 1;
                }
                let wait = self.backoff.next_wait();
                tracing::warn!(job_id = %target.job_id, unsent = pending.len(), retry_in_ms = wait.as_millis() as u64,
                    code = ?status.code(), error = %status.message(), "reporting points failed; keeping them for the next try");
                *next_try = Instant::now() + wait;
            }
            Class::Refused => {
                // The coordinator refuses these points outright (a bug on one side); resending
                // the same batch forever would stall the job, so they are logged and discarded.
                tracing::error!(job_id = %target.job_id, discarded = pending.len(), code = ?status.code(),
                    error = %status.message(), "coordinator refused points");
                control.points.record_done(pending.len() as u64);
                pending.clear();
            }
        }
    }
}
