//! One job whole: its row, its spec, its sweep's name and every attempt with the worker that
//! held it; and the attempt-scoped record that a run resumed from a checkpoint.

use sqlx::FromRow;

use super::{
    Store, event,
    jobs::{JOB_COLUMNS, JobRow, check_lease, unknown_job},
};
use crate::error::Result;

/// One attempt as stored, with its worker's registration.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct AttemptRow {
    pub(crate) attempt: i64,
    pub(crate) worker_id: String,
    pub(crate) worker_name: Option<String>,
    pub(crate) device: Option<String>,
    pub(crate) gpu_name: Option<String>,
    pub(crate) visible_devices: Option<String>,
    pub(crate) leased_at: i64,
    pub(crate) ended_at: i64,
    pub(crate) outcome: String,
    pub(crate) error: String,
    pub(crate) error_kind: String,
    pub(crate) resumed_from_step: Option<i64>,
    pub(crate) log_records: i64,
    pub(crate) logs_dropped: i64,
}

/// A job with everything known about it.
#[derive(Debug, Clone)]
pub(crate) struct JobDetail {
    pub(crate) job: JobRow,
    pub(crate) spec_json: String,
    pub(crate) sweep_name: String,
    pub(crate) attempts: Vec<AttemptRow>,
}

impl Store {
    /// One job with its spec and attempts (oldest first).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown job.
    pub(crate) async fn get_job(&self, job_id: &str) -> Result<JobDetail> {
        let job: JobRow = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1")))
            .bind(job_id)
            .fetch_optional(&self.reads)
            .await?
            .ok_or_else(|| unknown_job(job_id))?;
        let (pk, spec_json, sweep_name): (i64, String, String) = sqlx::query_as(
            "SELECT j.pk, j.spec_json, s.name FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE j.id = ?1",
        )
        .bind(job_id)
        .fetch_one(&self.reads)
        .await?;
        // An attempt holds at most one job, so a job has few attempts (≤ the retry budget plus
        // graceful releases): no paging needed.
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT a.attempt, a.worker_id, w.name AS worker_name, w.device, w.gpu_name, w.visible_devices, \
             a.leased_at, a.ended_at, a.outcome, a.error, a.error_kind, a.resumed_from_step, a.log_records, \
             a.logs_dropped FROM attempts a LEFT JOIN workers w ON w.id = a.worker_id \
             WHERE a.job_pk = ?1 ORDER BY a.attempt",
        )
        .bind(pk)
        .fetch_all(&self.reads)
        .await?;
        Ok(JobDetail { job, spec_json, sweep_name, attempts })
    }

    /// Records that the live attempt `(job_id, attempt)` resumed from the checkpoint at `step`.
    ///
    /// # Errors
    /// As [`check_lease`]: nothing is stored for an attempt that is not live.
    pub(crate) async fn resumed(&self, worker_id: String, job_id: String, attempt: u32, step: u64) -> Result<()> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let (job, _) = check_lease(conn, now, &job_id, attempt, Some(&worker_id), false).await?;
                    let a = i64::from(attempt);
                    sqlx::query("UPDATE attempts SET resumed_from_step = ?3 WHERE job_pk = ?1 AND attempt = ?2")
                        .bind(job.pk)
                        .bind(a)
                        .bind(step as i64)
                        .execute(&mut *conn)
                        .await?;
                    let detail = format!("resumed from the checkpoint at step {step}");
                    event(conn, now, &job.sweep_id, Some((&job_id, a, &worker_id)), "resumed", &detail).await
                })
            })
            .await
    }
}
