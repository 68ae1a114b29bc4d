//! Leases under concurrency, expiry and failure: fencing by attempt, reaping, attempt budgets.

use std::{collections::HashSet, time::Duration};

use lorasweep_proto::pb;
use tempfile::TempDir;

use crate::helpers::*;

#[tokio::test]
async fn concurrent_leasers_never_get_the_same_job() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(5, 12)).await?; // 60 jobs
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let worker = c.register(&format!("w{i}")).await?;
        let mut client = c.workers.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            while let Some(lease) =
                client.lease_job(pb::LeaseJobRequest { worker_id: worker.clone() }).await?.into_inner().lease
            {
                got.push((lease.job_id, lease.attempt));
            }
            anyhow::Ok(got)
        });
    }
    let mut all = Vec::new();
    while let Some(got) = tasks.join_next().await {
        all.extend(got??);
    }
    let unique: HashSet<_> = all.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(all.len(), 60, "every job leased once");
    assert_eq!(unique.len(), 60, "no job leased twice");
    assert!(all.iter().all(|(_, attempt)| *attempt == 1));
    assert!(c.jobs(&sweep_id).await?.iter().all(|j| state(j) == pb::JobState::Running));
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn expired_lease_is_requeued_and_the_old_attempt_is_fenced_off() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(1, 1)).await?;
    let old_worker = c.register("dies").await?;
    let old = c.lease(&old_worker).await?;
    c.report(&old.job_id, old.attempt, &train_points(5), 5).await?;

    // Heartbeats keep it alive past the TTL...
    c.clock.advance(TTL / 2);
    c.heartbeat(&old_worker, &old.job_id, old.attempt).await?;
    c.clock.advance(TTL / 2 + Duration::from_secs(1));
    assert_eq!(state(&c.job(&sweep_id, &old.job_id).await?), pb::JobState::Running);
    // ...until they stop.
    c.clock.advance(TTL);
    let job_id = old.job_id.clone();
    await_condition("the reaper requeues the job", || {
        let (mut c2, sweep_id, job_id) = (c.sweeps.clone(), sweep_id.clone(), job_id.clone());
        async move {
            let jobs =
                c2.list_jobs(pb::ListJobsRequest { sweep_id, state: 0, ..Default::default() }).await?.into_inner().jobs;
            Ok(jobs.iter().any(|j| j.id == job_id && state(j) == pb::JobState::Queued))
        }
    })
    .await?;
    let job = c.job(&sweep_id, &old.job_id).await?;
    assert_eq!((job.failures, job.attempt), (1, 1));
    assert!(job.error.contains("expired"), "{}", job.error);

    let new_worker = c.register("lives").await?;
    let new = c.lease(&new_worker).await?;
    assert_eq!((new.job_id.as_str(), new.attempt), (old.job_id.as_str(), 2));

    let before = c.counts().await?;
    let beat = c.heartbeat(&old_worker, &old.job_id, old.attempt).await.expect_err("late heartbeat");
    assert_eq!(beat.code(), tonic::Code::FailedPrecondition);
    assert!(beat.message().contains("stale") && beat.message().contains("current attempt is 2"), "{}", beat.message());
    let late: Vec<_> = train_points(8);
    let points = c.report(&old.job_id, old.attempt, &late, 8).await.expect_err("late points");
    assert_eq!(points.code(), tonic::Code::FailedPrecondition);
    let done = c.complete(&old_worker, &old, 1.0).await.expect_err("late complete");
    assert_eq!(done.code(), tonic::Code::FailedPrecondition);
    // The old worker also cannot use the new attempt number: it is not the holder.
    let stolen = c.heartbeat(&old_worker, &new.job_id, new.attempt).await.expect_err("wrong worker");
    assert_eq!(stolen.code(), tonic::Code::FailedPrecondition);
    assert_eq!(c.counts().await?, before, "rejected calls store nothing");

    c.complete(&new_worker, &new, 1.9).await?;
    let job = c.job(&sweep_id, &new.job_id).await?;
    assert_eq!(state(&job), pb::JobState::Succeeded);
    assert_eq!(job.leased_at_ms, c.clock_now(), "attempt 2 was leased at the current clock reading");
    let events = c.events(&new.job_id).await?;
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["leased", "heartbeat-lost", "requeued", "leased", "succeeded"], "{events:?}");
    assert!(
        events[1].1.contains(&old_worker) && events[4].1.contains(&new_worker),
        "events name the workers: {events:?}"
    );
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_job_fails_after_max_attempts_expiries() -> anyhow::Result<()> {
    let mut c = spawn_with(TempDir::new()?, lorasweep_coordinator::ManualClock::new(1_000_000), 2).await?;
    let sweep_id = c.submit(&grid(1, 1)).await?;
    let worker = c.register("flaky").await?;
    for attempt in 1..=2u32 {
        let lease = c.lease(&worker).await?;
        assert_eq!(lease.attempt, attempt);
        c.clock.advance(TTL + Duration::from_millis(1));
        let want = if attempt == 2 { pb::JobState::Failed } else { pb::JobState::Queued };
        await_condition("the reaper acts", || {
            let (mut s, sweep_id) = (c.sweeps.clone(), sweep_id.clone());
            async move {
                let jobs = s
                    .list_jobs(pb::ListJobsRequest { sweep_id, state: 0, ..Default::default() })
                    .await?
                    .into_inner()
                    .jobs;
                Ok(state(&jobs[0]) == want)
            }
        })
        .await?;
    }
    let job = &c.jobs(&sweep_id).await?[0];
    assert_eq!((job.failures, job.attempt), (2, 2));
    assert!(c.workers.lease_job(pb::LeaseJobRequest { worker_id: worker }).await?.into_inner().lease.is_none());
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn fail_job_requeues_releases_and_fails() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let fail = |lease: &pb::Lease, retryable: bool, released: bool| pb::FailJobRequest {
        worker_id: worker.clone(),
        job_id: lease.job_id.clone(),
        attempt: lease.attempt,
        error: if released { String::new() } else { "CUDA out of memory".into() },
        retryable,
        released,
    };
    // A graceful release three times does not use up the 3 attempts.
    for _ in 0..3 {
        let lease = c.lease(&worker).await?;
        let state = c.workers.fail_job(fail(&lease, true, true)).await?.into_inner().state;
        assert_eq!(state, pb::JobState::Queued as i32);
    }
    assert_eq!(c.jobs(&sweep_id).await?[0].failures, 0);
    let lease = c.lease(&worker).await?;
    assert_eq!(lease.attempt, 4, "every lease is a new fencing token");
    let state = c.workers.fail_job(fail(&lease, true, false)).await?.into_inner().state;
    assert_eq!(state, pb::JobState::Queued as i32, "retryable error with attempts left");
    let lease = c.lease(&worker).await?;
    let state = c.workers.fail_job(fail(&lease, false, false)).await?.into_inner().state;
    assert_eq!(state, pb::JobState::Failed as i32, "non-retryable fails at once");
    let job = &c.jobs(&sweep_id).await?[0];
    assert_eq!((job.failures, job.error.as_str()), (2, "CUDA out of memory"));
    // Failing twice is refused: the attempt is over.
    let again = c.workers.fail_job(fail(&lease, true, false)).await.expect_err("attempt is over");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_expired_lease_is_refused_even_before_the_reaper_runs() -> anyhow::Result<()> {
    let clock = lorasweep_coordinator::ManualClock::new(1_000_000);
    let mut c = spawn_reaping_every(TempDir::new()?, clock, 3, Duration::from_secs(3600)).await?;
    let sweep_id = c.submit(&grid(1, 1)).await?;
    let worker = c.register("slow").await?;
    let lease = c.lease(&worker).await?;
    c.clock.advance(TTL);
    let before = c.counts().await?;
    let beat = c.heartbeat(&worker, &lease.job_id, lease.attempt).await.expect_err("expired heartbeat");
    let points = c.report(&lease.job_id, lease.attempt, &train_points(2), 2).await.expect_err("expired points");
    let done = c.complete(&worker, &lease, 1.0).await.expect_err("expired complete");
    for status in [&beat, &points, &done] {
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("expired"), "{}", status.message());
    }
    assert_eq!(c.counts().await?, before, "nothing stored");
    assert_eq!(state(&c.jobs(&sweep_id).await?[0]), pb::JobState::Running, "requeueing is the reaper's job");
    c.stop().await?;
    Ok(())
}
