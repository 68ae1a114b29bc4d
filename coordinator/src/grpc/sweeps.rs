//! The `Sweeps` service: what people and tools call.

use std::time::Duration;

use lorasweep_common::{JobState, SweepSpec};
use lorasweep_proto::pb::{self, sweeps_server::Sweeps};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status};
use tracing::debug;

use super::{job_to_pb, require_id, sweep_to_pb};
use crate::{error::Result, limits::MAX_SOURCE_LEN, store::Store};

/// Sweep files larger than this are not hand-written; refusing them bounds parse time and memory.
const MAX_SWEEP_TOML: usize = 1 << 20;

/// Snapshots a watcher may have in flight; a slow client then skips intermediate states.
const WATCH_BUFFER: usize = 4;

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
    async fn snapshot(&self, sweep_id: &str) -> Result<(pb::WatchSweepResponse, bool)> {
        let summary = self.store.get_sweep(sweep_id).await?;
        let active = summary.is_active();
        let jobs = self.store.list_jobs(sweep_id, None).await?;
        let snapshot = pb::WatchSweepResponse {
            sweep: Some(sweep_to_pb(summary)),
            jobs: jobs.into_iter().map(job_to_pb).collect(),
        };
        Ok((snapshot, active))
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
        _request: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let sweeps = self.store.list_sweeps().await?;
        Ok(Response::new(pb::ListSweepsResponse { sweeps: sweeps.into_iter().map(sweep_to_pb).collect() }))
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
        let jobs = self.store.list_jobs(&sweep_id, state).await?;
        Ok(Response::new(pb::ListJobsResponse { jobs: jobs.into_iter().map(job_to_pb).collect() }))
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
            let mut last_sent: Option<pb::WatchSweepResponse> = None;
            loop {
                if last_sent.as_ref() != Some(&snapshot) {
                    if tx.send(Ok(snapshot.clone())).await.is_err() {
                        return; // the client went away
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
        let sweep_id = require_id(&request.get_ref().sweep_id, "sweep_id")?;
        let cancelled = self.store.cancel_sweep(sweep_id).await?;
        Ok(Response::new(pb::CancelSweepResponse { cancelled }))
    }

    #[tracing::instrument(skip_all, fields(sweep_id = %request.get_ref().sweep_id), err)]
    async fn retry_sweep(
        &self,
        request: Request<pb::RetrySweepRequest>,
    ) -> Result<Response<pb::RetrySweepResponse>, Status> {
        let sweep_id = require_id(&request.get_ref().sweep_id, "sweep_id")?;
        let requeued = self.store.retry_sweep(sweep_id).await?;
        Ok(Response::new(pb::RetrySweepResponse { requeued }))
    }

    async fn get_curve(&self, request: Request<pb::GetCurveRequest>) -> Result<Response<pb::GetCurveResponse>, Status> {
        let job_id = require_id(&request.get_ref().job_id, "job_id")?;
        let curve = self.store.curve(&job_id).await?;
        Ok(Response::new(pb::GetCurveResponse {
            train_steps: curve.train_steps,
            train_losses: curve.train_losses,
            eval_steps: curve.eval_steps,
            eval_losses: curve.eval_losses,
        }))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self.store.list_workers().await?;
        Ok(Response::new(pb::ListWorkersResponse {
            workers: workers
                .into_iter()
                .map(|(w, alive)| pb::WorkerInfo {
                    id: w.id,
                    name: w.name,
                    device: w.device,
                    trainer: w.trainer,
                    visible_devices: w.visible_devices,
                    cpu_threads: u32::try_from(w.cpu_threads).unwrap_or(0),
                    gpu_memory_bytes: u64::try_from(w.gpu_memory_bytes).unwrap_or(0),
                    gpu_name: w.gpu_name,
                    last_seen_ms: w.last_seen,
                    job_id: w.job_id.unwrap_or_default(),
                    alive,
                })
                .collect(),
        }))
    }
}
