//! Seeing what happened: attempts with their outcomes, the event log's read side, workers' job
//! logs, fail-fast pauses, and answers that page or stream so that none outgrows the message
//! limit.

use std::time::Duration;

use lorasweep_proto::pb;
use tonic::Code;

use crate::helpers::*;

/// A sweep of `n` jobs (one init, one lr, seeds 0..n) with `fail_fast` as given.
fn sweep(n: usize, fail_fast: &str) -> String {
    let seeds: Vec<String> = (0..n).map(|s| s.to_string()).collect();
    format!("fail_fast = {fail_fast}\n[grid]\ninits = [\"standard\"]\nlrs = [1e-3]\nseeds = [{}]\n", seeds.join(","))
}

/// Every event of `id` (a sweep or a job), paging with `page_size`.
async fn events(c: &mut TestCoordinator, id: &str, page_size: u32) -> anyhow::Result<Vec<pb::Event>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page =
            c.sweeps.list_events(pb::ListEventsRequest { id: id.into(), page_size, page_token }).await?.into_inner();
        anyhow::ensure!(page_size == 0 || page.events.len() <= page_size as usize, "page over its size");
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// (attempt, worker name, outcome, error kind, error, resumed from step).
type AttemptRow<'a> = (u32, &'a str, &'a str, &'a str, &'a str, Option<u64>);

fn kinds(events: &[pb::Event]) -> Vec<(&str, u32)> {
    events.iter().map(|e| (e.kind.as_str(), e.attempt)).collect()
}

async fn fail(
    c: &mut TestCoordinator,
    worker: &str,
    lease: &pb::Lease,
    error: &str,
    retryable: bool,
) -> anyhow::Result<()> {
    c.workers
        .fail_job(pb::FailJobRequest {
            worker_id: worker.into(),
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            error: error.into(),
            retryable,
            released: false,
        })
        .await?;
    Ok(())
}

async fn get_sweep(c: &mut TestCoordinator, id: &str) -> anyhow::Result<pb::Sweep> {
    c.sweeps
        .get_sweep(pb::GetSweepRequest { sweep_id: id.into() })
        .await?
        .into_inner()
        .sweep
        .ok_or_else(|| anyhow::anyhow!("no sweep"))
}

