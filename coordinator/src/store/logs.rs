//! Workers' job logs: records shipped per attempt, stored in arrival order under a per-job size
//! cap, read back a page at a time.
//!
//! Shipping is accepted from the worker that held the attempt even after its lease ended: the
//! records of a partitioned or killed attempt are exactly the ones a post-mortem needs. The cap
//! bounds what a chatty or broken worker can make the coordinator store; past it, records are
//! counted (`attempts.logs_dropped`), and one marker record says where storing stopped.

use sqlx::FromRow;

use super::{Store, jobs::unknown_job};
use crate::error::{Error, Result};

/// Bytes of log messages stored per job, over all its attempts.
pub const MAX_LOG_BYTES_PER_JOB: i64 = 2 << 20;

/// A record as shipped.
#[derive(Debug, Clone)]
pub(crate) struct NewRecord {
    pub(crate) at: i64,
    pub(crate) level: String,
    pub(crate) target: String,
    pub(crate) message: String,
}

/// A stored record.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct LogRow {
    pub(crate) seq: i64,
    pub(crate) attempt: i64,
    pub(crate) at: i64,
    pub(crate) level: String,
    pub(crate) target: String,
    pub(crate) message: String,
}

/// What a ShipLogs stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shipped {
    pub(crate) stored: u32,
    pub(crate) capped: bool,
}

impl Store {
    /// Stores `records` of attempt `(job_id, attempt)`, which `worker_id` must hold or have held.
    /// `dropped`: records the worker itself dropped, added to the attempt's count.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown job; [`Error::StaleLease`] when that attempt was never
    /// this worker's. Nothing is stored then.
    pub(crate) async fn ship_logs(
        &self,
        worker_id: String,
        job_id: String,
        attempt: u32,
        records: Vec<NewRecord>,
        dropped: u64,
    ) -> Result<Shipped> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let (pk, already_capped): (i64, bool) =
                        sqlx::query_as("SELECT pk, log_capped FROM jobs WHERE id = ?1")
                            .bind(&job_id)
                            .fetch_optional(&mut *conn)
                            .await?
                            .ok_or_else(|| unknown_job(&job_id))?;
                    let a = i64::from(attempt);
                    let holder: Option<String> =
                        sqlx::query_scalar("SELECT worker_id FROM attempts WHERE job_pk = ?1 AND attempt = ?2")
                            .bind(pk)
                            .bind(a)
                            .fetch_optional(&mut *conn)
                            .await?;
                    if holder.as_deref() != Some(worker_id.as_str()) {
                        return Err(Error::StaleLease(format!(
                            "attempt {attempt} of job {job_id} was never held by worker {worker_id:?}; its logs are refused"
                        )));
                    }
                    let (used, last_seq): (i64, i64) = sqlx::query_as(
                        "SELECT (SELECT coalesce(sum(log_bytes), 0) FROM attempts WHERE job_pk = ?1), \
                         (SELECT coalesce(max(seq), 0) FROM job_logs WHERE job_pk = ?1)",
                    )
                    .bind(pk)
                    .fetch_one(&mut *conn)
                    .await?;
                    let mut room = if already_capped { 0 } else { MAX_LOG_BYTES_PER_JOB - used };
                    let (mut seq, mut stored, mut bytes, mut refused) = (last_seq, 0u32, 0i64, 0i64);
                    for r in records {
                        let size = r.message.len() as i64;
                        // The first record that does not fit closes the log: later, smaller
                        // ones must not land after a gap.
                        if refused > 0 || size > room {
                            refused += 1;
                            continue;
                        }
                        seq += 1;
                        insert(conn, pk, seq, a, &r).await?;
                        (room, stored, bytes) = (room - size, stored + 1, bytes + size);
                    }
                    let capped = already_capped || refused > 0;
                    if refused > 0 && !already_capped {
                        // One marker, so a reader sees where the record stops being complete.
                        seq += 1;
                        let marker = NewRecord {
                            at: now,
                            level: "WARN".into(),
                            target: CAP_TARGET.into(),
                            message: format!(
                                "this job's log reached its cap of {} MiB; later records are counted, not stored",
                                MAX_LOG_BYTES_PER_JOB >> 20
                            ),
                        };
                        insert(conn, pk, seq, a, &marker).await?;
                        sqlx::query("UPDATE jobs SET log_capped = 1 WHERE pk = ?1").bind(pk).execute(&mut *conn).await?;
                    }
                    sqlx::query(
                        "UPDATE attempts SET log_bytes = log_bytes + ?3, log_records = log_records + ?4, \
                         logs_dropped = logs_dropped + ?5 WHERE job_pk = ?1 AND attempt = ?2",
                    )
                    .bind(pk)
                    .bind(a)
                    .bind(bytes)
                    .bind(i64::from(stored))
                    .bind(refused + dropped as i64)
                    .execute(&mut *conn)
                    .await?;
                    Ok(Shipped { stored, capped })
                })
            })
            .await
    }

    /// At most `limit` records of a job after `after` (a seq), oldest first; only `attempt`'s
    /// when given.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown job.
    pub(crate) async fn list_logs(
        &self,
        job_id: &str,
        attempt: Option<u32>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogRow>> {
        let pk = self.job_pk(job_id).await?;
        Ok(sqlx::query_as(
            "SELECT seq, attempt, at, level, target, message FROM job_logs \
             WHERE job_pk = ?1 AND seq > ?2 AND (?3 IS NULL OR attempt = ?3) ORDER BY seq LIMIT ?4",
        )
        .bind(pk)
        .bind(after)
        .bind(attempt.map(i64::from))
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await?)
    }
}

/// The target of the cap marker record.
const CAP_TARGET: &str = "lorasweep::coordinator";

async fn insert(conn: &mut sqlx::SqliteConnection, pk: i64, seq: i64, attempt: i64, r: &NewRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_logs (job_pk, seq, attempt, at, level, target, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(pk)
    .bind(seq)
    .bind(attempt)
    .bind(r.at)
    .bind(&r.level)
    .bind(&r.target)
    .bind(&r.message)
    .execute(conn)
    .await?;
    Ok(())
}
