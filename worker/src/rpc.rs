//! How the worker treats gRPC outcomes: which errors mean "this lease is gone", which are worth
//! retrying, and the capped exponential backoff used for retries and idle polling.

use std::{future::Future, time::Duration};

use tokio::time::Instant;
use tonic::{Code, Status};

/// The first wait of a backoff sequence: short, so an idle worker picks up new work quickly.
const BACKOFF_START: Duration = Duration::from_millis(50);

/// True when the coordinator says this attempt is no longer ours (requeued, cancelled or the
/// job is gone). The worker must drop the job and report nothing more for it.
pub(crate) fn is_lease_lost(status: &Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::NotFound)
}

/// What a failed call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// This attempt is no longer ours (see [`is_lease_lost`]).
    LeaseLost,
    /// The coordinator could not be reached or was too busy: down, restarting, overloaded,
    /// timed out. Retried until the caller's deadline.
    Unreachable,
    /// The coordinator answered with an error of its own (`Internal`, `Unknown`, `DataLoss`).
    /// Once may be a glitch (a busy database); again and again is a bug that retrying will not
    /// cure, so these are retried only [`SERVER_ERROR_TRIES`] times.
    ServerError,
    /// The request itself was refused (bad argument, wrong token, ...): never retried.
    Refused,
}

/// Tries of one call that a coordinator answering server errors gets before the worker gives
/// up on it: with the 50 ms start of [`Backoff`] that is about a third of a second.
pub(crate) const SERVER_ERROR_TRIES: u32 = 4;

/// Sorts a failed call's status into a [`Class`].
pub(crate) fn classify(status: &Status) -> Class {
    match status.code() {
        Code::FailedPrecondition | Code::NotFound => Class::LeaseLost,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::ResourceExhausted => {
            Class::Unreachable
        }
        Code::Internal | Code::Unknown | Code::DataLoss => Class::ServerError,
        _ => Class::Refused,
    }
}

/// True for errors worth another try later: [`Class::Unreachable`] and [`Class::ServerError`].
/// Loops that try again on their own schedule (heartbeats, lease polling) use it; one call
/// retried in place goes through [`retry`] and its [`Patience`].
pub(crate) fn is_transient(status: &Status) -> bool {
    matches!(classify(status), Class::Unreachable | Class::ServerError)
}

/// How long one call is retried: until `deadline` while the coordinator is unreachable, and at
/// most `server_errors` tries while it answers server errors. Every retry in the worker has one,
/// so no coordinator behaviour can pin a worker in a retry loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Patience {
    /// Longest wait between tries.
    pub(crate) max_backoff: Duration,
    /// No try starts after this.
    pub(crate) deadline: Instant,
    /// Tries allowed while the answer is a server error.
    pub(crate) server_errors: u32,
}

impl Patience {
    /// Retries for at most `within` from now, and [`SERVER_ERROR_TRIES`] server errors.
    pub(crate) fn within(max_backoff: Duration, within: Duration) -> Self {
        Self::until(max_backoff, Instant::now() + within)
    }

    /// Retries until `deadline`, and [`SERVER_ERROR_TRIES`] server errors.
    pub(crate) fn until(max_backoff: Duration, deadline: Instant) -> Self {
        Self { max_backoff, deadline, server_errors: SERVER_ERROR_TRIES }
    }
}

/// Capped exponential backoff: 50 ms, 100 ms, ... up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// A fresh sequence capped at `max`.
    pub(crate) fn new(max: Duration) -> Self {
        Self { next: BACKOFF_START.min(max), max }
    }

    /// The next wait; doubles the one after.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_START.min(self.max);
    }
}

/// Calls `call` until it succeeds, fails in a way retrying cannot fix, or `patience` runs out,
/// sleeping with capped backoff between tries. Each retried failure is logged with `what`.
///
/// # Errors
/// The last status: a lease lost or a refusal at once, an unreachable coordinator at the
/// deadline, a server error after `patience.server_errors` tries.
pub(crate) async fn retry<T, F, Fut>(what: &str, patience: Patience, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Backoff::new(patience.max_backoff);
    let (mut tries, mut server_errors) = (0u32, 0u32);
    loop {
        match call().await {
            Ok(v) => {
                if tries > 0 {
                    tracing::info!(what, tries, "coordinator call succeeded after retrying");
                }
                return Ok(v);
            }
            Err(status) => {
                match classify(&status) {
                    Class::LeaseLost | Class::Refused => return Err(status),
                    Class::ServerError => {
                        server_errors += 1;
                        if server_errors >= patience.server_errors {
                            tracing::warn!(what, tries = tries + 1, code = ?status.code(), error = %status.message(),
                                "coordinator keeps answering an error; giving up on this call");
                            return Err(status);
                        }
                    }
                    Class::Unreachable => {}
                }
                tries += 1;
                let wait = backoff.next_wait();
                if Instant::now() + wait > patience.deadline {
                    tracing::warn!(what, tries, code = ?status.code(), error = %status.message(),
                        "coordinator call still failing at its deadline; giving up on it");
                    return Err(status);
                }
                tracing::warn!(
                    what, tries, retry_in_ms = wait.as_millis() as u64, code = ?status.code(),
                    error = %status.message(), "coordinator call failed; retrying"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(300));
        let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, vec![50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(50));
    }

    #[test]
    fn status_classes() {
        assert!(is_lease_lost(&Status::failed_precondition("stale attempt")));
        assert!(!is_transient(&Status::failed_precondition("stale attempt")));
        assert!(is_transient(&Status::unavailable("connection refused")));
        assert!(!is_transient(&Status::invalid_argument("bad")));
        assert_eq!(classify(&Status::internal("bug")), Class::ServerError);
        assert_eq!(classify(&Status::unauthenticated("token")), Class::Refused);
        assert_eq!(classify(&Status::unavailable("down")), Class::Unreachable);
    }

    #[tokio::test]
    async fn retry_rides_out_transient_errors_but_not_others() {
        let calls = AtomicU32::new(0);
        let forever = || Patience::within(Duration::from_millis(100), Duration::from_secs(3600));
        let got = retry("test", forever(), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Status::unavailable("down")),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got.expect("third call succeeds"), 2);

        let err = retry("test", forever(), || async { Err::<(), _>(Status::failed_precondition("stale")) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);

        let patience = Patience::within(Duration::from_millis(100), Duration::from_millis(200));
        let err = retry("test", patience, || async { Err::<(), _>(Status::unavailable("down")) }).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn retry_gives_up_on_a_coordinator_that_keeps_answering_internal() {
        let calls = AtomicU32::new(0);
        let err = retry("test", Patience::within(Duration::from_millis(10), Duration::from_secs(3600)), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Status::internal("database is corrupt"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            SERVER_ERROR_TRIES,
            "an hour's deadline, but only the server-error budget"
        );
    }
}
