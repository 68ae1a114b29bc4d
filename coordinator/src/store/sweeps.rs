//! Sweeps: submission (the sweep row plus one queued job per grid cell, in one transaction),
//! reads with per-state counts, cancel and retry.

use lorasweep_common::{JobState, SweepSpec};
use sqlx::{FromRow, SqliteConnection};

use super::{Store, end_attempt, event, state_of};
use crate::error::{Error, Result};

/// Columns of [`SweepRow`].
const SWEEP_COLUMNS: &str = "id, name, sweep_toml, created_at, priority, need_device, min_gpu_memory_bytes, \
     min_cpu_threads, fail_fast, paused_at, pause_reason, rowid";

/// A stored sweep.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct SweepRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) sweep_toml: String,
    pub(crate) created_at: i64,
    pub(crate) priority: i64,
    /// `''` (any), `cpu` or `cuda`.
    pub(crate) need_device: String,
    pub(crate) min_gpu_memory_bytes: i64,
    pub(crate) min_cpu_threads: i64,
    /// 0: never pauses.
    pub(crate) fail_fast: i64,
    /// 0 while not paused.
    pub(crate) paused_at: i64,
    pub(crate) pause_reason: String,
    /// The ListSweeps page key.
    pub(crate) rowid: i64,
}

impl SweepRow {
    /// Whether a worker with this device, CPU threads and GPU memory may run the sweep's jobs.
    /// The same rule as the lease statement's (store::jobs::lease), for `status`.
    pub(crate) fn runs_on(&self, device: &str, cpu_threads: i64, gpu_memory_bytes: i64) -> bool {
        let kind_ok = match self.need_device.as_str() {
            "" => true,
            "cuda" => device.starts_with("cuda"),
            other => device == other,
        };
        kind_ok && gpu_memory_bytes >= self.min_gpu_memory_bytes && cpu_threads >= self.min_cpu_threads
    }

    /// What the sweep needs, in words.
    pub(crate) fn needs(&self) -> String {
        let mut parts =
            vec![if self.need_device.is_empty() { "any device".to_string() } else { self.need_device.clone() }];
        if self.min_gpu_memory_bytes > 0 {
            parts.push(format!("≥ {} GB of GPU memory", self.min_gpu_memory_bytes as f64 / 1e9));
        }
        if self.min_cpu_threads > 0 {
            parts.push(format!("≥ {} CPU threads", self.min_cpu_threads));
        }
        parts.join(", ")
    }
}

/// A sweep with its job counts per state.
#[derive(Debug, Clone)]
pub(crate) struct SweepSummary {
    pub(crate) sweep: SweepRow,
    /// Only states with at least one job, in lifecycle order.
    pub(crate) counts: Vec<(JobState, u32)>,
    /// Why its queued jobs cannot run: no live worker meets its requirements.
    pub(crate) unschedulable: Option<String>,
}

impl SweepSummary {
    /// Number of jobs.
    pub(crate) fn total(&self) -> u32 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    /// True while some job is queued or running.
    pub(crate) fn is_active(&self) -> bool {
        self.counts.iter().any(|(state, n)| state.is_active() && *n > 0)
    }
}

/// `(device, cpu_threads, gpu_memory_bytes)` of a live worker.
type Capability = (String, i64, i64);

/// Why `sweep`'s queued jobs cannot run on any of `workers`, if they cannot.
fn unschedulable(sweep: &SweepRow, counts: &[(JobState, u32)], workers: &[Capability]) -> Option<String> {
    let queued = counts.iter().any(|(s, n)| *s == JobState::Queued && *n > 0);
    if !queued || workers.iter().any(|(d, t, m)| sweep.runs_on(d, *t, *m)) {
        return None;
    }
    let seen: Vec<String> =
        workers
            .iter()
            .map(|(d, t, m)| {
                if *m > 0 { format!("{d} ({t} threads, {} GB)", *m as f64 / 1e9) } else { format!("{d} ({t} threads)") }
            })
            .collect();
    Some(format!(
        "no live worker can run it: it needs {}; live workers: {}",
        sweep.needs(),
        if seen.is_empty() { "none".into() } else { seen.join(", ") }
    ))
}

