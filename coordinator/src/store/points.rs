//! Loss points: idempotent inserts keyed by (job, series, step), and whole-curve reads.

use std::sync::OnceLock;

use lorasweep_common::{LossPoint, Series};
use sqlx::SqliteConnection;

use super::{
    Store,
    jobs::{check_lease, unknown_job},
};
use crate::error::Result;

/// Largest multi-row INSERT: 256 rows × 5 parameters stays far below SQLite's 32766-variable
/// limit while cutting per-statement overhead 256-fold.
const CHUNK: usize = 256;

/// `INSERT … VALUES (…),(…) ON CONFLICT DO NOTHING` for 1, 2, 4, … 256 rows. Chunks are powers
/// of two so a connection caches at most nine prepared statements.
fn insert_sql(rows: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..=CHUNK.trailing_zeros())
            .map(|k| {
                let values = vec!["(?, ?, ?, ?, ?)"; 1 << k].join(", ");
                format!(
                    "INSERT INTO loss_points (job_pk, series, step, loss, bits) VALUES {values} ON CONFLICT DO NOTHING"
                )
            })
            .collect()
    });
    &all[rows.trailing_zeros() as usize]
}

/// Inserts points of one job; duplicates of stored points are ignored.
async fn insert(conn: &mut SqliteConnection, job_pk: i64, points: &[LossPoint]) -> Result<()> {
    let mut rest = points;
    while !rest.is_empty() {
        // The largest power of two ≤ min(len, CHUNK).
        let n = 1usize << rest.len().min(CHUNK).ilog2();
        let (chunk, tail) = rest.split_at(n);
        let mut query = sqlx::query(insert_sql(n));
        for p in chunk {
            // `loss` is for people (NaN binds as NULL); `bits` is the exact value GetCurve returns.
            query =
                query.bind(job_pk).bind(p.series.name()).bind(p.step as i64).bind(p.loss).bind(p.loss.to_bits() as i64);
        }
        query.execute(&mut *conn).await?;
        rest = tail;
    }
    Ok(())
}

fn corrupt(job_id: &str, value: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Corrupt(format!("loss point {value:?} of job {job_id}: {e}"))
}

/// A job's curves, in step order.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Curve {
    pub(crate) train_steps: Vec<u64>,
    pub(crate) train_losses: Vec<f64>,
    pub(crate) eval_steps: Vec<u64>,
    pub(crate) eval_losses: Vec<f64>,
}

impl Store {
    /// Stores points of the live attempt `(job_id, attempt)` and advances the job's progress.
    /// Points must have been validated (steps ≤ i64::MAX).
    ///
    /// # Errors
    /// [`crate::Error::StaleLease`]/[`crate::Error::WrongState`] if the attempt is not live: then
    /// nothing is stored.
    pub(crate) async fn report_points(&self, job_id: String, attempt: u32, points: Vec<LossPoint>) -> Result<()> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let (job, _) = check_lease(conn, now, &job_id, attempt, None, false).await?;
                    insert(conn, job.pk, &points).await?;
                    let last = points.iter().filter(|p| p.series == Series::Train).max_by_key(|p| p.step);
                    if let Some(last) = last {
                        sqlx::query(
                            "UPDATE jobs SET last_train_loss = CASE WHEN ?2 >= step THEN ?3 ELSE last_train_loss END, \
                             step = max(step, ?2), updated_at = ?4 WHERE pk = ?1",
                        )
                        .bind(job.pk)
                        .bind(last.step as i64)
                        .bind(last.loss)
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    /// A job's curves.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown job.
    pub(crate) async fn curve(&self, job_id: &str) -> Result<Curve> {
        let pk: i64 = sqlx::query_scalar("SELECT pk FROM jobs WHERE id = ?1")
            .bind(job_id)
            .fetch_optional(&self.reads)
            .await?
            .ok_or_else(|| unknown_job(job_id))?;
        // One row per series with the curve aggregated inside SQLite: decoding 100k rows one by
        // one through sqlx costs ~1 µs each (several times that on a loaded machine), while two
        // text rows of integers parse in a few ms. Losses travel as their exact bit patterns.
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT series, group_concat(step, ',' ORDER BY step), group_concat(bits, ',' ORDER BY step) \
             FROM loss_points WHERE job_pk = ?1 GROUP BY series",
        )
        .bind(pk)
        .fetch_all(&self.reads)
        .await?;
        let mut curve = Curve::default();
        for (series, steps, losses) in rows {
            let (step_out, loss_out) = if series == "train" {
                (&mut curve.train_steps, &mut curve.train_losses)
            } else {
                (&mut curve.eval_steps, &mut curve.eval_losses)
            };
            *step_out =
                steps.split(',').map(|s| s.parse::<u64>().map_err(|e| corrupt(job_id, s, e))).collect::<Result<_>>()?;
            *loss_out = losses
                .split(',')
                .map(|s| s.parse::<i64>().map(|bits| f64::from_bits(bits as u64)).map_err(|e| corrupt(job_id, s, e)))
                .collect::<Result<_>>()?;
        }
        Ok(curve)
    }
}
