//! Fail-fast: a sweep whose jobs fail with a non-retryable error before any succeeds (a wrong
//! model path fails every job within milliseconds) is paused after its `fail_fast` such
//! failures, so the other jobs are not burnt on the same error; `ResumeSweep` lifts the pause
//! once the cause is fixed. Failures that another attempt may fix (a lost worker, an I/O error)
//! never count.

use sqlx::SqliteConnection;
use tracing::warn;

use super::{Store, event, sweeps::sweep_exists};
use crate::error::{Error, Result};

/// Pauses `sweep_id` if it now has `fail_fast` fatal failures and no success. Called in the
/// transaction of the failure that may tip it, with that failure's error (quoted in the reason).
pub(crate) async fn check(conn: &mut SqliteConnection, now: i64, sweep_id: &str, error: &str) -> Result<()> {
    let (fail_fast, paused_at, fatal, succeeded): (i64, i64, i64, bool) = sqlx::query_as(
        "SELECT s.fail_fast, s.paused_at, \
           (SELECT COUNT(*) FROM jobs j WHERE j.sweep_id = s.id AND j.state = 'failed' AND j.error_kind = 'fatal'), \
           EXISTS (SELECT 1 FROM jobs j WHERE j.sweep_id = s.id AND j.state = 'succeeded') \
         FROM sweeps s WHERE s.id = ?1",
    )
    .bind(sweep_id)
    .fetch_one(&mut *conn)
    .await?;
    if fail_fast == 0 || paused_at != 0 || succeeded || fatal < fail_fast {
        return Ok(());
    }
    let reason = format!(
        "{fatal} jobs failed with a non-retryable error and none has succeeded (fail_fast = {fail_fast}); \
         the last error: {}. Fix the cause, then run `lorasweep resume {sweep_id}`",
        shorten(error, 500)
    );
    sqlx::query("UPDATE sweeps SET paused_at = ?2, pause_reason = ?3 WHERE id = ?1")
        .bind(sweep_id)
        .bind(now)
        .bind(&reason)
        .execute(&mut *conn)
        .await?;
    event(conn, now, sweep_id, None, "paused", &reason).await?;
    warn!(sweep_id, fatal, fail_fast, "sweep paused by fail-fast");
    Ok(())
}

/// At most `max` bytes of `text` (cut at a character boundary), with an ellipsis if cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl Store {
    /// Lifts a fail-fast pause: requeues the sweep's jobs that failed with a non-retryable error
    /// (fresh failure budget) and lets the lease see the sweep again. `who` is recorded in the
    /// event. Returns how many jobs were requeued.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown sweep; [`Error::WrongState`] if it is not paused
    /// (nothing is changed).
    pub(crate) async fn resume_sweep(&self, sweep_id: String, who: String) -> Result<u32> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sweep_exists(conn, &sweep_id).await?;
                    let paused: i64 = sqlx::query_scalar("SELECT paused_at FROM sweeps WHERE id = ?1")
                        .bind(&sweep_id)
                        .fetch_one(&mut *conn)
                        .await?;
                    if paused == 0 {
                        return Err(Error::WrongState(format!(
                            "sweep {sweep_id} is not paused; nothing to resume (`lorasweep retry {sweep_id}` requeues \
                             its failed and cancelled jobs)"
                        )));
                    }
                    sqlx::query("UPDATE sweeps SET paused_at = 0, pause_reason = '' WHERE id = ?1")
                        .bind(&sweep_id)
                        .execute(&mut *conn)
                        .await?;
                    let n = sqlx::query(
                        "UPDATE jobs SET state = 'queued', failures = 0, error = '', error_kind = '', \
                         lease_expires_at = 0, updated_at = ?2 \
                         WHERE sweep_id = ?1 AND state = 'failed' AND error_kind = 'fatal'",
                    )
                    .bind(&sweep_id)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected() as u32;
                    let detail = format!("resumed by {who}; {n} failed jobs requeued");
                    event(conn, now, &sweep_id, None, "sweep-resumed", &detail).await?;
                    Ok(n)
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn shorten_cuts_at_a_character_boundary() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("aé", 2), "a…", "é is two bytes: the cut moves back");
    }
}