#[tokio::test]
async fn every_attempt_keeps_its_worker_outcome_and_error_and_the_events_tell_the_story() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&sweep(1, "false")).await?;
    let (a, b) = (c.register("gpu-a").await?, c.register("gpu-b").await?);

    // Attempt 1 fails with a retryable error; attempt 2 loses its heartbeat; attempt 3 resumes
    // from a checkpoint and diverges.
    let first = c.lease(&a).await?;
    fail(&mut c, &a, &first, "CUDA out of memory", true).await?;
    let second = c.lease(&b).await?;
    c.clock.advance(TTL + Duration::from_secs(1));
    await_condition("the reaper", || {
        let mut s = c.sweeps.clone();
        let id = sweep_id.clone();
        async move {
            let jobs = s.list_jobs(pb::ListJobsRequest { sweep_id: id, ..Default::default() }).await?.into_inner().jobs;
            Ok(jobs[0].state == pb::JobState::Queued as i32)
        }
    })
    .await?;
    let third = c.lease(&a).await?;
    assert_eq!((first.attempt, second.attempt, third.attempt), (1, 2, 3));
    c.artifacts
        .report_resumed(pb::ReportResumedRequest {
            worker_id: a.clone(),
            job_id: third.job_id.clone(),
            attempt: 3,
            step: 4,
        })
        .await?;
    c.workers
        .complete_job(pb::CompleteJobRequest {
            worker_id: a.clone(),
            job_id: third.job_id.clone(),
            attempt: 3,
            state: pb::JobState::Diverged as i32,
            final_eval_loss: Some(9.5),
            diverged_step: Some(7),
            diverged_loss: Some(f64::INFINITY),
            ..Default::default()
        })
        .await?;

    let detail = c.sweeps.get_job(pb::GetJobRequest { job_id: third.job_id.clone() }).await?.into_inner();
    let job = detail.job.expect("job");
    assert_eq!(state(&job), pb::JobState::Diverged);
    assert_eq!((job.error.as_str(), job.error_kind.as_str()), ("diverged at step 7: train loss inf", "diverged"));
    assert_eq!(detail.sweep_name, "test");
    let spec: lorasweep_common::JobSpec = serde_json::from_str(&detail.spec_json)?;
    assert_eq!(spec.lr, 1e-3);
    let rows: Vec<AttemptRow<'_>> = detail
        .attempts
        .iter()
        .map(|x| {
            (
                x.attempt,
                x.worker_name.as_str(),
                x.outcome.as_str(),
                x.error_kind.as_str(),
                x.error.as_str(),
                x.resumed_from_step,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "gpu-a", "failed", "retryable", "CUDA out of memory", None),
            (2, "gpu-b", "lost", "", "no heartbeat from its worker for the lease TTL (10000 ms)", None),
            (3, "gpu-a", "diverged", "", "diverged at step 7: train loss inf", Some(4)),
        ]
    );
    assert!(detail.attempts.iter().all(|x| x.device == "cpu" && x.leased_at_ms > 0 && x.ended_at_ms >= x.leased_at_ms));

    let job_events = events(&mut c, &third.job_id, 0).await?;
    assert_eq!(
        kinds(&job_events),
        vec![
            ("leased", 1),
            ("failed", 1),
            ("requeued", 1),
            ("leased", 2),
            ("heartbeat-lost", 2),
            ("requeued", 2),
            ("leased", 3),
            ("resumed", 3),
            ("diverged", 3),
        ]
    );
    assert_eq!(job_events[3].worker_name, "gpu-b");
    assert!(job_events[1].detail.contains("retryable") && job_events[1].detail.contains("CUDA out of memory"));
    assert_eq!(job_events[7].detail, "resumed from the checkpoint at step 4");
    assert!(job_events.windows(2).all(|w| w[0].id < w[1].id && w[0].at_ms <= w[1].at_ms));

    // The sweep's events are its own and its jobs', and paging them changes nothing.
    let sweep_events = events(&mut c, &sweep_id, 0).await?;
    assert_eq!(sweep_events[0].kind, "submitted");
    assert_eq!(sweep_events.len(), job_events.len() + 1);
    let paged = events(&mut c, &sweep_id, 2).await?;
    assert_eq!(kinds(&paged), kinds(&sweep_events), "pages of 2 add up to the whole");
    Ok(())
}

#[tokio::test]
async fn fail_fast_pauses_a_sweep_whose_jobs_fail_alike_and_resume_continues_it() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&sweep(6, "2")).await?;
    let w = c.register("w").await?;
    for _ in 0..2 {
        let lease = c.lease(&w).await?;
        fail(&mut c, &w, &lease, "model /models/qwen: no such directory", false).await?;
    }
    let paused = get_sweep(&mut c, &sweep_id).await?;
    assert!(
        paused.paused.contains("2 jobs failed with a non-retryable error")
            && paused.paused.contains("no such directory")
            && paused.paused.contains(&format!("lorasweep resume {sweep_id}")),
        "{}",
        paused.paused
    );
    assert_eq!((paused.fail_fast, paused.paused_at_ms > 0), (2, true));
    let next = c.workers.lease_job(pb::LeaseJobRequest { worker_id: w.clone() }).await?.into_inner().lease;
    assert!(next.is_none(), "a paused sweep's 4 queued jobs are not leased: {next:?}");
    let all = events(&mut c, &sweep_id, 0).await?;
    assert_eq!(all.last().map(|e| e.kind.as_str()), Some("paused"));

    let resumed = c.sweeps.resume_sweep(pb::ResumeSweepRequest { sweep_id: sweep_id.clone() }).await?.into_inner();
    assert_eq!(resumed.requeued, 2, "the two failed jobs run again");
    assert!(get_sweep(&mut c, &sweep_id).await?.paused.is_empty());
    c.lease(&w).await?;
    let again =
        c.sweeps.resume_sweep(pb::ResumeSweepRequest { sweep_id: sweep_id.clone() }).await.expect_err("not paused");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("not paused"), "{}", again.message());
    let ghost = c.sweeps.resume_sweep(pb::ResumeSweepRequest { sweep_id: "ghost".into() }).await.expect_err("unknown");
    assert_eq!(ghost.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn retryable_failures_a_success_or_fail_fast_false_never_pause() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let w = c.register("w").await?;
    // Retryable errors, even when they use up a job's attempts.
    let retryable = c.submit(&sweep(1, "1")).await?;
    for _ in 0..3 {
        let lease = c.lease(&w).await?;
        fail(&mut c, &w, &lease, "connection reset", true).await?;
    }
    let s = get_sweep(&mut c, &retryable).await?;
    assert!(s.paused.is_empty() && s.counts.iter().any(|n| n.state == pb::JobState::Failed as i32), "{s:?}");
    // A success first: the sweep works, its failures are the jobs' own.
    let mixed = c.submit(&sweep(3, "1")).await?;
    let ok = c.lease(&w).await?;
    c.complete(&w, &ok, 2.0).await?;
    let bad = c.lease(&w).await?;
    fail(&mut c, &w, &bad, "bad data row 7", false).await?;
    assert!(get_sweep(&mut c, &mixed).await?.paused.is_empty());
    // Switched off.
    let off = c.submit(&sweep(2, "false")).await?;
    for _ in 0..2 {
        let lease = c.lease(&w).await?;
        fail(&mut c, &w, &lease, "no such model", false).await?;
    }
    let s = get_sweep(&mut c, &off).await?;
    assert!(s.paused.is_empty() && s.fail_fast == 0, "{s:?}");
    Ok(())
}

