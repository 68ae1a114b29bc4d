//! Failures end to end: a worker killed mid-job, a worker shut down gracefully, and the
//! coordinator killed and restarted mid-sweep.

use std::time::Duration;

use lorasweep_proto::pb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

use crate::helpers::{
    self, Proc, await_condition, await_sweep_done, clients, expected_eval_steps, spawn_coordinator, spawn_worker,
    start_coordinator_process,
};

/// One job of `steps` steps.
fn one_job(steps: u64) -> String {
    format!("[train]\nmax_steps = {steps}\n[grid]\ninits = [\"standard\"]\nlrs = [1e-3]\nseeds = [42]\n")
}

/// Waits until the sweep's only job runs at attempt `attempt` with at least `step` steps reported.
async fn await_running(
    sweeps: &lorasweep_proto::pb::sweeps_client::SweepsClient<tonic::transport::Channel>,
    sweep: &str,
    attempt: u32,
    step: u64,
) -> anyhow::Result<pb::Job> {
    await_condition("the job to run", Duration::from_secs(30), || {
        let mut s = sweeps.clone();
        async move {
            let jobs = helpers::jobs(&mut s, sweep).await?;
            Ok(jobs
                .into_iter()
                .find(|j| j.state == pb::JobState::Running as i32 && j.attempt == attempt && j.step >= step))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_job_is_requeued_after_ttl_and_finished_elsewhere() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = spawn_coordinator(dir.path(), Duration::from_secs(1)).await?;
    let (mut sweeps, mut workers) = clients(&coordinator.url).await?;
    let sweep = helpers::submit(&mut sweeps, &one_job(20)).await?;

    let log = dir.path().join("doomed.log");
    let mut doomed = Proc::start(
        &[
            "--coordinator",
            &coordinator.url,
            "worker",
            "--name",
            "doomed",
            "--trainer",
            "synthetic",
            "--synthetic-step-ms",
            "150",
        ],
        log,
    )?;
    let first = await_running(&sweeps, &sweep, 1, 2).await?;
    doomed.kill9().await?;

    let rescuer = spawn_worker(&coordinator.url, "rescuer", 1)?;
    let jobs = await_sweep_done(&sweeps, &sweep, Duration::from_secs(30)).await?;
    let job = &jobs[0];
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}\ndoomed log:\n{}", doomed.log_text());
    assert_eq!(job.attempt, 2, "requeued once after the kill");
    assert_ne!(job.worker, first.worker, "finished by another worker");

    // The killed attempt's late calls are fenced off.
    let late = workers
        .report_points(tokio_stream::iter(vec![pb::ReportPointsRequest {
            job_id: job.id.clone(),
            attempt: 1,
            points: vec![pb::Point { series: pb::Series::Train as i32, step: 3, loss: 99.0 }],
        }]))
        .await
        .expect_err("a stale attempt's points are rejected");
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    let hb = workers
        .heartbeat(pb::HeartbeatRequest {
            worker_id: first.worker.clone(),
            job_id: job.id.clone(),
            attempt: 1,
            step: 3,
            total_steps: 20,
        })
        .await
        .expect_err("a stale attempt's heartbeat is rejected");
    assert_eq!(hb.code(), Code::FailedPrecondition);

    let curve = crate::curve::read_curve(&mut sweeps, &job.id.clone()).await?;
    assert_eq!(curve.train_steps, (1..=20).collect::<Vec<_>>());
    assert!(curve.train_losses.iter().all(|l| *l < 10.0), "the rejected 99.0 was not stored");
    assert_eq!(curve.eval_steps, expected_eval_steps(20));
    rescuer.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_without_using_an_attempt() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A long TTL: a requeue within the test can only come from the graceful release.
    let coordinator = spawn_coordinator(dir.path(), Duration::from_secs(60)).await?;
    let (mut sweeps, _) = clients(&coordinator.url).await?;
    let sweep = helpers::submit(&mut sweeps, &one_job(200)).await?;
    let mut worker = Proc::start(
        &["--coordinator", &coordinator.url, "worker", "--trainer", "synthetic", "--synthetic-step-ms", "20"],
        dir.path().join("worker.log"),
    )?;
    await_running(&sweeps, &sweep, 1, 3).await?;
    let pid = worker.child.id().expect("running child has a pid").to_string();
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), worker.child.wait()).await??;
    // 75: a job was interrupted and its work is left; a scheduler should run the worker again.
    assert_eq!(status.code(), Some(75), "worker exits 75 on SIGTERM mid-job: {status}\n{}", worker.log_text());

    let job = helpers::jobs(&mut sweeps, &sweep).await?.remove(0);
    assert_eq!(job.state, pb::JobState::Queued as i32, "released back to the queue: {job:?}");
    assert_eq!(job.failures, 0, "a release does not count as a failure");
    // Points reported before the release are kept.
    let curve = crate::curve::read_curve(&mut sweeps, &job.id.clone()).await?;
    assert!(curve.train_steps.len() >= 3, "{curve:?}");
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_kill_and_restart_mid_sweep_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (mut coordinator, url) =
        start_coordinator_process(&data, "127.0.0.1:0", "2s", dir.path().join("coord1.log")).await?;
    let listen = url.trim_start_matches("http://").to_string();
    let (mut sweeps, _) = clients(&url).await?;
    let toml =
        "[train]\nmax_steps = 30\n[grid]\ninits = [\"standard\", \"reversed\"]\nlrs = [1e-3, 5e-3]\nseeds = [42, 43]\n";
    let sweep = helpers::submit(&mut sweeps, toml).await?;
    let workers = [spawn_worker(&url, "a", 15)?, spawn_worker(&url, "b", 15)?];
    // A watcher that must ride out the outage and end when the sweep does; its first line shows
    // it is connected before the kill.
    let mut watcher = Proc::start(&["--coordinator", &url, "watch", &sweep], dir.path().join("watch.log"))?;
    let mut watch_out = BufReader::new(watcher.child.stdout.take().expect("piped stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), watch_out.next_line()).await??;
    assert!(first.is_some_and(|l| l.contains("done")), "{}", watcher.log_text());

    // Kill once some jobs are done and others are mid-run.
    await_condition("a finished job and a running one", Duration::from_secs(30), || {
        let mut s = sweeps.clone();
        let sweep = sweep.clone();
        async move {
            let jobs = helpers::jobs(&mut s, &sweep).await?;
            let done = jobs.iter().any(|j| helpers::is_terminal(j.state));
            let running = jobs.iter().any(|j| j.state == pb::JobState::Running as i32 && j.step > 0);
            Ok((done && running).then_some(()))
        }
    })
    .await?;
    coordinator.kill9().await?;
    drop(sweeps);
    // The outage itself is the scenario: the workers keep training and must hold their points
    // and completions until the coordinator is back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_coordinator, url2) = start_coordinator_process(&data, &listen, "2s", dir.path().join("coord2.log")).await?;
    assert_eq!(url2, url);
    let (mut sweeps, _) = clients(&url).await?;

    let jobs = await_sweep_done(&sweeps, &sweep, Duration::from_secs(60)).await?;
    assert_eq!(jobs.len(), 8);
    for job in &jobs {
        let ok = [pb::JobState::Succeeded as i32, pb::JobState::Diverged as i32];
        assert!(ok.contains(&job.state), "{job:?}");
        let curve = crate::curve::read_curve(&mut sweeps, &job.id.clone()).await?;
        assert_eq!(curve.train_steps, (1..=30).collect::<Vec<_>>(), "each train step once: {}", job.id);
        assert_eq!(curve.eval_steps, expected_eval_steps(30), "each eval once: {}", job.id);
        assert_eq!(job.final_eval_loss, curve.eval_losses.last().copied());
    }
    let diverged = jobs.iter().filter(|j| j.state == pb::JobState::Diverged as i32).count();
    assert_eq!(diverged, 2, "reversed at 5e-3 diverges, standard does not");
    let watched = tokio::time::timeout(Duration::from_secs(30), watcher.child.wait()).await??;
    assert!(watched.success(), "watch exits 0 after the outage: {}", watcher.log_text());
    let mut out = String::new();
    while let Some(line) = watch_out.next_line().await? {
        out.push_str(&line);
        out.push('\n');
    }
    assert!(out.contains("finished: diverged=2 succeeded=6"), "{out}");
    assert!(watcher.log_text().contains("reconnecting"), "the watcher saw the outage");
    for w in workers {
        w.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_registers_again_with_a_coordinator_that_lost_its_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = spawn_coordinator(&dir.path().join("one"), Duration::from_secs(5)).await?;
    let url = first.url.clone();
    let worker = spawn_worker(&url, "survivor", 1)?;
    let (sweeps, _) = clients(&url).await?;
    await_condition("the worker to register", Duration::from_secs(10), || {
        let mut s = sweeps.clone();
        async move {
            let w = s.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
            Ok((!w.is_empty()).then_some(()))
        }
    })
    .await?;
    first.stop().await?;
    drop(sweeps);

    // Same address, empty data dir: the worker's id means nothing there any more.
    let second = helpers::spawn_coordinator_on(
        url.trim_start_matches("http://"),
        &dir.path().join("two"),
        Duration::from_secs(5),
    )
    .await?;
    let (mut sweeps, _) = clients(&url).await?;
    let sweep = helpers::submit(&mut sweeps, &one_job(3)).await?;
    let jobs = await_sweep_done(&sweeps, &sweep, Duration::from_secs(20)).await?;
    assert_eq!(jobs[0].state, pb::JobState::Succeeded as i32);
    let workers = sweeps.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!((workers[0].name.as_str(), workers[0].id.as_str()), ("survivor", jobs[0].worker.as_str()));
    worker.stop().await?;
    second.stop().await
}
