//! The `Sweeps` service: what people and tools call. Answers that grow with the data are paged
//! or streamed ([`super::paging`]); the observability calls (jobs whole, events, logs) are
//! built in [`super::observe`].

use std::time::Duration;

use lorasweep_common::{JobState, Series, SweepSpec};
use lorasweep_proto::pb::{self, sweeps_server::Sweeps};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status};
use tracing::debug;

use super::{job_to_pb, observe, paging, require_id, sweep_to_pb};
use crate::{error::Result, limits::MAX_SOURCE_LEN, store::Store};

/// Sweep files larger than this are not hand-written; refusing them bounds parse time and memory.
const MAX_SWEEP_TOML: usize = 1 << 20;

/// Snapshots a watcher may have in flight; a slow client then skips intermediate states.
const WATCH_BUFFER: usize = 4;

/// ListJobs pages: default and largest sizes.
const JOBS_PAGE: (u32, u32) = (1000, 5000);

/// ListSweeps pages: default and largest sizes (a sweep may carry a 1 MiB file).
const SWEEPS_PAGE: (u32, u32) = (100, 1000);

/// ListWorkers pages: default and largest sizes.
const WORKERS_PAGE: (u32, u32) = (1000, 5000);

/// Points per GetCurve message: 65,536 × (≤ 10-byte step + 8-byte loss) ≈ 1.2 MB at most.
const CURVE_PIECE: u32 = 65_536;

/// Curve pieces in flight to a slow reader.
const CURVE_BUFFER: usize = 2;

/// The `who` of cancel/retry/resume events: the caller's address (tokens are roles, not names).
fn caller<T>(request: &Request<T>) -> String {
    request.remote_addr().map_or_else(|| "a client".to_string(), |a| format!("a client at {a}"))
}

/// Implements `Sweeps` over the [`Store`].
#[derive(Debug, Clone)]
pub(crate) struct SweepsService {
    pub(crate) store: Store,
    /// Ends WatchSweep streams on shutdown, so graceful shutdown does not wait on them.
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) watch_interval: Duration,
}

impl SweepsService {
    /// The sweep and all its jobs, as messages of at most a page's bytes each (every message but
    /// the last has `more`), and whether the sweep is still active.
    async fn snapshot(&self, sweep_id: &str) -> Result<(Vec<pb::WatchSweepResponse>, bool)> {
        let summary = self.store.get_sweep(sweep_id).await?;
        let active = summary.is_active();
        let mut jobs = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.list_jobs(sweep_id, None, after, JOBS_PAGE.1).await?;
            let full = page.len() == JOBS_PAGE.1 as usize;
            after = page.last().map(|j| j.ord);
            jobs.extend(page.into_iter().map(job_to_pb));
            if !full {
                break;
            }
        }
        let sweep = sweep_to_pb(summary);
        let mut messages = Vec::new();
        loop {
            let rest = paging::fit(&mut jobs);
            let more = !rest.is_empty();
            messages.push(pb::WatchSweepResponse { sweep: Some(sweep.clone()), jobs, more });
            if !more {
                break;
            }
            jobs = rest;
        }
        Ok((messages, active))
    }

    /// Streams a job's curves: each series in pieces of at most [`CURVE_PIECE`] points.
    async fn send_curve(&self, pk: i64, job_id: String, tx: mpsc::Sender<Result<pb::GetCurveResponse, Status>>) {
        let mut sent_any = false;
        for series in [Series::Train, Series::Eval] {
            let mut after = None;
            loop {
                let piece = match self.store.curve_piece(pk, &job_id, series, after, CURVE_PIECE).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let n = piece.steps.len();
                if n == 0 {
                    break;
                }
                after = piece.steps.last().copied();
                let msg = match series {
                    Series::Train => pb::GetCurveResponse {
                        train_steps: piece.steps,
                        train_losses: piece.losses,
                        ..Default::default()
                    },
                    Series::Eval => pb::GetCurveResponse {
                        eval_steps: piece.steps,
                        eval_losses: piece.losses,
                        ..Default::default()
                    },
                };
                tokio::select! {
                    sent = tx.send(Ok(msg)) => if sent.is_err() { return },
                    () = self.shutdown.cancelled() => return,
                }
                sent_any = true;
                if n < CURVE_PIECE as usize {
                    break;
                }
            }
        }
        if !sent_any {
            // An empty curve is one empty message, so a reader always sees an answer.
            let _ = tx.send(Ok(pb::GetCurveResponse::default())).await;
        }
    }
}

