//! Tracing: the log lines of job-scoped calls carry the job and worker ids in their span, so one
//! job's story can be grepped out of a busy coordinator's log.
//!
//! A binary of its own: the test installs a thread-local subscriber, and tracing caches per
//! call site whether anyone listens, which other tests running in parallel threads of the same
//! process would race with.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use lorasweep_proto::pb;

#[allow(dead_code, unreachable_pub)]
#[path = "api/helpers.rs"]
mod helpers;

use helpers::*;

/// An in-memory log the subscriber writes to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

// A current-thread runtime (tokio::test's default): the server's tasks run on this thread, so
// the thread-local subscriber sees their events.
#[tokio::test]
async fn job_scoped_log_lines_carry_job_and_worker_ids() -> anyhow::Result<()> {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("lorasweep_coordinator=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut c = spawn_coordinator().await?;
    c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    c.report(&lease.job_id, lease.attempt, &train_points(3), 3).await?;
    let stale = c.heartbeat(&worker, &lease.job_id, lease.attempt + 5).await;
    assert!(stale.is_err());
    c.complete(&worker, &lease, 1.0).await?;
    let _ = c.sweeps.list_sweeps(pb::ListSweepsRequest::default()).await?;
    c.stop().await?;

    let text = log.text();
    let line = |needle: &str| text.lines().find(|l| l.contains(needle)).map(str::to_string);
    let leased = line("job leased").ok_or_else(|| anyhow::anyhow!("no `job leased` line in:\n{text}"))?;
    assert!(leased.contains(&format!("worker_id={worker}")), "{leased}");
    assert!(leased.contains(&format!("job_id={}", lease.job_id)), "{leased}");
    // The refused heartbeat's error is logged inside its span, with both ids and the attempt.
    let refused = line("heartbeat{").ok_or_else(|| anyhow::anyhow!("no heartbeat span in:\n{text}"))?;
    assert!(refused.contains(&format!("job_id={}", lease.job_id)) && refused.contains(&format!("worker_id={worker}")));
    assert!(refused.contains("stale"), "{refused}");
    let points = line("report_points{").ok_or_else(|| anyhow::anyhow!("no report_points span in:\n{text}"))?;
    assert!(points.contains(&format!("job_id={}", lease.job_id)), "{points}");
    Ok(())
}
