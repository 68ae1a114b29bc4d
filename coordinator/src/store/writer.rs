//! The single writer: one task owns the only read-write SQLite connection and runs every write
//! the coordinator makes, so SQLite never sees two writers and "database is locked" cannot
//! happen. Writes arrive as boxed operations over a bounded mpsc; the task drains whatever is
//! queued into one transaction (each operation inside its own SAVEPOINT, so one refused call
//! does not undo its neighbours), commits once, and only then answers every caller. With
//! `synchronous=FULL` that one fsync covers the whole batch, which is what makes 50k points/s
//! affordable while keeping "acknowledged means durable".

use std::{future::Future, pin::Pin};

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::error::{Error, Result};

/// A boxed, sendable future borrowing the writer's connection.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends an operation's outcome to its caller once the batch's commit outcome is known.
type Reply = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

/// One queued write.
trait WriteOp: Send {
    /// Runs against the connection (inside a savepoint); says whether it succeeded (false rolls
    /// its savepoint back) and returns how to answer the caller once the commit outcome is known.
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, (bool, Reply)>;
    /// Answers the caller with an error without running.
    fn abort(self: Box<Self>, message: String);
}

/// A write closure and the caller waiting for its result.
struct Op<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
{
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, (bool, Reply)> {
        let Op { f, reply } = *self;
        Box::pin(async move {
            let result = f(conn).await;
            let ok = result.is_ok();
            let answer: Reply = Box::new(move |commit| {
                let answer = match commit {
                    Ok(()) => result,
                    Err(message) => Err(Error::Commit(message)),
                };
                // The caller may have gone away (client cancelled); the write stands anyway.
                let _ = reply.send(answer);
            });
            (ok, answer)
        })
    }

    fn abort(self: Box<Self>, message: String) {
        let _ = self.reply.send(Err(Error::Commit(message)));
    }
}

/// How many operations at most go into one transaction. Large enough to amortise the fsync,
/// small enough that one batch never holds callers for long.
const MAX_BATCH: usize = 512;

/// Capacity of the operation queue; callers wait (backpressure) when it is full.
const QUEUE: usize = 1024;

/// A handle for submitting writes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn WriteOp>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("queued", &(QUEUE - self.tx.capacity())).finish()
    }
}

impl Writer {
    /// Starts the writer task on `conn`. It runs until every [`Writer`] handle is dropped, then
    /// finishes the batch at hand and closes the connection. `changes` is bumped after every
    /// batch so watchers re-read.
    pub(crate) fn spawn(
        conn: SqliteConnection,
        changes: watch::Sender<u64>,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(run(conn, rx, changes));
        Writer { tx }
    }

    /// Runs `f` in the writer's transaction and returns its result once committed.
    ///
    /// # Errors
    /// Whatever `f` returns (its writes are rolled back then); [`Error::Commit`] if the batch
    /// failed to commit (nothing of `f` is stored); [`Error::ShuttingDown`] if the writer is gone.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Box::new(Op { f, reply })).await.map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }
}

async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Box<dyn WriteOp>>, changes: watch::Sender<u64>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut replies = Vec::with_capacity(batch.len());
        let outcome = match run_batch(&mut conn, &mut batch, &mut replies).await {
            Ok(()) => sqlx::query("COMMIT").execute(&mut conn).await.map(|_| ()),
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(()) => Ok(()),
            Err(e) => {
                error!(cause = %e, calls = replies.len() + batch.len(), "write batch failed; nothing of it is stored");
                // SQLite may still hold the transaction open; without this the next BEGIN fails.
                let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                Err(e.to_string())
            }
        };
        for op in batch.drain(..) {
            op.abort(outcome.clone().err().unwrap_or_else(|| "not run".into()));
        }
        for reply in replies {
            reply(outcome.clone());
        }
        changes.send_modify(|version| *version = version.wrapping_add(1));
    }
    if let Err(e) = conn.close().await {
        warn!(cause = %e, "closing the writer connection failed");
    }
}

/// Runs the batch inside `BEGIN IMMEDIATE`, one savepoint per operation, taking operations out
/// of `batch` as they run; on error the ones left in `batch` never ran.
async fn run_batch(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Box<dyn WriteOp>>,
    replies: &mut Vec<Reply>,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    batch.reverse();
    while let Some(op) = batch.pop() {
        sqlx::query("SAVEPOINT op").execute(&mut *conn).await?;
        let (ok, reply) = op.run(&mut *conn).await;
        replies.push(reply);
        if !ok {
            sqlx::query("ROLLBACK TO op").execute(&mut *conn).await?;
        }
        sqlx::query("RELEASE op").execute(&mut *conn).await?;
    }
    Ok(())
}