impl Store {
    /// What the live workers offer (alive as ListWorkers says it), for [`unschedulable`].
    async fn live_workers(&self) -> Result<Vec<Capability>> {
        Ok(self
            .list_workers()
            .await?
            .into_iter()
            .filter(|(_, alive)| *alive)
            .map(|(w, _)| (w.device, w.cpu_threads, w.gpu_memory_bytes))
            .collect())
    }

    /// Stores a validated sweep and its jobs (queued, in grid order). Returns (sweep id, jobs).
    pub(crate) async fn submit_sweep(&self, spec: SweepSpec, toml: String, source: String) -> Result<(String, u32)> {
        let sweep_id = uuid::Uuid::new_v4().to_string();
        // Serialise the specs here, off the writer task.
        let jobs = spec
            .jobs()
            .into_iter()
            .map(|job| {
                let json = serde_json::to_string(&job).map_err(|e| Error::Corrupt(format!("job spec to JSON: {e}")))?;
                Ok((uuid::Uuid::new_v4().to_string(), job, json))
            })
            .collect::<Result<Vec<_>>>()?;
        let count = jobs.len() as u32;
        let now = self.now();
        let id = sweep_id.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO sweeps (id, name, sweep_toml, source, created_at, priority, need_device, \
                         min_gpu_memory_bytes, min_cpu_threads, fail_fast) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )
                    .bind(&id)
                    .bind(&spec.name)
                    .bind(&toml)
                    .bind(&source)
                    .bind(now)
                    .bind(spec.priority)
                    .bind(spec.requirements.device_kind())
                    .bind((spec.requirements.min_gpu_memory_gb * 1e9).ceil() as i64)
                    .bind(i64::from(spec.requirements.min_cpu_threads))
                    .bind(i64::from(spec.fail_fast.unwrap_or(0)))
                    .execute(&mut *conn)
                    .await?;
                    for (ord, (job_id, job, json)) in jobs.iter().enumerate() {
                        sqlx::query(
                            "INSERT INTO jobs (id, sweep_id, ord, init, lr, seed, spec_json, updated_at) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )
                        .bind(job_id)
                        .bind(&id)
                        .bind(ord as i64)
                        .bind(job.init.name())
                        .bind(job.lr)
                        // Bit-preserving: seeds above i64::MAX come back intact through `as u64`.
                        .bind(job.seed as i64)
                        .bind(json)
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                    }
                    event(conn, now, &id, None, "submitted", &format!("{} jobs from {source}", jobs.len())).await
                })
            })
            .await?;
        Ok((sweep_id, count))
    }

    /// Sweeps, newest first, with counts: at most `limit` of them, older than the sweep with
    /// rowid `before` (a page).
    pub(crate) async fn list_sweeps(&self, before: Option<i64>, limit: u32) -> Result<Vec<SweepSummary>> {
        let sweeps: Vec<SweepRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SWEEP_COLUMNS} FROM sweeps \
             WHERE ?1 IS NULL OR (created_at, rowid) < (SELECT created_at, rowid FROM sweeps WHERE rowid = ?1) \
             ORDER BY created_at DESC, rowid DESC LIMIT ?2"
        )))
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await?;
        let workers = self.live_workers().await?;
        let mut out = Vec::with_capacity(sweeps.len());
        for sweep in sweeps {
            let counts = self.counts(&sweep.id).await?;
            let unschedulable = unschedulable(&sweep, &counts, &workers);
            out.push(SweepSummary { sweep, counts, unschedulable });
        }
        Ok(out)
    }

    /// A sweep's job counts per state, in lifecycle order (from the (sweep_id, state) index).
    async fn counts(&self, sweep_id: &str) -> Result<Vec<(JobState, u32)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs WHERE sweep_id = ?1 GROUP BY state")
                .bind(sweep_id)
                .fetch_all(&self.reads)
                .await?;
        let mut counts =
            rows.into_iter().map(|(state, n)| Ok((state_of(&state)?, n as u32))).collect::<Result<Vec<_>>>()?;
        counts.sort();
        Ok(counts)
    }

    /// One sweep with counts.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub(crate) async fn get_sweep(&self, sweep_id: &str) -> Result<SweepSummary> {
        let sweep: SweepRow =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {SWEEP_COLUMNS} FROM sweeps WHERE id = ?1")))
                .bind(sweep_id)
                .fetch_optional(&self.reads)
                .await?
                .ok_or_else(|| unknown_sweep(sweep_id))?;
        let counts = self.counts(sweep_id).await?;
        let unschedulable = unschedulable(&sweep, &counts, &self.live_workers().await?);
        Ok(SweepSummary { sweep, counts, unschedulable })
    }

    /// Cancels every queued or running job of a sweep; returns how many. `who` (the caller, in
    /// words) is recorded in the jobs' errors and the events.
    pub(crate) async fn cancel_sweep(&self, sweep_id: String, who: String) -> Result<u32> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sweep_exists(conn, &sweep_id).await?;
                    let why = format!("cancelled by {who}");
                    // The running attempts end here: their workers learn it at their next
                    // heartbeat and drop the job without another call.
                    let running: Vec<(i64, String, i64, String)> = sqlx::query_as(
                        "SELECT pk, id, attempt, coalesce(worker_id, '') FROM jobs WHERE sweep_id = ?1 AND state = 'running'",
                    )
                    .bind(&sweep_id)
                    .fetch_all(&mut *conn)
                    .await?;
                    // lease_expires_at stays: the worker learns of the cancel at its next heartbeat.
                    let n = sqlx::query(
                        "UPDATE jobs SET state = 'cancelled', error = ?3, error_kind = 'cancelled', updated_at = ?2 \
                         WHERE sweep_id = ?1 AND state IN ('queued', 'running')",
                    )
                    .bind(&sweep_id)
                    .bind(now)
                    .bind(&why)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected() as u32;
                    for (pk, job_id, attempt, worker) in &running {
                        end_attempt(conn, *pk, *attempt, now, "cancelled", &why, "").await?;
                        event(conn, now, &sweep_id, Some((job_id, *attempt, worker)), "cancelled", &why).await?;
                    }
                    event(conn, now, &sweep_id, None, "cancelled", &format!("{n} jobs {why}")).await?;
                    Ok(n)
                })
            })
            .await
    }

    /// Requeues every failed or cancelled job of a sweep with a fresh failure budget and lifts a
    /// fail-fast pause; returns how many. `attempt` is kept, so workers of earlier attempts stay
    /// fenced off.
    pub(crate) async fn retry_sweep(&self, sweep_id: String, who: String) -> Result<u32> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sweep_exists(conn, &sweep_id).await?;
                    sqlx::query("UPDATE sweeps SET paused_at = 0, pause_reason = '' WHERE id = ?1")
                        .bind(&sweep_id)
                        .execute(&mut *conn)
                        .await?;
                    let n = sqlx::query(
                        "UPDATE jobs SET state = 'queued', failures = 0, error = '', error_kind = '', lease_expires_at = 0, \
                         updated_at = ?2 WHERE sweep_id = ?1 AND state IN ('failed', 'cancelled')",
                    )
                    .bind(&sweep_id)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected() as u32;
                    event(conn, now, &sweep_id, None, "retried", &format!("{n} jobs requeued by {who}")).await?;
                    Ok(n)
                })
            })
            .await
    }
}

/// [`Error::NotFound`] for a sweep id.
pub(crate) fn unknown_sweep(sweep_id: &str) -> Error {
    Error::NotFound(format!("no sweep with id {sweep_id:?}"))
}

pub(crate) async fn sweep_exists(conn: &mut SqliteConnection, sweep_id: &str) -> Result<()> {
    let found: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM sweeps WHERE id = ?1").bind(sweep_id).fetch_optional(conn).await?;
    found.map(|_| ()).ok_or_else(|| unknown_sweep(sweep_id))
}
