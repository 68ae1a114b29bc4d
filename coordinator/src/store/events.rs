//! The event log's read side: a sweep's events (its own and its jobs') or one job's, oldest
//! first, after a position (the event id), a page at a time.

use sqlx::FromRow;

use super::{Store, state_of};
use crate::error::{Error, Result};

/// Whose events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A sweep and all its jobs.
    Sweep(String),
    /// One job.
    Job(String),
}

/// One stored event with its worker's name.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct EventRow {
    pub(crate) id: i64,
    pub(crate) at: i64,
    pub(crate) sweep_id: String,
    pub(crate) job_id: Option<String>,
    pub(crate) kind: String,
    pub(crate) detail: String,
    pub(crate) attempt: i64,
    pub(crate) worker_id: String,
    pub(crate) worker_name: Option<String>,
}

impl Store {
    /// Whether `id` names a sweep or a job.
    ///
    /// # Errors
    /// [`Error::NotFound`] when it names neither.
    pub(crate) async fn scope_of(&self, id: &str) -> Result<Scope> {
        let sweep: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sweeps WHERE id = ?1").bind(id).fetch_optional(&self.reads).await?;
        if sweep.is_some() {
            return Ok(Scope::Sweep(id.to_string()));
        }
        let job: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ?1").bind(id).fetch_optional(&self.reads).await?;
        match job {
            Some(_) => Ok(Scope::Job(id.to_string())),
            None => Err(Error::NotFound(format!("no sweep or job with id {id:?}"))),
        }
    }

    /// At most `limit` events of `scope` with id > `after`, oldest first.
    pub(crate) async fn list_events(&self, scope: &Scope, after: i64, limit: u32) -> Result<Vec<EventRow>> {
        let (column, id) = match scope {
            Scope::Sweep(id) => ("sweep_id", id),
            Scope::Job(id) => ("job_id", id),
        };
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT e.id, e.at, e.sweep_id, e.job_id, e.kind, e.detail, e.attempt, e.worker_id, w.name AS worker_name \
             FROM events e LEFT JOIN workers w ON w.id = e.worker_id AND e.worker_id != '' \
             WHERE e.{column} = ?1 AND e.id > ?2 ORDER BY e.id LIMIT ?3"
        )))
        .bind(id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await?;
        Ok(rows)
    }

    /// True while the scope can still produce events of its own accord: a sweep with queued or
    /// running jobs, or a queued or running job. (A user can always cancel or retry.)
    pub(crate) async fn scope_active(&self, scope: &Scope) -> Result<bool> {
        match scope {
            Scope::Sweep(id) => {
                let active: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM jobs WHERE sweep_id = ?1 AND state IN ('queued', 'running') LIMIT 1",
                )
                .bind(id)
                .fetch_optional(&self.reads)
                .await?;
                Ok(active.is_some())
            }
            Scope::Job(id) => {
                let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
                    .bind(id)
                    .fetch_optional(&self.reads)
                    .await?
                    .ok_or_else(|| super::jobs::unknown_job(id))?;
                Ok(state_of(&state)?.is_active())
            }
        }
    }
}
