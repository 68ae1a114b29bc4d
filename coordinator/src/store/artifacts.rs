//! Artifact rows: which verified files a job has (checkpoints, final adapter). The files
//! themselves are written and read by `grpc::artifacts`; a row is inserted only after its file
//! is complete and its SHA-256 checked, so every row names a whole file.

use sqlx::FromRow;

use super::{Store, event, jobs::check_lease, jobs::unknown_job};
use crate::error::Result;

/// Checkpoints kept per job: the newest few, so a corrupt latest one still has a fallback while
/// a long run's disk use stays bounded.
pub(crate) const KEEP_CHECKPOINTS: i64 = 3;

/// One stored artifact.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct ArtifactRow {
    pub(crate) job_id: String,
    pub(crate) kind: String,
    pub(crate) step: i64,
    pub(crate) attempt: i64,
    pub(crate) size: i64,
    pub(crate) sha256: String,
    /// File name inside the job's artifact directory.
    pub(crate) file: String,
    pub(crate) created_at: i64,
}

/// An artifact about to be recorded.
#[derive(Debug, Clone)]
pub(crate) struct NewArtifact {
    pub(crate) worker_id: String,
    pub(crate) job_id: String,
    pub(crate) attempt: u32,
    pub(crate) kind: &'static str,
    pub(crate) step: u64,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) file: String,
}

impl Store {
    /// Checks that `(job_id, attempt)` is a live lease of `worker_id`, before an upload's bytes
    /// are received (the insert checks again).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`], [`crate::Error::StaleLease`] or [`crate::Error::WrongState`].
    pub(crate) async fn check_live(&self, worker_id: &str, job_id: &str, attempt: u32) -> Result<()> {
        let mut conn = self.reads.acquire().await?;
        check_lease(&mut conn, self.now(), job_id, attempt, Some(worker_id), false).await?;
        Ok(())
    }

    /// Records a verified artifact file of a live attempt, replacing the row of the same
    /// `(kind, step)`, and drops checkpoint rows beyond the newest [`KEEP_CHECKPOINTS`]. Returns
    /// the stored row and the file names no row references any more (for the caller to delete).
    ///
    /// # Errors
    /// As [`Store::check_live`] (nothing is recorded then).
    pub(crate) async fn insert_artifact(&self, new: NewArtifact) -> Result<(ArtifactRow, Vec<String>)> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let (job, _) = check_lease(conn, now, &new.job_id, new.attempt, Some(&new.worker_id), false).await?;
                    let mut orphans: Vec<String> =
                        sqlx::query_scalar("SELECT file FROM artifacts WHERE job_pk = ?1 AND kind = ?2 AND step = ?3")
                            .bind(job.pk)
                            .bind(new.kind)
                            .bind(new.step as i64)
                            .fetch_all(&mut *conn)
                            .await?;
                    sqlx::query(
                        "INSERT OR REPLACE INTO artifacts (job_pk, kind, step, attempt, size, sha256, file, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .bind(job.pk)
                    .bind(new.kind)
                    .bind(new.step as i64)
                    .bind(i64::from(new.attempt))
                    .bind(new.size as i64)
                    .bind(&new.sha256)
                    .bind(&new.file)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    if new.kind == "checkpoint" {
                        let old: Vec<(i64, String)> = sqlx::query_as(
                            "SELECT step, file FROM artifacts WHERE job_pk = ?1 AND kind = 'checkpoint' \
                             ORDER BY step DESC LIMIT -1 OFFSET ?2",
                        )
                        .bind(job.pk)
                        .bind(KEEP_CHECKPOINTS)
                        .fetch_all(&mut *conn)
                        .await?;
                        for (step, file) in old {
                            sqlx::query("DELETE FROM artifacts WHERE job_pk = ?1 AND kind = 'checkpoint' AND step = ?2")
                                .bind(job.pk)
                                .bind(step)
                                .execute(&mut *conn)
                                .await?;
                            orphans.push(file);
                        }
                    }
                    orphans.retain(|f| *f != new.file);
                    let row = ArtifactRow {
                        job_id: new.job_id,
                        kind: new.kind.to_string(),
                        step: new.step as i64,
                        attempt: i64::from(new.attempt),
                        size: new.size as i64,
                        sha256: new.sha256,
                        file: new.file,
                        created_at: now,
                    };
                    Ok((row, orphans))
                })
            })
            .await
    }

    /// A job's artifacts (of `kind`, if given), newest step first, adapters before checkpoints.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown job.
    pub(crate) async fn list_artifacts(&self, job_id: &str, kind: Option<&str>) -> Result<Vec<ArtifactRow>> {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT pk FROM jobs WHERE id = ?1").bind(job_id).fetch_optional(&self.reads).await?;
        if exists.is_none() {
            return Err(unknown_job(job_id));
        }
        Ok(sqlx::query_as(
            "SELECT j.id AS job_id, a.kind, a.step, a.attempt, a.size, a.sha256, a.file, a.created_at \
             FROM artifacts a JOIN jobs j ON j.pk = a.job_pk \
             WHERE j.id = ?1 AND (?2 IS NULL OR a.kind = ?2) ORDER BY a.step DESC, a.kind ASC",
        )
        .bind(job_id)
        .bind(kind)
        .fetch_all(&self.reads)
        .await?)
    }

    /// Adds a `warning` event for a live attempt.
    ///
    /// # Errors
    /// As [`Store::check_live`].
    pub(crate) async fn job_warning(
        &self,
        worker_id: String,
        job_id: String,
        attempt: u32,
        message: String,
    ) -> Result<()> {
        let now = self.now();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let (job, _) = check_lease(conn, now, &job_id, attempt, Some(&worker_id), false).await?;
                    let at = (job_id.as_str(), i64::from(attempt), worker_id.as_str());
                    event(conn, now, &job.sweep_id, Some(at), "warning", &message).await
                })
            })
            .await
    }

    /// How many artifacts are stored and their total bytes (for the metrics endpoint).
    pub(crate) async fn artifact_totals(&self) -> Result<(i64, i64)> {
        Ok(sqlx::query_as("SELECT count(*), coalesce(sum(size), 0) FROM artifacts").fetch_one(&self.reads).await?)
    }
}
