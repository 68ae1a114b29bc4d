//! The gRPC boundary: request validation, domain ↔ wire conversion, and the single mapping of
//! [`Error`] onto [`Status`].
//!
//! # Layout
//! - [`sweeps`]: the `Sweeps` service (people and tools).
//! - [`workers`]: the `Workers` service (worker daemons).
//! - [`artifacts`]: the `Artifacts` service (checkpoints and adapters as files).
//! - [`observe`]: jobs whole, events and logs, and the follow streams (for `sweeps`).
//! - [`paging`]: page sizes, tokens and the byte budget of every answer that grows.

pub(crate) mod artifacts;
pub(crate) mod observe;
pub(crate) mod paging;
pub(crate) mod sweeps;
pub(crate) mod workers;

use lorasweep_common::JobState;
use lorasweep_proto::pb;
use tonic::Status;
use tracing::error;

use crate::{
    error::{Error, Result},
    store::{jobs::JobRow, sweeps::SweepSummary},
};

/// Ids are UUIDs (36 characters); anything far longer is garbage, refused before touching SQL.
const MAX_ID_LEN: usize = 128;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::Spec(e) => Status::invalid_argument(e.to_string()),
            Error::NotFound(m) => Status::not_found(m),
            Error::StaleLease(m) | Error::WrongState(m) => Status::failed_precondition(m),
            Error::ShuttingDown => Status::unavailable(e.to_string()),
            other => {
                error!(error.cause_chain = ?other, "internal error");
                Status::internal(format!("internal error: {other}"))
            }
        }
    }
}

/// Refuses an empty or oversized id, naming the field.
pub(crate) fn require_id(value: &str, field: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is empty; pass the id returned by the coordinator")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes long; allowed: at most {MAX_ID_LEN}",
            value.len()
        )));
    }
    Ok(value.to_string())
}

/// Refuses attempt 0, which no lease ever has.
pub(crate) fn require_attempt(attempt: u32) -> Result<u32> {
    if attempt == 0 {
        return Err(Error::InvalidArgument(
            "attempt 0 is invalid; pass the attempt of the lease returned by LeaseJob (≥ 1)".into(),
        ));
    }
    Ok(attempt)
}

/// The wire form of a stored job.
pub(crate) fn job_to_pb(row: JobRow) -> pb::Job {
    let state = row.state.parse::<JobState>().map_or(0, JobState::to_wire);
    pb::Job {
        id: row.id,
        sweep_id: row.sweep_id,
        init: row.init,
        lr: row.lr,
        seed: row.seed as u64,
        state,
        attempt: row.attempt as u32,
        worker: row.worker_id.unwrap_or_default(),
        step: row.step as u64,
        total_steps: row.total_steps as u64,
        last_train_loss: row.last_train_loss,
        final_eval_loss: row.final_eval_loss,
        error: row.error,
        lease_expires_at_ms: row.lease_expires_at,
        updated_at_ms: row.updated_at,
        tokens: row.tokens as u64,
        seconds: row.seconds,
        failures: row.failures as u32,
        leased_at_ms: row.leased_at,
        error_kind: row.error_kind,
    }
}

/// The wire form of a sweep summary.
pub(crate) fn sweep_to_pb(summary: SweepSummary) -> pb::Sweep {
    let total = summary.total();
    pb::Sweep {
        id: summary.sweep.id,
        name: summary.sweep.name,
        created_at_ms: summary.sweep.created_at,
        total,
        counts: summary
            .counts
            .into_iter()
            .map(|(state, count)| pb::StateCount { state: state.to_wire(), count })
            .collect(),
        sweep_toml: summary.sweep.sweep_toml,
        priority: summary.sweep.priority,
        unschedulable: summary.unschedulable.unwrap_or_default(),
        paused: summary.sweep.pause_reason,
        paused_at_ms: summary.sweep.paused_at,
        fail_fast: u32::try_from(summary.sweep.fail_fast).unwrap_or(0),
    }
}
