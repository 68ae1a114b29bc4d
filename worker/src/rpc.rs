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

/// True for errors that can go away by themselves: the coordinator is down, restarting,
/// overloaded or timed out. Anything else is a bug on one side and retrying will not help.
pub(crate) fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
    )
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

/// Calls `call` until it succeeds, fails with a non-transient status, or `deadline` passes,
/// sleeping with `backoff` between tries. Each transient failure is logged with `what`.
///
/// # Errors
/// The last status when it was not transient or the deadline passed.
pub(crate) async fn retry<T, F, Fut>(
    what: &str,
    max_backoff: Duration,
    deadline: Option<Instant>,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Backoff::new(max_backoff);
    let mut tries = 0u32;
    loop {
        match call().await {
            Ok(v) => {
                if tries > 0 {
                    tracing::info!(what, tries, "coordinator reachable again");
                }
                return Ok(v);
            }
            Err(status) if is_transient(&status) => {
                tries += 1;
                let wait = backoff.next_wait();
                if deadline.is_some_and(|d| Instant::now() + wait > d) {
                    return Err(status);
                }
                tracing::warn!(
                    what, tries, retry_in_ms = wait.as_millis() as u64, code = ?status.code(),
                    error = %status.message(), "coordinator call failed; retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Err(status) => return Err(status),
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
    }

    #[tokio::test]
    async fn retry_rides_out_transient_errors_but_not_others() {
        let calls = AtomicU32::new(0);
        let got = retry("test", Duration::from_millis(100), None, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Status::unavailable("down")),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got.expect("third call succeeds"), 2);

        let err = retry("test", Duration::from_secs(1), None, || async {
            Err::<(), _>(Status::failed_precondition("stale"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);

        let deadline = Some(Instant::now() + Duration::from_millis(200));
        let err =
            retry("test", Duration::from_millis(100), deadline, || async { Err::<(), _>(Status::unavailable("down")) })
                .await
                .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
}
