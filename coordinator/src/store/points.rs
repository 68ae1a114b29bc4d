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

/// A piece of one series of a job's curve, in step order.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct CurvePiece {
    pub(crate) steps: Vec<u64>,
    pub(crate) losses: Vec<f64>,
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

    /// The internal key of a job, for [`Store::curve_piece`].
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown job.
    pub(crate) async fn job_pk(&self, job_id: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT pk FROM jobs WHERE id = ?1")
            .bind(job_id)
            .fetch_optional(&self.reads)
            .await?
            .ok_or_else(|| unknown_job(job_id))
    }

    /// At most `limit` points of one series of a job's curve with step > `after` (all steps
    /// when `None`), in step order. `job_id` only names the job in errors.
    pub(crate) async fn curve_piece(
        &self,
        job_pk: i64,
        job_id: &str,
        series: Series,
        after: Option<u64>,
        limit: u32,
    ) -> Result<CurvePiece> {
        // The piece aggregated inside SQLite: decoding rows one by one through sqlx costs ~1 µs
        // each (several times that on a loaded machine), while one text row of integers parses
        // in a few ms. Losses travel as their exact bit patterns. The subquery (ORDER BY with
        // LIMIT) is a range scan of the primary key, and the aggregate sees its rows in that
        // order. SQLite does not promise that order without an ORDER BY inside group_concat,
        // which costs a sort per aggregate (a third of the read of a 1M-point curve), so the
        // order is checked below and restored if it ever differs.
        let row: (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT group_concat(step, ','), group_concat(bits, ',') FROM ( \
               SELECT step, bits FROM loss_points WHERE job_pk = ?1 AND series = ?2 AND step > ?3 \
               ORDER BY step LIMIT ?4)",
        )
        .bind(job_pk)
        .bind(series.name())
        .bind(after.map_or(-1, |a| a as i64))
        .bind(i64::from(limit))
        .fetch_one(&self.reads)
        .await?;
        let (Some(steps), Some(losses)) = row else { return Ok(CurvePiece::default()) };
        let mut piece = CurvePiece {
            steps: steps
                .split(',')
                .map(|s| s.parse::<u64>().map_err(|e| corrupt(job_id, s, e)))
                .collect::<Result<_>>()?,
            losses: losses
                .split(',')
                .map(|s| s.parse::<i64>().map(|bits| f64::from_bits(bits as u64)).map_err(|e| corrupt(job_id, s, e)))
                .collect::<Result<_>>()?,
        };
        if piece.steps.len() != piece.losses.len() {
            return Err(crate::Error::Corrupt(format!("curve of job {job_id}: steps and losses differ in length")));
        }
        if !piece.steps.is_sorted() {
            let mut pairs: Vec<(u64, f64)> = piece.steps.into_iter().zip(piece.losses).collect();
            pairs.sort_by_key(|(step, _)| *step);
            (piece.steps, piece.losses) = pairs.into_iter().unzip();
        }
        Ok(piece)
    }
}