#[tonic::async_trait]
impl Sweeps for SweepsService {
    #[tracing::instrument(skip_all, fields(source = %request.get_ref().source), err)]
    async fn submit_sweep(
        &self,
        request: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::SubmitSweepResponse>, Status> {
        let req = request.into_inner();
        if req.source.len() > MAX_SOURCE_LEN {
            return Err(Status::invalid_argument(format!(
                "source is {} bytes; allowed: at most {MAX_SOURCE_LEN} (MAX_SOURCE_LEN)",
                req.source.len()
            )));
        }
        let source = if req.source.is_empty() { "<request>".to_string() } else { req.source };
        if req.sweep_toml.len() > MAX_SWEEP_TOML {
            return Err(Status::invalid_argument(format!(
                "{source}: sweep file is {} bytes; allowed: at most {MAX_SWEEP_TOML}",
                req.sweep_toml.len()
            )));
        }
        let spec = SweepSpec::parse(&req.sweep_toml, &source).map_err(crate::Error::from)?;
        let (sweep_id, jobs) = self.store.submit_sweep(spec, req.sweep_toml, source).await?;
        tracing::info!(sweep_id, jobs, "sweep submitted");
        Ok(Response::new(pb::SubmitSweepResponse { sweep_id, jobs }))
    }

    async fn list_sweeps(
        &self,
        request: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let req = request.into_inner();
        let size = paging::page_size(req.page_size, SWEEPS_PAGE.0, SWEEPS_PAGE.1);
        let before = paging::position(&req.page_token, "s")?;
        let mut rows = self.store.list_sweeps(before, size + 1).await?;
        let mut more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let keys: Vec<i64> = rows.iter().map(|r| r.sweep.rowid).collect();
        let mut sweeps: Vec<pb::Sweep> = rows.into_iter().map(sweep_to_pb).collect();
        more |= !paging::fit(&mut sweeps).is_empty();
        let next_page_token = if more { paging::token("s", keys[sweeps.len() - 1]) } else { String::new() };
        Ok(Response::new(pb::ListSweepsResponse { sweeps, next_page_token }))
    }

    async fn get_sweep(&self, request: Request<pb::GetSweepRequest>) -> Result<Response<pb::GetSweepResponse>, Status> {
        let sweep_id = require_id(&request.get_ref().sweep_id, "sweep_id")?;
        let summary = self.store.get_sweep(&sweep_id).await?;
        Ok(Response::new(pb::GetSweepResponse { sweep: Some(sweep_to_pb(summary)) }))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        let sweep_id = require_id(&req.sweep_id, "sweep_id")?;
        let state = JobState::from_wire(req.state, "state").map_err(crate::Error::from)?;
        let size = paging::page_size(req.page_size, JOBS_PAGE.0, JOBS_PAGE.1);
        let after = paging::position(&req.page_token, "j")?;
        let mut rows = self.store.list_jobs(&sweep_id, state, after, size + 1).await?;
        let mut more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let keys: Vec<i64> = rows.iter().map(|r| r.ord).collect();
        let mut jobs: Vec<pb::Job> = rows.into_iter().map(job_to_pb).collect();
        more |= !paging::fit(&mut jobs).is_empty();
        let next_page_token = if more { paging::token("j", keys[jobs.len() - 1]) } else { String::new() };
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let job_id = require_id(&request.get_ref().job_id, "job_id")?;
        Ok(Response::new(observe::job_detail(self.store.get_job(&job_id).await?)))
    }

    type WatchSweepStream = ReceiverStream<Result<pb::WatchSweepResponse, Status>>;

    async fn watch_sweep(
        &self,
        request: Request<pb::WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        let sweep_id = require_id(&request.get_ref().sweep_id, "sweep_id")?;
        let mut changes = self.store.changes();
        changes.borrow_and_update();
        // The first snapshot is taken here so an unknown sweep is a NOT_FOUND status, not a stream.
        let first = self.snapshot(&sweep_id).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let service = self.clone();
        self.tracker.spawn(async move {
            let (mut snapshot, mut active) = first;
            let mut last_sent: Option<Vec<pb::WatchSweepResponse>> = None;
            loop {
                if last_sent.as_ref() != Some(&snapshot) {
                    for message in &snapshot {
                        if tx.send(Ok(message.clone())).await.is_err() {
                            return; // the client went away
                        }
                    }
                    last_sent = Some(snapshot);
                }
                if !active {
                    debug!(sweep_id, "sweep finished; watch stream ends");
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = service.shutdown.cancelled() => return,
                }
                // Coalesce bursts of writes into one snapshot per interval.
                tokio::select! {
                    () = tokio::time::sleep(service.watch_interval) => {}
                    () = service.shutdown.cancelled() => return,
                }
                changes.borrow_and_update();
                match service.snapshot(&sweep_id).await {
                    Ok((next, next_active)) => (snapshot, active) = (next, next_active),
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all, fields(sweep_id = %request.get_ref().sweep_id), err)]
    async fn cancel_sweep(
        &self,
        request: Request<pb::CancelSweepRequest>,
    ) -> Result<Response<pb::CancelSweepResponse>, Status> {
        let who = caller(&request);
        let sweep_id = require_id(&request.get_ref().sweep_id, "sweep_id")?;
        let cancelled = self.store.cancel_sweep(sweep_id, who).await?;
        Ok(Response::new(pb::CancelSweepResponse { cancelled }))
    }

    #[tracing::instrument(skip_all, fields(sweep_id = %request.get_ref().sweep_id), err)]
    async fn retry_sweep(
        &self,
        request: Request<pb::RetrySweepRequest>,
    ) -> Result<Response<pb::RetrySweepResponse>, Status> {
        let who = caller(&request);
        let sweep_id = require_id(&request.get_ref().sweep_id, "sweep_id")?;
        let requeued = self.store.retry_sweep(sweep_id, who).await?;
        Ok(Response::new(pb::RetrySweepResponse { requeued }))
    }

    #[tracing::instrument(skip_all, fields(sweep_id = %request.get_ref().sweep_id), err)]
    async fn resume_sweep(
        &self,
        request: Request<pb::ResumeSweepRequest>,
    ) -> Result<Response<pb::ResumeSweepResponse>, Status> {
        let who = caller(&request);
        let sweep_id = require_id(&request.get_ref().sweep_id, "sweep_id")?;
        let requeued = self.store.resume_sweep(sweep_id, who).await?;
        Ok(Response::new(pb::ResumeSweepResponse { requeued }))
    }

    type GetCurveStream = ReceiverStream<Result<pb::GetCurveResponse, Status>>;

    async fn get_curve(&self, request: Request<pb::GetCurveRequest>) -> Result<Response<Self::GetCurveStream>, Status> {
        let job_id = require_id(&request.get_ref().job_id, "job_id")?;
        // Resolved here so that an unknown job is a NOT_FOUND status, not a stream.
        let pk = self.store.job_pk(&job_id).await?;
        let (tx, rx) = mpsc::channel(CURVE_BUFFER);
        let service = self.clone();
        self.tracker.spawn(async move { service.send_curve(pk, job_id, tx).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let req = request.into_inner();
        let size = paging::page_size(req.page_size, WORKERS_PAGE.0, WORKERS_PAGE.1) as usize;
        let from = paging::position(&req.page_token, "w")?.unwrap_or(0) as usize;
        let all = self.store.list_workers().await?;
        let total = all.len();
        let mut workers: Vec<pb::WorkerInfo> =
            all.into_iter().skip(from).take(size).map(|(w, alive)| observe::worker_to_pb(w, alive)).collect();
        paging::fit(&mut workers);
        let next = from + workers.len();
        let next_page_token = if next < total { paging::token("w", next as i64) } else { String::new() };
        Ok(Response::new(pb::ListWorkersResponse { workers, next_page_token }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let req = request.into_inner();
        let id = require_id(&req.id, "id")?;
        let scope = self.store.scope_of(&id).await?;
        let (size, after) = observe::events_page_args(&req)?;
        Ok(Response::new(observe::events_page(&self.store, &scope, after, size).await?.0))
    }

    type FollowEventsStream = ReceiverStream<Result<pb::ListEventsResponse, Status>>;

    async fn follow_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<Self::FollowEventsStream>, Status> {
        let req = request.into_inner();
        let id = require_id(&req.id, "id")?;
        let scope = self.store.scope_of(&id).await?;
        let (size, after) = observe::events_page_args(&req)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let pages = observe::EventPages { scope, size };
        self.tracker.spawn(observe::follow(self.store.clone(), self.shutdown.clone(), tx, pages, after));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_logs(&self, request: Request<pb::ListLogsRequest>) -> Result<Response<pb::ListLogsResponse>, Status> {
        let req = request.into_inner();
        let job_id = require_id(&req.job_id, "job_id")?;
        let (attempt, size, after) = observe::logs_page_args(&req)?;
        Ok(Response::new(observe::logs_page(&self.store, &job_id, attempt, after, size).await?.0))
    }

    type FollowLogsStream = ReceiverStream<Result<pb::ListLogsResponse, Status>>;

    async fn follow_logs(
        &self,
        request: Request<pb::ListLogsRequest>,
    ) -> Result<Response<Self::FollowLogsStream>, Status> {
        let req = request.into_inner();
        let job_id = require_id(&req.job_id, "job_id")?;
        let (attempt, size, after) = observe::logs_page_args(&req)?;
        // Resolved here so that an unknown job is a NOT_FOUND status, not a stream.
        self.store.job_pk(&job_id).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let pages = observe::LogPages { job_id, attempt, size };
        self.tracker.spawn(observe::follow(self.store.clone(), self.shutdown.clone(), tx, pages, after));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