#[tokio::test]
async fn a_curve_larger_than_the_message_limit_round_trips_bit_for_bit() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&sweep(1, "false")).await?;
    let w = c.register("w").await?;
    let lease = c.lease(&w).await?;
    // 400,000 points are 4.38 MB as one message: over the 4 MiB limit GetCurve once had.
    let n = 400_000u64;
    let points: Vec<pb::Point> = (1..=n)
        .map(|step| pb::Point { series: pb::Series::Train as i32, step, loss: 1.0 + 1.0 / step as f64 })
        .collect();
    c.report(&lease.job_id, lease.attempt, &points, 8192).await?;
    let whole = pb::GetCurveResponse {
        train_steps: points.iter().map(|p| p.step).collect(),
        train_losses: points.iter().map(|p| p.loss).collect(),
        ..Default::default()
    };
    assert!(prost::Message::encoded_len(&whole) > lorasweep_coordinator::limits::MAX_MESSAGE_BYTES);
    let mut stream = c.sweeps.get_curve(pb::GetCurveRequest { job_id: lease.job_id.clone() }).await?.into_inner();
    let mut pieces = 0;
    while let Some(piece) = stream.message().await? {
        assert!(prost::Message::encoded_len(&piece) < 2 << 20, "each piece stays far below the limit");
        pieces += 1;
    }
    assert_eq!(pieces, n.div_ceil(65_536), "pieces of 65,536 points");
    let curve = read_curve(&mut c.sweeps, &lease.job_id).await?;
    assert_eq!(curve, whole, "every step once, in order, bit-exact");
    Ok(())
}

