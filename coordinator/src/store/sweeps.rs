//! Sweeps: submission (the sweep row plus one queued job per grid cell, in one transaction),
//! reads with per-state counts, cancel and retry.

use std::collections::HashMap;

use lorasweep_common::{JobState, SweepSpec};
use sqlx::{FromRow, SqliteConnection};

use super::{Store, event, state_of};
use crate::error::{Error, Result};

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
                         min_gpu_memory_bytes, min_cpu_threads) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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

    /// All sweeps, newest first, with counts.
    pub(crate) async fn list_sweeps(&self) -> Result<Vec<SweepSummary>> {
        let sweeps: Vec<SweepRow> = sqlx::query_as(
            "SELECT id, name, sweep_toml, created_at, priority, need_device, min_gpu_memory_bytes, min_cpu_threads \
                 FROM sweeps ORDER BY created_at DESC, rowid DESC",
        )
        .fetch_all(&self.reads)
        .await?;
        let workers = self.live_workers().await?;
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT sweep_id, state, count(*) FROM jobs GROUP BY sweep_id, state")
                .fetch_all(&self.reads)
                .await?;
        let mut counts: HashMap<String, Vec<(JobState, u32)>> = HashMap::new();
        for (sweep_id, state, n) in rows {
            counts.entry(sweep_id).or_default().push((state_of(&state)?, n as u32));
        }
        Ok(sweeps
            .into_iter()
            .map(|sweep| {
                let mut counts = counts.remove(&sweep.id).unwrap_or_default();
                counts.sort();
                let unschedulable = unschedulable(&sweep, &counts, &workers);
                SweepSummary { sweep, counts, unschedulable }
            })
            .collect())
    }

    /// One sweep with counts.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    pub(crate) async fn get_sweep(&self, sweep_id: &str) -> Result<SweepSummary> {
        let sweep: SweepRow = sqlx::query_as(
            "SELECT id, name, sweep_toml, created_at, priority, need_device, min_gpu_memory_bytes, min_cpu_threads \
             FROM sweeps WHERE id = ?1",
        )
        .bind(sweep_id)
        .fetch_optional(&self.reads)
        .await?
        .ok_or_else(|| unknown_sweep(sweep_id))?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs WHERE sweep_id = ?1 GROUP BY state")
                .bind(sweep_id)
                .fetch_all(&self.reads)
                .await?;
        let mut counts =
            rows.into_iter().map(|(state, n)| Ok((state_of(&state)?, n as u32))).collect::<Result<Vec<_>>>()?;
        counts.sort();
        let unschedulable = unschedulable(&sweep, &counts, &self.live_workers().await?);
        Ok(SweepSummary { sweep, counts, unschedulable })
    }

    /// Cancels every queued or running job of a sweep; returns how many.
    pub(crate) async fn cancel_sweep(&self, sweep_id: String) -> Result<u32> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sweep_exists(conn, &sweep_id).await?;
                    // lease_expires_at stays: the worker learns of the cancel at its next heartbeat.
                    let n = sqlx::query(
                        "UPDATE jobs SET state = 'cancelled', updated_at = ?2 \
                         WHERE sweep_id = ?1 AND state IN ('queued', 'running')",
                    )
                    .bind(&sweep_id)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected() as u32;
                    event(conn, now, &sweep_id, None, "cancelled", &format!("{n} jobs")).await?;
                    Ok(n)
                })
            })
            .await
    }

    /// Requeues every failed or cancelled job of a sweep with a fresh failure budget; returns how
    /// many. `attempt` is kept, so workers of earlier attempts stay fenced off.
    pub(crate) async fn retry_sweep(&self, sweep_id: String) -> Result<u32> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sweep_exists(conn, &sweep_id).await?;
                    let n = sqlx::query(
                        "UPDATE jobs SET state = 'queued', failures = 0, error = '', lease_expires_at = 0, \
                         updated_at = ?2 WHERE sweep_id = ?1 AND state IN ('failed', 'cancelled')",
                    )
                    .bind(&sweep_id)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected() as u32;
                    event(conn, now, &sweep_id, None, "retried", &format!("{n} jobs")).await?;
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

async fn sweep_exists(conn: &mut SqliteConnection, sweep_id: &str) -> Result<()> {
    let found: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM sweeps WHERE id = ?1").bind(sweep_id).fetch_optional(conn).await?;
    found.map(|_| ()).ok_or_else(|| unknown_sweep(sweep_id))
}
