//! Worker daemons: registration, liveness (`last_seen`) and listing.

use sqlx::{FromRow, SqliteConnection};

use super::Store;
use crate::error::{Error, Result};

/// A registered worker and the job it holds.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct WorkerRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) device: String,
    pub(crate) trainer: String,
    pub(crate) visible_devices: String,
    pub(crate) cpu_threads: i64,
    pub(crate) gpu_memory_bytes: i64,
    pub(crate) gpu_name: String,
    pub(crate) last_seen: i64,
    /// A running job leased to it, if any.
    pub(crate) job_id: Option<String>,
}

/// Marks a worker as seen now.
///
/// # Errors
/// [`Error::NotFound`] for an unregistered worker.
pub(crate) async fn touch(conn: &mut SqliteConnection, worker_id: &str, now: i64) -> Result<()> {
    let n = sqlx::query("UPDATE workers SET last_seen = ?2 WHERE id = ?1")
        .bind(worker_id)
        .bind(now)
        .execute(conn)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(Error::NotFound(format!("no worker with id {worker_id:?}; call RegisterWorker first")));
    }
    Ok(())
}

/// A worker as it describes itself at registration (validated by the caller).
#[derive(Debug, Clone)]
pub(crate) struct NewWorker {
    pub(crate) name: String,
    pub(crate) device: String,
    pub(crate) trainer: String,
    /// CUDA_VISIBLE_DEVICES as it saw it.
    pub(crate) visible_devices: String,
    pub(crate) cpu_threads: u32,
    pub(crate) gpu_memory_bytes: u64,
    pub(crate) gpu_name: String,
}

impl Store {
    /// Registers a worker; returns its new id.
    pub(crate) async fn register_worker(&self, w: NewWorker) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = self.now();
        let worker_id = id.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO workers (id, name, device, trainer, created_at, last_seen, visible_devices, cpu_threads, \
                         gpu_memory_bytes, gpu_name) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .bind(&worker_id)
                    .bind(&w.name)
                    .bind(&w.device)
                    .bind(&w.trainer)
                    .bind(now)
                    .bind(&w.visible_devices)
                    .bind(i64::from(w.cpu_threads))
                    .bind(i64::try_from(w.gpu_memory_bytes).unwrap_or(i64::MAX))
                    .bind(&w.gpu_name)
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            })
            .await?;
        Ok(id)
    }

    /// All workers, most recently seen first, with `alive` = seen within the lease TTL.
    pub(crate) async fn list_workers(&self) -> Result<Vec<(WorkerRow, bool)>> {
        let rows: Vec<WorkerRow> = sqlx::query_as(
            "SELECT w.id, w.name, w.device, w.trainer, w.visible_devices, w.cpu_threads, w.gpu_memory_bytes, w.gpu_name, w.last_seen, \
             (SELECT j.id FROM jobs j WHERE j.worker_id = w.id AND j.state = 'running' ORDER BY j.pk LIMIT 1) AS job_id \
             FROM workers w ORDER BY w.last_seen DESC, w.rowid DESC",
        )
        .fetch_all(&self.reads)
        .await?;
        let now = self.now();
        Ok(rows
            .into_iter()
            .map(|w| {
                let alive = now - w.last_seen < self.lease_ttl_ms;
                (w, alive)
            })
            .collect())
    }
}
