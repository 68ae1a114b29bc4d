//! The reaper: a background task that requeues jobs whose lease expired (the worker died or lost
//! its network), or fails them once they have used up their attempts.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::{metrics::Metrics, store::Store};

/// Runs until `shutdown` is cancelled, reaping every `interval`. The interval runs on tokio time,
/// while expiry is judged by the store's [`crate::Clock`], so tests move the clock and just wait.
pub(crate) async fn run(store: Store, interval: Duration, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match store.reap().await {
            Ok(0) => {}
            Ok(n) => {
                metrics.leases_expired(n);
                info!(expired = n, "requeued or failed jobs with expired leases");
            }
            // A failed reap leaves the leases as they were; the next tick tries again.
            Err(e) => error!(cause = %e, "reaping expired leases failed"),
        }
    }
}