#[tokio::test]
async fn job_sweep_and_worker_lists_page_and_refuse_bad_tokens() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(10, 30)).await?;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .sweeps
            .list_jobs(pb::ListJobsRequest { sweep_id: sweep_id.clone(), state: 0, page_size: 7, page_token })
            .await?
            .into_inner();
        assert!(page.jobs.len() <= 7);
        seen.extend(page.jobs.into_iter().map(|j| (j.lr, j.seed)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let whole: Vec<(f64, u64)> = c.jobs(&sweep_id).await?.into_iter().map(|j| (j.lr, j.seed)).collect();
    assert_eq!((seen.len(), &seen), (300, &whole), "pages of 7 add up to the grid, in grid order");

    let before = c.counts().await?;
    for bad in ["garbage", "e:5", "j:-3", "j:1:2"] {
        let err = c
            .sweeps
            .list_jobs(pb::ListJobsRequest { sweep_id: sweep_id.clone(), page_token: bad.into(), ..Default::default() })
            .await
            .expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(err.message().contains("page_token"), "{bad}: {}", err.message());
    }
    let err = c
        .sweeps
        .list_events(pb::ListEventsRequest { id: sweep_id.clone(), page_token: "j:4".into(), ..Default::default() })
        .await
        .expect_err("a jobs token is no events token");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .sweeps
        .list_events(pb::ListEventsRequest { id: "ghost".into(), ..Default::default() })
        .await
        .expect_err("ghost");
    assert!(err.code() == Code::NotFound && err.message().contains("no sweep or job"), "{err:?}");
    assert_eq!(c.counts().await?, before, "refusals change nothing");

    c.submit(&grid(1, 1)).await?;
    c.submit(&grid(1, 2)).await?;
    c.register("a").await?;
    c.register("b").await?;
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c.sweeps.list_sweeps(pb::ListSweepsRequest { page_size: 1, page_token }).await?.into_inner();
        assert_eq!(page.sweeps.len(), 1);
        names.push(page.sweeps[0].total);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names, vec![2, 1, 300], "newest first, one per page");
    let first =
        c.sweeps.list_workers(pb::ListWorkersRequest { page_size: 1, page_token: String::new() }).await?.into_inner();
    let second = c
        .sweeps
        .list_workers(pb::ListWorkersRequest { page_size: 1, page_token: first.next_page_token })
        .await?
        .into_inner();
    assert_eq!((first.workers.len(), second.workers.len(), second.next_page_token.as_str()), (1, 1, ""));
    assert_ne!(first.workers[0].id, second.workers[0].id);
    Ok(())
}

#[tokio::test]
async fn a_watch_snapshot_of_a_large_sweep_spans_several_messages() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(100, 100)).await?;
    let mut stream = c.sweeps.watch_sweep(pb::WatchSweepRequest { sweep_id }).await?.into_inner();
    let (mut jobs, mut messages) = (0, 0);
    while let Some(piece) = stream.message().await? {
        assert!(prost::Message::encoded_len(&piece) <= (1 << 20) + 4096, "a message of at most a page");
        jobs += piece.jobs.len();
        messages += 1;
        if !piece.more {
            break;
        }
    }
    assert_eq!(jobs, 10_000, "the snapshot holds every job");
    assert!(messages >= 2, "10,000 jobs do not fit one page: {messages} messages");
    Ok(())
}

async fn ship(
    c: &mut TestCoordinator,
    worker: &str,
    lease: &pb::Lease,
    messages: &[&str],
) -> Result<pb::ShipLogsResponse, tonic::Status> {
    let records = messages
        .iter()
        .map(|m| pb::LogRecord {
            level: "INFO".into(),
            target: "lorasweep_train".into(),
            message: (*m).into(),
            at_ms: 5,
            ..Default::default()
        })
        .collect();
    c.workers
        .ship_logs(pb::ShipLogsRequest {
            worker_id: worker.into(),
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            records,
            dropped: 0,
        })
        .await
        .map(|r| r.into_inner())
}

