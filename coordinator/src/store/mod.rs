//! Persistence: every SQL statement of the coordinator, behind [`Store`].
//!
//! Writes go through the single [`writer::Writer`] task; reads use a small pool of their own
//! connections (WAL lets them run beside the writer and see only committed data).
//!
//! # Layout
//! - [`writer`]: the writer task that batches operations into transactions.
//! - [`sweeps`]: submit, read, cancel and retry sweeps.
//! - [`jobs`]: leases (lease, heartbeat, complete, fail, reap) and job listings.
//! - [`points`]: loss points in, curves out.
//! - [`workers`]: worker registration and listing.
//! - [`artifacts`]: artifact rows (checkpoints, adapters; the files are `grpc::artifacts`').
//! - [`attempts`]: one job whole, with every attempt.
//! - [`events`]: the event log's read side.
//! - [`logs`]: workers' job logs in (capped) and out.
//! - [`failfast`]: pausing a sweep whose jobs all fail the same way, and resuming it.

pub(crate) mod artifacts;
pub(crate) mod attempts;
pub(crate) mod events;
pub(crate) mod failfast;
pub(crate) mod jobs;
pub(crate) mod logs;
pub(crate) mod points;
pub(crate) mod sweeps;
pub(crate) mod workers;
pub(crate) mod writer;

use std::{path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::{
    clock::Clock,
    error::{Error, Result},
};
use lorasweep_common::JobState;
use writer::Writer;

/// The database file inside the data directory.
pub const DB_FILE: &str = "coordinator.db";

/// Migrations, embedded at compile time (build.rs reruns when they change).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Read connections: enough for a few concurrent `status`/curve readers on a small machine.
const READ_CONNECTIONS: u32 = 4;

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// fsync the WAL on every commit: acknowledged writes survive power loss.
    Full,
    /// No fsync per commit: acknowledged writes survive a process crash, not an OS crash.
    Normal,
}

/// What [`Store::open`] needs: where the database lives and the rules it enforces.
#[derive(Debug, Clone)]
pub(crate) struct StoreOptions {
    /// Directory of the SQLite database (created if missing).
    pub(crate) data_dir: PathBuf,
    /// SQLite durability of a commit.
    pub(crate) durability: Durability,
    /// Where "now" comes from.
    pub(crate) clock: Arc<dyn Clock>,
    /// A lease lives this long past its last heartbeat.
    pub(crate) lease_ttl: Duration,
    /// Failed or expired attempts after which a job is marked failed.
    pub(crate) max_attempts: u32,
}

/// Handle to the coordinator's database; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    writer: Writer,
    reads: SqlitePool,
    changes: watch::Receiver<u64>,
    clock: Arc<dyn Clock>,
    lease_ttl_ms: i64,
    max_attempts: u32,
}

impl Store {
    /// Opens (creating if needed) the database in `options.data_dir`, applies migrations, gives
    /// running leases one TTL of grace (their workers could not heartbeat while we were down) and
    /// starts the writer on `tracker`. The writer stops once every clone of the store is dropped.
    pub(crate) async fn open(options: &StoreOptions, tracker: &TaskTracker) -> Result<Store> {
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|source| Error::DataDir { path: options.data_dir.clone(), source })?;
        let path = options.data_dir.join(DB_FILE);
        // WAL: readers never block the writer. synchronous=FULL (the default): every COMMIT fsyncs
        // the WAL, so an acknowledged write survives power loss too; NORMAL survives kill -9 (the
        // WAL is in the OS page cache) but may lose the last commits on an OS crash. The writer's
        // batching keeps the fsync rate low either way.
        let sqlite = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let reads = SqlitePoolOptions::new().max_connections(READ_CONNECTIONS).connect_with(sqlite.clone()).await?;
        // Through the pool: `Migrator::run` on a `&mut SqliteConnection` makes this future
        // not `Send` for every lifetime (a known sqlx limitation), which `tokio::spawn` needs.
        MIGRATOR.run(&reads).await?;
        let mut conn = <SqliteConnection as sqlx::Connection>::connect_with(&sqlite).await?;
        let now = options.clock.now_ms();
        let ttl = options.lease_ttl.as_millis() as i64;
        let graced =
            sqlx::query("UPDATE jobs SET lease_expires_at = max(lease_expires_at, ?1) WHERE state = 'running'")
                .bind(now + ttl)
                .execute(&mut conn)
                .await?
                .rows_affected();
        info!(db = %path.display(), running_leases = graced, "database open");
        let (changes_tx, changes) = watch::channel(0);
        Ok(Store {
            writer: Writer::spawn(conn, changes_tx, tracker),
            reads,
            changes,
            clock: options.clock.clone(),
            lease_ttl_ms: ttl,
            max_attempts: options.max_attempts,
        })
    }

    /// Closes the read pool (the writer closes when the last clone is dropped).
    pub(crate) async fn close_reads(&self) {
        self.reads.close().await;
    }

    /// A receiver that changes after every committed write batch.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The current time from the configured clock.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// Decodes a stored state name.
fn state_of(name: &str) -> Result<JobState> {
    JobState::from_str(name).map_err(|_| Error::Corrupt(format!("unknown job state {name:?} in the database")))
}

/// The attempt an event concerns: `(job id, attempt, worker id)`.
pub(crate) type EventJob<'a> = (&'a str, i64, &'a str);

/// Inserts one row of the event log; `job` is `None` for a sweep-level event.
async fn event(
    conn: &mut SqliteConnection,
    at: i64,
    sweep_id: &str,
    job: Option<EventJob<'_>>,
    kind: &str,
    detail: &str,
) -> Result<()> {
    let (job_id, attempt, worker_id) = match job {
        Some((j, a, w)) => (Some(j), a, w),
        None => (None, 0, ""),
    };
    sqlx::query(
        "INSERT INTO events (at, sweep_id, job_id, kind, detail, attempt, worker_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(at)
    .bind(sweep_id)
    .bind(job_id)
    .bind(kind)
    .bind(detail)
    .bind(attempt)
    .bind(worker_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Closes an attempt's row: how it ended and why.
async fn end_attempt(
    conn: &mut SqliteConnection,
    job_pk: i64,
    attempt: i64,
    at: i64,
    outcome: &str,
    error: &str,
    error_kind: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE attempts SET ended_at = ?3, outcome = ?4, error = ?5, error_kind = ?6          WHERE job_pk = ?1 AND attempt = ?2",
    )
    .bind(job_pk)
    .bind(attempt)
    .bind(at)
    .bind(outcome)
    .bind(error)
    .bind(error_kind)
    .execute(conn)
    .await?;
    Ok(())
}
