//! The `Workers` service: what worker daemons call. Every job-scoped call carries the lease's
//! `(job_id, attempt)` and is checked against the stored lease by the store, in the writer.

use std::{sync::Arc, time::Duration};

use lorasweep_common::{JobState, LossPoint};
use lorasweep_proto::pb::{self, workers_server::Workers};
use tokio::task::JoinSet;
use tonic::{Request, Response, Status, Streaming};

use super::{require_attempt, require_id};
use crate::{
    error::{Error, Result},
    limits::{MAX_ERROR_LEN, MAX_LOG_MESSAGE_LEN, MAX_LOG_RECORDS_PER_CALL},
    metrics::Metrics,
    store::{Store, jobs::Outcome, logs::NewRecord, workers::NewWorker},
};

/// Point messages of one stream that may be waiting on the writer at once. Pipelining lets a
/// stream's messages share a commit instead of each paying one fsync; the bound is backpressure.
const POINTS_IN_FLIGHT: usize = 4;

/// Most points one write carries (~10 ms of the writer's time on this class of machine).
const POINTS_PER_WRITE: usize = 8192;

/// Longest name/device/trainer label accepted at registration.
const MAX_LABEL_LEN: usize = 256;

/// Implements `Workers` over the [`Store`].
#[derive(Debug, Clone)]
pub(crate) struct WorkersService {
    pub(crate) store: Store,
    pub(crate) lease_ttl: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) metrics: Arc<Metrics>,
    /// See [`crate::Config::max_points_per_stream`].
    pub(crate) max_points_per_stream: u64,
}

fn label(value: String, field: &str, required: bool) -> Result<String> {
    if required && value.trim().is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is empty; name the worker (host:gpu, say)")));
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes; allowed: at most {MAX_LABEL_LEN}",
            value.len()
        )));
    }
    Ok(value)
}

/// Validates one message's points: known series and steps that fit SQLite's INTEGER.
fn points_of(msg: pb::ReportPointsRequest) -> Result<Vec<LossPoint>> {
    msg.points
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            if p.step > i64::MAX as u64 {
                return Err(Error::InvalidArgument(format!(
                    "points[{i}].step {} is too large; allowed: ≤ {}",
                    p.step,
                    i64::MAX
                )));
            }
            LossPoint::try_from(p).map_err(|e| Error::InvalidArgument(format!("points[{i}]: {e}")))
        })
        .collect()
}