async fn logs(c: &mut TestCoordinator, job: &str, attempt: u32) -> anyhow::Result<Vec<pb::LogRecord>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .sweeps
            .list_logs(pb::ListLogsRequest { job_id: job.into(), attempt, page_size: 500, page_token })
            .await?
            .into_inner();
        out.extend(page.records);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn job_logs_are_kept_per_attempt_from_their_holder_only_and_capped() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&sweep(1, "false")).await?;
    let (a, b) = (c.register("a").await?, c.register("b").await?);
    let first = c.lease(&a).await?;
    ship(&mut c, &a, &first, &["loading model", "step 1 loss 5.8"]).await?;
    // Another worker may not write this attempt's log.
    let err = ship(&mut c, &b, &first, &["forged"]).await.expect_err("not its attempt");
    assert_eq!(err.code(), Code::FailedPrecondition);
    fail(&mut c, &a, &first, "oom", true).await?;
    let second = c.lease(&b).await?;
    ship(&mut c, &b, &second, &["attempt two"]).await?;
    // The first attempt's holder may still ship its last records after the attempt ended.
    ship(&mut c, &a, &first, &["late but useful"]).await?;

    let all = logs(&mut c, &first.job_id, 0).await?;
    let got: Vec<(u64, u32, &str)> = all.iter().map(|r| (r.seq, r.attempt, r.message.as_str())).collect();
    assert_eq!(
        got,
        vec![(1, 1, "loading model"), (2, 1, "step 1 loss 5.8"), (3, 2, "attempt two"), (4, 1, "late but useful")]
    );
    let only_two: Vec<String> = logs(&mut c, &first.job_id, 2).await?.into_iter().map(|r| r.message).collect();
    assert_eq!(only_two, vec!["attempt two"]);

    for (bad, needle) in [("DEBUG", "level"), ("x".repeat(5000).as_str(), "message")] {
        let mut req = pb::ShipLogsRequest {
            worker_id: b.clone(),
            job_id: second.job_id.clone(),
            attempt: second.attempt,
            records: vec![pb::LogRecord { level: "INFO".into(), ..Default::default() }],
            dropped: 0,
        };
        if bad == "DEBUG" {
            req.records[0].level = bad.into();
        } else {
            req.records[0].message = bad.into();
        }
        let err = c.workers.ship_logs(req).await.expect_err(needle);
        assert!(err.code() == Code::InvalidArgument && err.message().contains(needle), "{err:?}");
    }

    // The cap: 2 MiB of messages per job; past it records are counted, with one marker.
    let line = "y".repeat(4000);
    let batch: Vec<&str> = vec![line.as_str(); 200];
    let mut capped = false;
    for _ in 0..4 {
        capped = ship(&mut c, &b, &second, &batch).await?.capped;
    }
    assert!(capped, "800 × 4000 bytes pass the 2 MiB cap");
    let stored = logs(&mut c, &first.job_id, 0).await?;
    let bytes: usize = stored.iter().map(|r| r.message.len()).sum();
    assert!(bytes as i64 <= lorasweep_coordinator::MAX_LOG_BYTES_PER_JOB + 200, "{bytes}");
    let markers = stored.iter().filter(|r| r.message.contains("reached its cap")).count();
    assert_eq!(markers, 1, "one marker where storing stopped");
    let detail = c.sweeps.get_job(pb::GetJobRequest { job_id: first.job_id.clone() }).await?.into_inner();
    let two = &detail.attempts[1];
    assert!(two.logs_dropped > 0 && two.log_records > 500, "{two:?}");
    Ok(())
}

#[tokio::test]
async fn follow_streams_new_events_and_logs_and_end_with_the_job() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    c.submit(&sweep(1, "false")).await?;
    let w = c.register("w").await?;
    let lease = c.lease(&w).await?;
    let mut events = c
        .sweeps
        .follow_events(pb::ListEventsRequest { id: lease.job_id.clone(), ..Default::default() })
        .await?
        .into_inner();
    let first = events.message().await?.expect("the stored events first");
    assert_eq!(first.events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), vec!["leased"]);
    let mut follow_logs = c
        .sweeps
        .follow_logs(pb::ListLogsRequest { job_id: lease.job_id.clone(), ..Default::default() })
        .await?
        .into_inner();
    ship(&mut c, &w, &lease, &["hello"]).await?;
    let page = follow_logs.message().await?.expect("the new record");
    assert_eq!(page.records[0].message, "hello");
    c.complete(&w, &lease, 2.0).await?;
    let mut rest = Vec::new();
    while let Some(page) = tokio::time::timeout(Duration::from_secs(5), events.message()).await?? {
        rest.extend(page.events.into_iter().map(|e| e.kind));
    }
    assert_eq!(rest, vec!["succeeded"], "the stream ends once the job is finished");
    assert!(tokio::time::timeout(Duration::from_secs(5), follow_logs.message()).await??.is_none());
    let err = c
        .sweeps
        .follow_logs(pb::ListLogsRequest { job_id: "ghost".into(), ..Default::default() })
        .await
        .expect_err("unknown job");
    assert_eq!(err.code(), Code::NotFound);
    Ok(())
}
