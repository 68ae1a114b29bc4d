//! Jobs and their leases. A lease is `(job, attempt)`: `attempt` grows by one on every lease and
//! is never reset, so it fences off every earlier holder. Every job-scoped worker call is checked
//! by [`check_lease`] inside the writer, in the same transaction as its effect.

use lorasweep_common::JobState;
use sqlx::{FromRow, SqliteConnection};
use tracing::{info, warn};

use super::{Store, end_attempt, event, state_of};
use crate::error::{Error, Result};

/// Columns of [`JobRow`], in its order.
pub(crate) const JOB_COLUMNS: &str = "id, sweep_id, ord, init, lr, seed, state, attempt, failures, worker_id, \
     lease_expires_at, leased_at, step, total_steps, last_train_loss, final_eval_loss, tokens, seconds, error, \
     error_kind, updated_at";

/// A job as stored.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) sweep_id: String,
    /// Position in the sweep's grid (the ListJobs page key).
    pub(crate) ord: i64,
    pub(crate) init: String,
    pub(crate) lr: f64,
    pub(crate) seed: i64,
    pub(crate) state: String,
    pub(crate) attempt: i64,
    pub(crate) failures: i64,
    pub(crate) worker_id: Option<String>,
    pub(crate) lease_expires_at: i64,
    pub(crate) leased_at: i64,
    pub(crate) step: i64,
    pub(crate) total_steps: i64,
    pub(crate) last_train_loss: Option<f64>,
    pub(crate) final_eval_loss: Option<f64>,
    pub(crate) tokens: i64,
    pub(crate) seconds: f64,
    pub(crate) error: String,
    pub(crate) error_kind: String,
    pub(crate) updated_at: i64,
}

/// A granted lease.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct LeaseRow {
    pub(crate) id: String,
    pub(crate) sweep_id: String,
    pub(crate) attempt: i64,
    pub(crate) spec_json: String,
    pub(crate) lease_expires_at: i64,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beat {
    /// New expiry; 0 when the job was cancelled.
    pub(crate) expires_at: i64,
    /// The job was cancelled: stop.
    pub(crate) cancel: bool,
}

/// How an attempt finished, as CompleteJob reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// `Succeeded` or `Diverged`.
    pub(crate) state: JobState,
    /// The final eval loss, if an eval ran (NaN is stored as absent).
    pub(crate) final_eval_loss: Option<f64>,
    /// Training tokens processed.
    pub(crate) tokens: u64,
    /// Wall seconds of the run.
    pub(crate) seconds: f64,
    /// Diverged: the step and train loss at which the run stopped.
    pub(crate) diverged_at: Option<(u64, Option<f64>)>,
}

/// The lease-relevant columns of a job.
#[derive(Debug, FromRow)]
pub(crate) struct LeaseState {
    pub(crate) pk: i64,
    pub(crate) sweep_id: String,
    pub(crate) state: String,
    pub(crate) attempt: i64,
    pub(crate) failures: i64,
    pub(crate) worker_id: Option<String>,
    pub(crate) lease_expires_at: i64,
}

/// Checks that `(job_id, attempt)` is the job's current attempt, held by `worker` (if given),
/// and returns the job's lease state. A cancelled job passes only if `allow_cancelled`; any
/// other state, another attempt or an expired lease is [`Error::StaleLease`]/[`Error::WrongState`].
pub(crate) async fn check_lease(
    conn: &mut SqliteConnection,
    now: i64,
    job_id: &str,
    attempt: u32,
    worker: Option<&str>,
    allow_cancelled: bool,
) -> Result<(LeaseState, JobState)> {
    let job: LeaseState = sqlx::query_as(
        "SELECT pk, sweep_id, state, attempt, failures, worker_id, lease_expires_at FROM jobs WHERE id = ?1",
    )
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| unknown_job(job_id))?;
    if i64::from(attempt) != job.attempt {
        return Err(Error::StaleLease(format!(
            "attempt {attempt} of job {job_id} is stale: the job's current attempt is {}; drop the job",
            job.attempt
        )));
    }
    if let Some(worker) = worker
        && job.worker_id.as_deref() != Some(worker)
    {
        return Err(Error::StaleLease(format!(
            "job {job_id} attempt {attempt} is held by worker {:?}, not {worker:?}",
            job.worker_id.as_deref().unwrap_or("")
        )));
    }
    let state = state_of(&job.state)?;
    match state {
        JobState::Running if now >= job.lease_expires_at => Err(Error::StaleLease(format!(
            "the lease of job {job_id} attempt {attempt} expired at {} (now {now}); drop the job",
            job.lease_expires_at
        ))),
        JobState::Running => Ok((job, state)),
        JobState::Cancelled if allow_cancelled => Ok((job, state)),
        other => {
            Err(Error::WrongState(format!("job {job_id} is {other}, not running; attempt {attempt} must drop it")))
        }
    }
}

