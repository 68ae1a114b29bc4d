//! The happy path and the user-facing controls: submit → lease → report → complete, watch,
//! cancel, retry, idempotent points.

use lorasweep_proto::pb;

use crate::helpers::*;

#[tokio::test]
async fn submit_lease_report_complete() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit("").await?;
    let sweep = c
        .sweeps
        .get_sweep(pb::GetSweepRequest { sweep_id: sweep_id.clone() })
        .await?
        .into_inner()
        .sweep
        .expect("sweep");
    assert_eq!(sweep.total, 140, "the empty file is the study grid");
    assert_eq!(sweep.counts, vec![pb::StateCount { state: pb::JobState::Queued as i32, count: 140 }]);
    assert_eq!(sweep.name, "test");

    let worker = c.register("host:0").await?;
    let lease = c.lease(&worker).await?;
    assert_eq!(lease.attempt, 1);
    assert_eq!(lease.sweep_id, sweep_id);
    let spec: lorasweep_common::JobSpec = serde_json::from_str(&lease.spec_json)?;
    assert_eq!((spec.init, spec.lr, spec.seed), (lorasweep_common::LoraInit::Standard, 1e-4, 42), "grid order");

    let beat = c.heartbeat(&worker, &lease.job_id, lease.attempt).await?;
    assert!(!beat.cancel);
    assert_eq!(beat.expires_at_ms, c.clock_now() + TTL.as_millis() as i64);

    let mut points = train_points(50);
    points.push(pb::Point { series: pb::Series::Eval as i32, step: 0, loss: 2.38 });
    points.push(pb::Point { series: pb::Series::Eval as i32, step: 40, loss: f64::NAN });
    points.push(pb::Point { series: pb::Series::Eval as i32, step: 80, loss: f64::INFINITY });
    assert_eq!(c.report(&lease.job_id, lease.attempt, &points, 7).await?, 53);
    c.complete(&worker, &lease, 1.83).await?;

    let job = c.job(&sweep_id, &lease.job_id).await?;
    assert_eq!(state(&job), pb::JobState::Succeeded);
    assert_eq!(job.final_eval_loss, Some(1.83));
    assert_eq!(job.step, 50);
    assert_eq!(job.last_train_loss, Some(3.0 / 50f64.sqrt()));
    assert_eq!((job.tokens, job.seconds, job.worker.as_str()), (1000, 1.5, worker.as_str()));

    let curve = read_curve(&mut c.sweeps, &lease.job_id.clone()).await?;
    assert_eq!(curve.train_steps, (1..=50).collect::<Vec<_>>());
    assert_eq!(curve.train_losses[3], 1.5);
    let sent: Vec<f64> = points[..50].iter().map(|p| p.loss).collect();
    assert_eq!(curve.train_losses, sent, "losses come back bit-exact");
    assert_eq!(curve.eval_steps, vec![0, 40, 80]);
    assert_eq!(curve.eval_losses[0], 2.38);
    assert!(curve.eval_losses[1].is_nan() && curve.eval_losses[2] == f64::INFINITY, "NaN and inf survive");

    let workers = c.sweeps.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
    assert_eq!(workers.len(), 1);
    assert!(workers[0].alive && workers[0].job_id.is_empty() && workers[0].name == "host:0");

    let counts = c.sweeps.list_sweeps(pb::ListSweepsRequest::default()).await?.into_inner().sweeps[0].counts.clone();
    assert_eq!(
        counts,
        vec![
            pb::StateCount { state: pb::JobState::Queued as i32, count: 139 },
            pb::StateCount { state: pb::JobState::Succeeded as i32, count: 1 },
        ]
    );
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn duplicate_points_are_stored_once() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    let points = train_points(1000);
    assert_eq!(c.report(&lease.job_id, lease.attempt, &points, 300).await?, 1000);
    // Resent after a lost acknowledgement, overlapping and in another order: no duplicates.
    let mut again = points[500..].to_vec();
    again.reverse();
    again.extend(train_points(1200)[1000..].iter().copied());
    assert_eq!(c.report(&lease.job_id, lease.attempt, &again, 64).await?, 700);
    let curve = read_curve(&mut c.sweeps, &lease.job_id.clone()).await?;
    assert_eq!(curve.train_steps, (1..=1200).collect::<Vec<_>>(), "each step exactly once, in order");
    assert_eq!(c.job(&sweep_id, &lease.job_id).await?.step, 1200);
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn cancel_tells_the_worker_and_retry_requeues_with_a_new_attempt() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(2, 2)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    let cancelled =
        c.sweeps.cancel_sweep(pb::CancelSweepRequest { sweep_id: sweep_id.clone() }).await?.into_inner().cancelled;
    assert_eq!(cancelled, 4, "3 queued + 1 running");

    let beat = c.heartbeat(&worker, &lease.job_id, lease.attempt).await?;
    assert!(beat.cancel, "the running attempt learns of the cancel at its heartbeat");
    let err = c.report(&lease.job_id, lease.attempt, &train_points(3), 3).await.expect_err("points after cancel");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let err = c.complete(&worker, &lease, 1.0).await.expect_err("complete after cancel");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(c.workers.lease_job(pb::LeaseJobRequest { worker_id: worker.clone() }).await?.into_inner().lease.is_none());

    let requeued =
        c.sweeps.retry_sweep(pb::RetrySweepRequest { sweep_id: sweep_id.clone() }).await?.into_inner().requeued;
    assert_eq!(requeued, 4);
    let again = c.lease(&worker).await?;
    assert_eq!((again.job_id.as_str(), again.attempt), (lease.job_id.as_str(), 2), "same job, fenced by a new attempt");
    let err = c.heartbeat(&worker, &lease.job_id, lease.attempt).await.expect_err("old attempt");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("stale"), "{}", err.message());
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn watch_streams_snapshots_and_ends_when_the_sweep_finishes() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(1, 2)).await?;
    let mut stream = c.sweeps.watch_sweep(pb::WatchSweepRequest { sweep_id: sweep_id.clone() }).await?.into_inner();
    let first = stream.message().await?.expect("a first snapshot");
    assert_eq!(first.jobs.len(), 2);
    assert!(first.jobs.iter().all(|j| state(j) == pb::JobState::Queued));

    let worker = c.register("w").await?;
    for _ in 0..2 {
        let lease = c.lease(&worker).await?;
        c.complete(&worker, &lease, 2.0).await?;
    }
    let mut last = first;
    while let Some(snapshot) = stream.message().await? {
        last = snapshot;
    }
    assert!(last.jobs.iter().all(|j| state(j) == pb::JobState::Succeeded), "the last snapshot shows the finish");
    c.stop().await?;
    Ok(())
}

