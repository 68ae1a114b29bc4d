//! The single writer: one task owns the only read-write SQLite connection and runs every write
//! the coordinator makes, so SQLite never sees two writers and "database is locked" cannot
//! happen. Writes arrive as boxed operations over a bounded mpsc; the task drains whatever is
//! queued into one transaction, commits once, and only then answers every caller. With
//! `synchronous=FULL` that one fsync covers the whole batch, which is what makes 50k points/s
//! affordable while keeping "acknowledged means durable".
//!
//! The contract that keeps batching safe without a SAVEPOINT per operation (which cost two extra
//! statements per call, ~40% of a lease's): an operation does all its checks before its first
//! write, so a *refusal* ([`Error::is_refusal`]: stale lease, unknown id, …) has written nothing
//! and its neighbours commit unharmed. Any other error (the database failed mid-operation) rolls
//! the whole batch back and every caller in it gets the error; nothing of it is stored, and
//! retrying is safe because every write is idempotent or fenced.

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
    /// Runs against the connection; returns the error that must abort the batch (`None` for
    /// success or a refusal) and how to answer the caller once the commit outcome is known.
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, (Option<String>, Reply)>;
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
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, (Option<String>, Reply)> {
        let Op { f, reply } = *self;
        Box::pin(async move {
            let result = f(conn).await;
            let broken = match &result {
                Err(e) if !e.is_refusal() => Some(e.to_string()),
                _ => None,
            };
            let answer: Reply = Box::new(move |commit| {
                let answer = match commit {
                    Ok(()) => result,
                    Err(message) => Err(Error::Commit(message)),
                };
                // The caller may have gone away (client cancelled); the write stands anyway.
                let _ = reply.send(answer);
            });
            (broken, answer)
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

    /// Runs `f` in the writer's transaction and returns its result once committed. `f` must do
    /// every check that can refuse the call before its first write (see the module docs).
    ///
    /// # Errors
    /// Whatever `f` returns; [`Error::Commit`] if the batch failed (nothing of `f` is stored);
    /// [`Error::ShuttingDown`] if the writer is gone.
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
            Ok(()) => sqlx::query("COMMIT").execute(&mut conn).await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(()) => Ok(()),
            Err(e) => {
                error!(cause = %e, calls = replies.len() + batch.len(), "write batch failed; nothing of it is stored");
                // SQLite may still hold the transaction open; without this the next BEGIN fails.
                let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                Err(e)
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

/// Runs the batch inside `BEGIN IMMEDIATE`, taking operations out of `batch` as they run; on
/// error the ones left in `batch` never ran and the caller rolls back.
async fn run_batch(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Box<dyn WriteOp>>,
    replies: &mut Vec<Reply>,
) -> std::result::Result<(), String> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.map_err(|e| e.to_string())?;
    batch.reverse();
    while let Some(op) = batch.pop() {
        let (broken, reply) = op.run(&mut *conn).await;
        replies.push(reply);
        if let Some(cause) = broken {
            return Err(cause);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn writer() -> (Writer, watch::Receiver<u64>, tokio_util::task::TaskTracker) {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.expect("in-memory database");
        sqlx::query("CREATE TABLE t (x INTEGER NOT NULL)").execute(&mut conn).await.expect("table");
        let (changes_tx, changes) = watch::channel(0);
        let tracker = tokio_util::task::TaskTracker::new();
        (Writer::spawn(conn, changes_tx, &tracker), changes, tracker)
    }

    fn insert(w: &Writer, x: i64) -> impl Future<Output = Result<()>> + '_ {
        w.write(move |c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO t (x) VALUES (?1)").bind(x).execute(c).await?;
                Ok(())
            })
        })
    }

    fn rows(w: &Writer) -> impl Future<Output = Result<Vec<i64>>> + '_ {
        w.write(|c| Box::pin(async move { Ok(sqlx::query_scalar("SELECT x FROM t ORDER BY x").fetch_all(c).await?) }))
    }

    /// On the current-thread test runtime, `join!` queues all three calls before the writer
    /// runs, so they share one batch.
    #[tokio::test]
    async fn a_refusal_does_not_disturb_its_batch() {
        let (w, changes, _tracker) = writer().await;
        let refused = w.write(|_| Box::pin(async { Err::<(), _>(Error::NotFound("no such thing".into())) }));
        let (a, b, c) = tokio::join!(insert(&w, 1), refused, insert(&w, 2));
        assert!(a.is_ok() && c.is_ok());
        assert!(matches!(b, Err(Error::NotFound(_))), "{b:?}");
        assert_eq!(rows(&w).await.expect("read"), vec![1, 2]);
        assert!(changes.has_changed().expect("writer alive"), "watchers are told");
    }

    #[tokio::test]
    async fn a_broken_operation_rolls_back_its_whole_batch() {
        let (w, _changes, _tracker) = writer().await;
        let broken = w.write(|c| {
            Box::pin(async move {
                sqlx::query("INSERT INTO t (x) VALUES (3)").execute(&mut *c).await?;
                sqlx::query("INSERT INTO t (x) VALUES (NULL)").execute(c).await?; // NOT NULL fails
                Ok(())
            })
        });
        let (a, b, c) = tokio::join!(insert(&w, 1), broken, insert(&w, 2));
        for result in [&a, &b, &c] {
            assert!(matches!(result, Err(Error::Commit(m)) if m.contains("NOT NULL")), "{result:?}");
        }
        assert_eq!(rows(&w).await.expect("read"), Vec::<i64>::new(), "nothing of the batch is stored");
        insert(&w, 4).await.expect("the writer carries on");
        assert_eq!(rows(&w).await.expect("read"), vec![4]);
    }
}