/// [`Error::NotFound`] for a job id.
pub(crate) fn unknown_job(job_id: &str) -> Error {
    Error::NotFound(format!("no job with id {job_id:?}"))
}

impl Store {
    /// A sweep's jobs in grid order, optionally only those in `state`, at most `limit` of them
    /// after grid position `after` (a page).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown sweep.
    pub(crate) async fn list_jobs(
        &self,
        sweep_id: &str,
        state: Option<JobState>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<JobRow>> {
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE sweep_id = ?1 AND (?2 IS NULL OR state = ?2) AND ord > ?3 \
             ORDER BY ord LIMIT ?4"
        )))
        .bind(sweep_id)
        .bind(state.map(|s| s.name()))
        .bind(after.unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await?;
        if rows.is_empty() {
            // Distinguish "no such sweep" from "no job in that state".
            self.get_sweep(sweep_id).await?;
        }
        Ok(rows)
    }

    /// How many jobs of all sweeps are in each state (states without jobs are absent).
    pub(crate) async fn job_state_counts(&self) -> Result<Vec<(JobState, i64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state").fetch_all(&self.reads).await?;
        rows.into_iter().map(|(state, n)| Ok((super::state_of(&state)?, n))).collect()
    }

    /// Leases the oldest queued job to `worker_id`, or returns `None` when nothing is queued.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unregistered worker.
    pub(crate) async fn lease(&self, worker_id: String) -> Result<Option<LeaseRow>> {
        let now = self.now();
        let expires = now + self.lease_ttl_ms;
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    // One statement: the single writer already serialises leases, and this stays
                    // atomic even if another process ever writes the file. The `jobs_leased`
                    // trigger (migrations 0004, 0005) does the rest in the same statement: the
                    // sweep's round-robin counter, the attempt's row, the `leased` event and the
                    // worker's last_seen. (Each separate statement costs a round trip to sqlx's
                    // connection thread, which is most of a lease's time.)
                    //
                    // Which job: among the sweeps with queued jobs that this worker can run
                    // (device kind, GPU memory, CPU threads; SweepRow::runs_on is the same rule),
                    // the highest priority; among equal priorities a fair share of the workers:
                    // the sweep with the fewest running jobs, then the one leased least recently
                    // (round-robin: one worker alternates between two sweeps rather than
                    // finishing the older first; `lease_seq` is kept by a trigger), then
                    // the oldest queued job. The per-sweep numbers come from the
                    // (sweep_id, state) index; sweeps with nothing queued are dropped by the
                    // EXISTS before any of them is computed.
                    let lease: Option<LeaseRow> = sqlx::query_as(
                        "UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_id = ?1, \
                         lease_expires_at = ?2, leased_at = ?3, updated_at = ?3, step = 0, total_steps = 0, \
                         last_train_loss = NULL \
                         WHERE pk = ( \
                           SELECT first FROM ( \
                             SELECT s.priority AS priority, \
                               (SELECT COUNT(*) FROM jobs r WHERE r.sweep_id = s.id AND r.state = 'running') AS running, \
                               s.lease_seq AS lease_seq, \
                               (SELECT MIN(q.pk) FROM jobs q WHERE q.sweep_id = s.id AND q.state = 'queued') AS first \
                             FROM sweeps s JOIN workers w ON w.id = ?1 \
                             WHERE s.paused_at = 0 \
                               AND EXISTS (SELECT 1 FROM jobs q WHERE q.sweep_id = s.id AND q.state = 'queued') \
                               AND (s.need_device = '' OR (s.need_device = 'cuda' AND w.device LIKE 'cuda%') \
                                    OR s.need_device = w.device) \
                               AND w.gpu_memory_bytes >= s.min_gpu_memory_bytes \
                               AND w.cpu_threads >= s.min_cpu_threads) \
                           ORDER BY priority DESC, running ASC, lease_seq ASC, first ASC LIMIT 1) \
                         RETURNING id, sweep_id, attempt, spec_json, lease_expires_at",
                    )
                    .bind(&worker_id)
                    .bind(expires)
                    .bind(now)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if lease.is_none() {
                        // Nothing leased: either no work, or an unknown worker (NotFound). This
                        // also records that an idle worker was seen.
                        super::workers::touch(conn, &worker_id, now).await?;
                    }
                    Ok(lease)
                })
            })
            .await
    }

    /// Extends a live lease and records progress; a cancelled job answers `cancel`.
    pub(crate) async fn heartbeat(
        &self,
        worker_id: String,
        job_id: String,
        attempt: u32,
        step: u64,
        total_steps: u64,
    ) -> Result<Beat> {
        let now = self.now();
        let expires = now + self.lease_ttl_ms;
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let (job, state) = check_lease(conn, now, &job_id, attempt, Some(&worker_id), true).await?;
                    super::workers::touch(conn, &worker_id, now).await?;
                    if state == JobState::Cancelled {
                        return Ok(Beat { expires_at: 0, cancel: true });
                    }
                    sqlx::query(
                        "UPDATE jobs SET lease_expires_at = ?2, step = max(step, ?3), \
                         total_steps = CASE WHEN ?4 > 0 THEN ?4 ELSE total_steps END, updated_at = ?5 WHERE pk = ?1",
                    )
                    .bind(job.pk)
                    .bind(expires)
                    .bind(step as i64)
                    .bind(total_steps as i64)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    Ok(Beat { expires_at: expires, cancel: false })
                })
            })
            .await
    }

    /// Ends a live attempt with a result.
    pub(crate) async fn complete(
        &self,
        worker_id: String,
        job_id: String,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<()> {
        let Outcome { state, final_eval_loss, tokens, seconds, diverged_at } = outcome;
        let now = self.now();
        let (error, error_kind) = match (state, diverged_at) {
            (JobState::Diverged, Some((step, loss))) => (
                format!("diverged at step {step}: train loss {}", loss.map_or("NaN".into(), |l| format!("{l}"))),
                "diverged",
            ),
            (JobState::Diverged, None) => ("diverged".to_string(), "diverged"),
            _ => (String::new(), ""),
        };
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    // Check and write in one statement on the hot path; when it matches nothing,
                    // check_lease explains why (and has written nothing either way).
                    // The `jobs_completed` trigger (migration 0006) closes the attempt's row and
                    // writes the `succeeded`/`diverged` event in this same statement.
                    let done: Option<(i64,)> = sqlx::query_as(
                        "UPDATE jobs SET state = ?4, final_eval_loss = ?5, tokens = ?6, seconds = ?7, \
                         lease_expires_at = 0, error = ?9, error_kind = ?10, updated_at = ?8 \
                         WHERE id = ?1 AND attempt = ?2 AND worker_id = ?3 AND state = 'running' AND lease_expires_at > ?8 \
                         RETURNING pk",
                    )
                    .bind(&job_id)
                    .bind(i64::from(attempt))
                    .bind(&worker_id)
                    .bind(state.name())
                    .bind(final_eval_loss)
                    .bind(tokens as i64)
                    .bind(seconds)
                    .bind(now)
                    .bind(&error)
                    .bind(error_kind)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if done.is_none() {
                        check_lease(conn, now, &job_id, attempt, Some(&worker_id), false).await?;
                        return Err(Error::Corrupt(format!("job {job_id} passed the lease check but could not complete")));
                    }
                    info!(job_id, attempt, %state, "job finished");
                    Ok(())
                })
            })
            .await
    }

    /// Ends a live attempt with an error. `released`: requeued without using an attempt;
    /// otherwise requeued while attempts remain and the error is retryable, else failed (and a
    /// non-retryable failure may pause the sweep: [`super::failfast`]). Returns the job's new
    /// state.
    pub(crate) async fn fail(
        &self,
        worker_id: String,
        job_id: String,
        attempt: u32,
        error: String,
        retryable: bool,
        released: bool,
    ) -> Result<JobState> {
        let now = self.now();
        let max_attempts = i64::from(self.max_attempts);
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let (job, _) = check_lease(conn, now, &job_id, attempt, Some(&worker_id), false).await?;
                    let failures = job.failures;
                    let (state, failures) = if released {
                        (JobState::Queued, failures)
                    } else if retryable && failures + 1 < max_attempts {
                        (JobState::Queued, failures + 1)
                    } else {
                        (JobState::Failed, failures + 1)
                    };
                    let error = if released && error.is_empty() { "released by its worker".to_string() } else { error };
                    let kind = if retryable || released { "retryable" } else { "fatal" };
                    sqlx::query(
                        "UPDATE jobs SET state = ?2, failures = ?3, error = ?4, error_kind = ?5, lease_expires_at = 0, \
                         updated_at = ?6 WHERE pk = ?1",
                    )
                    .bind(job.pk)
                    .bind(state.name())
                    .bind(failures)
                    .bind(&error)
                    .bind(kind)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    let a = i64::from(attempt);
                    let at = Some((job_id.as_str(), a, worker_id.as_str()));
                    if released {
                        end_attempt(conn, job.pk, a, now, "released", &error, "").await?;
                        event(conn, now, &job.sweep_id, at, "released", &error).await?;
                    } else {
                        end_attempt(conn, job.pk, a, now, "failed", &error, kind).await?;
                        let detail = format!("{kind} error (failure {failures} of at most {max_attempts}): {error}");
                        event(conn, now, &job.sweep_id, at, "failed", &detail).await?;
                    }
                    if state == JobState::Queued {
                        event(conn, now, &job.sweep_id, at, "requeued", "queued for another attempt").await?;
                    } else if kind == "fatal" {
                        super::failfast::check(conn, now, &job.sweep_id, &error).await?;
                    }
                    warn!(job_id, attempt, %state, released, error, "attempt ended with an error");
                    Ok(state)
                })
            })
            .await
    }

    /// Requeues every running job whose lease has expired (or fails it once it has used up
    /// `max_attempts`). Returns how many leases expired.
    pub(crate) async fn reap(&self) -> Result<usize> {
        let now = self.now();
        let max_attempts = i64::from(self.max_attempts);
        let ttl = self.lease_ttl_ms;
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let expired: Vec<(i64, String, String, i64, String, String, i64)> = sqlx::query_as(
                        "UPDATE jobs SET failures = failures + 1, \
                         state = CASE WHEN failures + 1 >= ?2 THEN 'failed' ELSE 'queued' END, \
                         error = 'lease of attempt ' || attempt || ' expired: no heartbeat from its worker', \
                         error_kind = 'lost', lease_expires_at = 0, updated_at = ?1 \
                         WHERE state = 'running' AND lease_expires_at <= ?1 \
                         RETURNING pk, id, sweep_id, attempt, state, coalesce(worker_id, ''), failures",
                    )
                    .bind(now)
                    .bind(max_attempts)
                    .fetch_all(&mut *conn)
                    .await?;
                    for (pk, job_id, sweep_id, attempt, state, worker, failures) in &expired {
                        warn!(job_id, attempt, state, worker, "lease expired");
                        let error = format!("no heartbeat from its worker for the lease TTL ({ttl} ms)");
                        end_attempt(conn, *pk, *attempt, now, "lost", &error, "").await?;
                        let at = Some((job_id.as_str(), *attempt, worker.as_str()));
                        event(conn, now, sweep_id, at, "heartbeat-lost", &error).await?;
                        if state == "queued" {
                            event(conn, now, sweep_id, at, "requeued", "queued for another attempt").await?;
                        } else {
                            let detail = format!("out of attempts ({failures} of at most {max_attempts}): {error}");
                            event(conn, now, sweep_id, at, "failed", &detail).await?;
                        }
                    }
                    Ok(expired.len())
                })
            })
            .await
    }
}
