//! Malformed raw RPCs: each gets a clear INVALID_ARGUMENT/NOT_FOUND naming what is wrong, and the
//! database is exactly as before.

use lorasweep_proto::pb;
use tonic::Code;

use crate::helpers::*;

/// Asserts a call failed with `code` and a message containing every needle.
fn refused<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, needles: &[&str]) {
    let status = result.expect_err("malformed call was accepted");
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(status.message().contains(needle), "message does not mention {needle:?}: {}", status.message());
    }
}

#[tokio::test]
async fn malformed_calls_get_clear_errors_and_change_nothing() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(1, 2)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    let before = c.counts().await?;
    let (s, w) = (&mut c.sweeps.clone(), &mut c.workers.clone());

    let submit = |toml: &str| pb::SubmitSweepRequest { sweep_toml: toml.into(), source: "bad.toml".into() };
    refused(
        s.submit_sweep(submit("[grid]\nlrs = [nan]")).await,
        Code::InvalidArgument,
        &["bad.toml", "grid.lrs[0]", "finite"],
    );
    refused(
        s.submit_sweep(submit("[grid]\ninits = [\"xavier\"]")).await,
        Code::InvalidArgument,
        &["grid.inits", "ortho-eye"],
    );
    refused(s.submit_sweep(submit("[lora]\nr = 0")).await, Code::InvalidArgument, &["lora.r"]);
    refused(s.submit_sweep(submit("[train]\nbatch = 4")).await, Code::InvalidArgument, &["train.batch", "micro_batch"]);
    refused(s.submit_sweep(submit("not toml at all")).await, Code::InvalidArgument, &["bad.toml", "TOML"]);
    refused(
        s.get_sweep(pb::GetSweepRequest { sweep_id: String::new() }).await,
        Code::InvalidArgument,
        &["sweep_id", "empty"],
    );
    refused(s.get_sweep(pb::GetSweepRequest { sweep_id: "nope".into() }).await, Code::NotFound, &["nope"]);
    refused(
        s.list_jobs(pb::ListJobsRequest { sweep_id: sweep_id.clone(), state: 17, ..Default::default() }).await,
        Code::InvalidArgument,
        &["state", "17"],
    );
    refused(
        s.list_jobs(pb::ListJobsRequest { sweep_id: "x".repeat(1000), state: 0, ..Default::default() }).await,
        Code::InvalidArgument,
        &["sweep_id"],
    );
    refused(s.cancel_sweep(pb::CancelSweepRequest { sweep_id: "missing".into() }).await, Code::NotFound, &["missing"]);
    refused(
        s.retry_sweep(pb::RetrySweepRequest { sweep_id: String::new() }).await,
        Code::InvalidArgument,
        &["sweep_id"],
    );
    refused(s.get_curve(pb::GetCurveRequest { job_id: "ghost".into() }).await, Code::NotFound, &["ghost"]);
    refused(w.register_worker(pb::RegisterWorkerRequest::default()).await, Code::InvalidArgument, &["name"]);
    refused(
        w.lease_job(pb::LeaseJobRequest { worker_id: "unregistered".into() }).await,
        Code::NotFound,
        &["unregistered", "RegisterWorker"],
    );
    refused(w.lease_job(pb::LeaseJobRequest { worker_id: String::new() }).await, Code::InvalidArgument, &["worker_id"]);
    let beat = |job_id: &str, attempt| pb::HeartbeatRequest {
        worker_id: worker.clone(),
        job_id: job_id.into(),
        attempt,
        step: 0,
        total_steps: 0,
    };
    refused(w.heartbeat(beat(&lease.job_id, 0)).await, Code::InvalidArgument, &["attempt 0"]);
    refused(w.heartbeat(beat("ghost", 1)).await, Code::NotFound, &["ghost"]);
    refused(w.heartbeat(beat(&lease.job_id, 9)).await, Code::FailedPrecondition, &["stale"]);
    let complete = |state: i32| pb::CompleteJobRequest {
        worker_id: worker.clone(),
        job_id: lease.job_id.clone(),
        attempt: lease.attempt,
        state,
        final_eval_loss: Some(1.0),
        tokens: 1,
        seconds: 1.0,
        ..Default::default()
    };
    refused(
        w.complete_job(complete(pb::JobState::Queued as i32)).await,
        Code::InvalidArgument,
        &["queued", "SUCCEEDED"],
    );
    refused(w.complete_job(complete(99)).await, Code::InvalidArgument, &["state", "99"]);
    let mut bad_seconds = complete(pb::JobState::Succeeded as i32);
    bad_seconds.seconds = f64::NAN;
    refused(w.complete_job(bad_seconds).await, Code::InvalidArgument, &["seconds"]);

    // Point streams: a bad series, a mixed stream, a huge step: each refused, nothing stored.
    let msg =
        |points: Vec<pb::Point>, attempt| pb::ReportPointsRequest { job_id: lease.job_id.clone(), attempt, points };
    let bad_series = vec![pb::Point { series: 0, step: 1, loss: 1.0 }];
    refused(
        w.report_points(tokio_stream::iter(vec![msg(bad_series, 1)])).await,
        Code::InvalidArgument,
        &["points[0]", "series"],
    );
    let bad_step = vec![pb::Point { series: 1, step: u64::MAX, loss: 1.0 }];
    refused(w.report_points(tokio_stream::iter(vec![msg(bad_step, 1)])).await, Code::InvalidArgument, &["step"]);
    let mut other = msg(train_points(1), 1);
    other.job_id = "another".into();
    refused(w.report_points(tokio_stream::iter(vec![other])).await, Code::NotFound, &["another"]);
    refused(
        w.report_points(tokio_stream::iter(vec![msg(vec![], 1), msg(vec![], 2)])).await,
        Code::InvalidArgument,
        &["same job"],
    );
    refused(
        w.report_points(tokio_stream::iter(vec![msg(train_points(3), 0)])).await,
        Code::InvalidArgument,
        &["attempt 0"],
    );

    assert_eq!(c.counts().await?, before, "no malformed call changed the database");
    // And the lease still works.
    c.complete(&worker, &lease, 1.0).await?;
    c.stop().await?;
    Ok(())
}