/// Every loss survives bit for bit: extremes, subnormals, infinities, NaN payloads. (Not -0.0:
/// proto3 omits a double equal to 0.0, so -0.0 arrives as 0.0 before the coordinator sees it.)
#[tokio::test]
async fn extreme_losses_round_trip_exactly() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    let losses = [
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        -1e-310,
        0.1 + 0.2,
        1.0 / 3.0,
        f64::NEG_INFINITY,
        123_456_789.123_456_79,
        2.0f64.sqrt(),
        f64::from_bits(0x7ff8_0000_0000_beef),
    ];
    let points: Vec<pb::Point> = losses
        .iter()
        .enumerate()
        .map(|(i, &loss)| pb::Point { series: pb::Series::Train as i32, step: i as u64 + 1, loss })
        .collect();
    c.report(&lease.job_id, lease.attempt, &points, 4).await?;
    let curve = read_curve(&mut c.sweeps, &lease.job_id.clone()).await?;
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&curve.train_losses), bits(&losses), "every loss survives bit for bit");
    assert!(curve.eval_steps.is_empty());
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(1, 1)).await?;
    let mut stream = c.sweeps.clone().watch_sweep(pb::WatchSweepRequest { sweep_id }).await?.into_inner();
    stream.message().await?.expect("a first snapshot");
    // The sweep never finishes, yet a graceful shutdown must not wait on its watcher.
    tokio::time::timeout(std::time::Duration::from_secs(5), c.stop()).await??;
    assert!(matches!(stream.message().await, Ok(None) | Err(_)), "the stream ended");
    Ok(())
}

#[tokio::test]
async fn a_message_larger_than_one_write_is_stored_whole() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&grid(1, 1)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    // One 30,000-point message spans four writes inside the coordinator.
    assert_eq!(c.report(&lease.job_id, lease.attempt, &train_points(30_000), 30_000).await?, 30_000);
    let curve = read_curve(&mut c.sweeps, &lease.job_id.clone()).await?;
    assert_eq!(curve.train_steps, (1..=30_000).collect::<Vec<_>>());
    c.stop().await?;
    Ok(())
}