#[tonic::async_trait]
impl Workers for WorkersService {
    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name), err)]
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let req = request.into_inner();
        let name = label(req.name, "name", true)?;
        let device = label(req.device, "device", false)?;
        let trainer = label(req.trainer, "trainer", false)?;
        let visible_devices = label(req.visible_devices, "visible_devices", false)?;
        let gpu_name = label(req.gpu_name, "gpu_name", false)?;
        let worker_id = self
            .store
            .register_worker(NewWorker {
                name,
                device,
                trainer,
                visible_devices,
                cpu_threads: req.cpu_threads,
                gpu_memory_bytes: req.gpu_memory_bytes,
                gpu_name,
            })
            .await?;
        tracing::info!(worker_id, "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id,
            lease_ttl_ms: self.lease_ttl.as_millis() as u64,
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
        }))
    }

    #[tracing::instrument(skip_all, fields(worker_id = %request.get_ref().worker_id, job_id), err)]
    async fn lease_job(&self, request: Request<pb::LeaseJobRequest>) -> Result<Response<pb::LeaseJobResponse>, Status> {
        let started = std::time::Instant::now();
        let worker_id = require_id(&request.get_ref().worker_id, "worker_id")?;
        let lease = self.store.lease(worker_id.clone()).await?;
        self.metrics.lease_call(lease.is_some(), started.elapsed());
        if let Some(l) = &lease {
            tracing::Span::current().record("job_id", tracing::field::display(&l.id));
            tracing::info!(attempt = l.attempt, "job leased");
        }
        Ok(Response::new(pb::LeaseJobResponse {
            lease: lease.map(|l| pb::Lease {
                job_id: l.id,
                attempt: l.attempt as u32,
                spec_json: l.spec_json,
                expires_at_ms: l.lease_expires_at,
                sweep_id: l.sweep_id,
            }),
        }))
    }

    #[tracing::instrument(skip_all, fields(worker_id = %request.get_ref().worker_id, job_id = %request.get_ref().job_id, attempt = request.get_ref().attempt), err)]
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let worker_id = require_id(&req.worker_id, "worker_id")?;
        let job_id = require_id(&req.job_id, "job_id")?;
        let attempt = require_attempt(req.attempt)?;
        if req.step > i64::MAX as u64 || req.total_steps > i64::MAX as u64 {
            return Err(Error::InvalidArgument("step/total_steps too large; allowed: ≤ i64::MAX".into()).into());
        }
        let beat = self.store.heartbeat(worker_id, job_id, attempt, req.step, req.total_steps).await?;
        Ok(Response::new(pb::HeartbeatResponse { expires_at_ms: beat.expires_at, cancel: beat.cancel }))
    }

    #[tracing::instrument(skip_all, fields(job_id, attempt), err)]
    async fn report_points(
        &self,
        request: Request<Streaming<pb::ReportPointsRequest>>,
    ) -> Result<Response<pb::ReportPointsResponse>, Status> {
        let mut stream = request.into_inner();
        let mut lease: Option<(String, u32)> = None;
        let mut in_flight: JoinSet<Result<()>> = JoinSet::new();
        let mut committed = 0u64;
        while let Some(msg) = stream.message().await? {
            let (job_id, attempt) = match &lease {
                None => {
                    let job_id = require_id(&msg.job_id, "job_id")?;
                    let attempt = require_attempt(msg.attempt)?;
                    tracing::Span::current()
                        .record("job_id", tracing::field::display(&job_id))
                        .record("attempt", attempt);
                    lease = Some((job_id.clone(), attempt));
                    (job_id, attempt)
                }
                Some((job_id, attempt)) if *job_id == msg.job_id && *attempt == msg.attempt => {
                    (job_id.clone(), *attempt)
                }
                Some((job_id, attempt)) => {
                    return Err(Status::invalid_argument(format!(
                        "all messages of one ReportPoints stream must name the same job and attempt: \
                         started with job {job_id:?} attempt {attempt}, then got job {:?} attempt {}",
                        msg.job_id, msg.attempt
                    )));
                }
            };
            // Checked before this message is written: a stream over the limit stores nothing of
            // the message that crosses it (earlier messages were valid and are already durable).
            let limit = self.max_points_per_stream;
            if committed + msg.points.len() as u64 > limit {
                // Let the earlier, valid messages finish, so what is stored is exactly them
                // (dropping the set would abort writes that may or may not have reached the writer).
                while !in_flight.is_empty() {
                    join_one(&mut in_flight).await?;
                }
                return Err(Status::resource_exhausted(format!(
                    "this ReportPoints stream would carry {} points; allowed: at most {limit} points per stream \
                     (MAX_POINTS_PER_STREAM); open a new stream",
                    committed + msg.points.len() as u64
                )));
            }
            let mut points = points_of(msg)?;
            committed += points.len() as u64;
            // A huge message is split so one write never holds the writer (and everyone's
            // leases and heartbeats) for long; points are idempotent, so partial writes are fine.
            loop {
                let rest = points.split_off(points.len().min(POINTS_PER_WRITE));
                while in_flight.len() >= POINTS_IN_FLIGHT {
                    join_one(&mut in_flight).await?;
                }
                let (store, job_id) = (self.store.clone(), job_id.clone());
                in_flight.spawn(async move { store.report_points(job_id, attempt, points).await });
                if rest.is_empty() {
                    break;
                }
                points = rest;
            }
        }
        // Answer only once everything received is committed: an acknowledged point is durable.
        while !in_flight.is_empty() {
            join_one(&mut in_flight).await?;
        }
        self.metrics.points_ingested(committed);
        tracing::debug!(committed, "points committed");
        Ok(Response::new(pb::ReportPointsResponse { committed }))
    }

    #[tracing::instrument(skip_all, fields(worker_id = %request.get_ref().worker_id, job_id = %request.get_ref().job_id, attempt = request.get_ref().attempt), err)]
    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let req = request.into_inner();
        let worker_id = require_id(&req.worker_id, "worker_id")?;
        let job_id = require_id(&req.job_id, "job_id")?;
        let attempt = require_attempt(req.attempt)?;
        let state = match JobState::from_wire(req.state, "state").map_err(Error::from)? {
            Some(s @ (JobState::Succeeded | JobState::Diverged)) => s,
            other => {
                let got = other.map_or("unspecified", JobState::name);
                return Err(Status::invalid_argument(format!(
                    "state {got} cannot complete a job; allowed: JOB_STATE_SUCCEEDED, JOB_STATE_DIVERGED (use FailJob for errors)"
                )));
            }
        };
        if !(req.seconds.is_finite() && req.seconds >= 0.0) {
            return Err(Status::invalid_argument(format!(
                "seconds {} is invalid; allowed: finite and ≥ 0",
                req.seconds
            )));
        }
        if req.tokens > i64::MAX as u64 {
            return Err(Status::invalid_argument("tokens too large; allowed: ≤ i64::MAX"));
        }
        let diverged_at = match (state, req.diverged_step) {
            (JobState::Diverged, Some(step)) if step <= i64::MAX as u64 => Some((step, req.diverged_loss)),
            (JobState::Diverged, Some(_)) => {
                return Err(Status::invalid_argument("diverged_step too large; allowed: ≤ i64::MAX"));
            }
            (JobState::Diverged, None) => None,
            (_, Some(_)) => {
                return Err(Status::invalid_argument("diverged_step is only valid with state JOB_STATE_DIVERGED"));
            }
            (_, None) => None,
        };
        let outcome = Outcome {
            state,
            final_eval_loss: req.final_eval_loss,
            tokens: req.tokens,
            seconds: req.seconds,
            diverged_at,
        };
        self.store.complete(worker_id, job_id, attempt, outcome).await?;
        Ok(Response::new(pb::CompleteJobResponse {}))
    }

    #[tracing::instrument(skip_all, fields(worker_id = %request.get_ref().worker_id, job_id = %request.get_ref().job_id, attempt = request.get_ref().attempt), err)]
    async fn fail_job(&self, request: Request<pb::FailJobRequest>) -> Result<Response<pb::FailJobResponse>, Status> {
        let req = request.into_inner();
        let worker_id = require_id(&req.worker_id, "worker_id")?;
        let job_id = require_id(&req.job_id, "job_id")?;
        let attempt = require_attempt(req.attempt)?;
        if req.error.len() > MAX_ERROR_LEN {
            return Err(Status::invalid_argument(format!(
                "error is {} bytes; allowed: at most {MAX_ERROR_LEN} (MAX_ERROR_LEN); send the message's end, \
                 which holds the cause",
                req.error.len()
            )));
        }
        let error = if req.error.trim().is_empty() && !req.released {
            "(the worker gave no reason)".to_string()
        } else {
            req.error
        };
        let state = self.store.fail(worker_id, job_id, attempt, error, req.retryable, req.released).await?;
        Ok(Response::new(pb::FailJobResponse { state: state.to_wire() }))
    }

    async fn ship_logs(&self, request: Request<pb::ShipLogsRequest>) -> Result<Response<pb::ShipLogsResponse>, Status> {
        let req = request.into_inner();
        let worker_id = require_id(&req.worker_id, "worker_id")?;
        let job_id = require_id(&req.job_id, "job_id")?;
        let attempt = require_attempt(req.attempt)?;
        if req.records.len() > MAX_LOG_RECORDS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} records in one ShipLogs; allowed: at most {MAX_LOG_RECORDS_PER_CALL}",
                req.records.len()
            )));
        }
        let records = req
            .records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                if !matches!(r.level.as_str(), "ERROR" | "WARN" | "INFO") {
                    return Err(Error::InvalidArgument(format!(
                        "record {i}: level {:?} is not shipped; allowed: ERROR, WARN, INFO",
                        r.level
                    )));
                }
                if r.message.len() > MAX_LOG_MESSAGE_LEN || r.target.len() > MAX_LABEL_LEN {
                    return Err(Error::InvalidArgument(format!(
                        "record {i}: message of {} bytes or target of {} bytes; allowed: at most {MAX_LOG_MESSAGE_LEN} \
                         and {MAX_LABEL_LEN}",
                        r.message.len(),
                        r.target.len()
                    )));
                }
                Ok(NewRecord { at: r.at_ms, level: r.level, target: r.target, message: r.message })
            })
            .collect::<Result<Vec<_>>>()?;
        let shipped = self.store.ship_logs(worker_id, job_id, attempt, records, req.dropped).await?;
        Ok(Response::new(pb::ShipLogsResponse { stored: shipped.stored, capped: shipped.capped }))
    }
}

/// Waits for one in-flight point write and surfaces its error.
async fn join_one(set: &mut JoinSet<Result<()>>) -> Result<(), Status> {
    match set.join_next().await {
        Some(Ok(result)) => result.map_err(Status::from),
        Some(Err(join)) => Err(Status::internal(format!("point writer task failed: {join}"))),
        None => Ok(()),
    }
}
