//! Steering a running sweep from the CLI: `cancel` stops the job a worker is running (the worker
//! learns it at its next heartbeat and moves on), `retry` requeues it and a worker runs it again.

use std::time::Duration;

use lorasweep_proto::pb;

use crate::helpers::{self, await_condition, await_sweep_done, cli_ok, clients, spawn_coordinator, spawn_worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_running_job_and_retry_runs_it_again() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // TTL 1 s: workers heartbeat every ~333 ms, so a cancel reaches them quickly.
    let coordinator = spawn_coordinator(dir.path(), Duration::from_secs(1)).await?;
    let url = coordinator.url.clone();
    let (mut sweeps, _) = clients(&url).await?;
    // Long enough (~100 s) that only the cancel can end it within the test.
    let slow = "[train]\nmax_steps = 5000\n[grid]\ninits = [\"standard\"]\nlrs = [1e-3]\nseeds = [42]\n";
    let sweep = helpers::submit(&mut sweeps, slow).await?;
    let worker = spawn_worker(&url, "steered", 20)?;
    await_condition("the job to run", Duration::from_secs(30), || {
        let mut s = sweeps.clone();
        let sweep = sweep.clone();
        async move {
            let jobs = helpers::jobs(&mut s, &sweep).await?;
            Ok(jobs.iter().any(|j| j.state == pb::JobState::Running as i32 && j.step > 0).then_some(()))
        }
    })
    .await?;

    assert!(cli_ok(&url, &["cancel", &sweep]).await?.contains("cancelled 1 jobs"));
    let cancelled = helpers::jobs(&mut sweeps, &sweep).await?.remove(0);
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);

    // The worker drops the cancelled job and takes the next one: a short job of a new sweep.
    let quick = "[train]\nmax_steps = 3\n[grid]\ninits = [\"reversed\"]\nlrs = [2e-4]\nseeds = [7]\n";
    let other = helpers::submit(&mut sweeps, quick).await?;
    let done = await_sweep_done(&sweeps, &other, Duration::from_secs(10)).await?;
    assert_eq!(done[0].state, pb::JobState::Succeeded as i32, "{done:?}");
    let still = helpers::jobs(&mut sweeps, &sweep).await?.remove(0);
    assert_eq!(still.state, pb::JobState::Cancelled as i32, "the cancel sticks: {still:?}");
    let steps_at_cancel = still.step;

    // Retry requeues it; the worker leases it again as attempt 2.
    assert!(cli_ok(&url, &["retry", &sweep]).await?.contains("requeued 1 jobs"));
    let rerun = await_condition("the retried job to run past its old progress", Duration::from_secs(30), || {
        let mut s = sweeps.clone();
        let sweep = sweep.clone();
        async move {
            let job = helpers::jobs(&mut s, &sweep).await?.remove(0);
            Ok((job.state == pb::JobState::Running as i32 && job.attempt == 2).then_some(job))
        }
    })
    .await?;
    assert!(rerun.attempt > cancelled.attempt);
    assert!(steps_at_cancel > 0);
    assert!(cli_ok(&url, &["cancel", &sweep]).await?.contains("cancelled 1 jobs"));
    worker.stop().await?;
    coordinator.stop().await
}
