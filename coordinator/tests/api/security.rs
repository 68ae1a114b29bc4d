//! Tokens and exposure: every RPC refuses a missing or wrong token (UNAUTHENTICATED) and a worker
//! token on an admin call (PERMISSION_DENIED), saying which token is needed, and stores nothing;
//! the coordinator refuses to serve a non-loopback address without tokens.

use std::time::Duration;

use lorasweep_coordinator::{
    Config, Error, ManualClock,
    auth::{Secret, Tokens},
    check_exposure,
};
use lorasweep_proto::pb;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};

use crate::helpers::*;

pub(crate) const ADMIN: &str = "admin-token-0123456789abcdef";
pub(crate) const WORKER: &str = "worker-token-0123456789abcdef";

/// Both tokens configured.
pub(crate) fn tokens() -> Tokens {
    Tokens {
        admin: Some(Secret::new(ADMIN, "test").expect("valid test token")),
        worker: Some(Secret::new(WORKER, "test").expect("valid test token")),
        viewer: None,
    }
}

/// `message` carrying `token` as a bearer token (none if `None`).
pub(crate) fn authed<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    }
    request
}

/// A coordinator with both tokens configured.
pub(crate) async fn spawn_secured() -> anyhow::Result<TestCoordinator> {
    spawn_configured(
        TempDir::new()?,
        ManualClock::new(1_700_000_000_000),
        3,
        Duration::from_millis(20),
        |c| c.tokens = tokens(),
        None,
    )
    .await
}

/// Every RPC with `token`; the status code of each (`None` for success), by method name.
async fn call_all(c: &TestCoordinator, token: Option<&str>, ids: &Ids) -> Vec<(&'static str, Option<(Code, String)>)> {
    let (mut s, mut w) = (c.sweeps.clone(), c.workers.clone());
    fn code<T>(r: Result<T, tonic::Status>) -> Option<(Code, String)> {
        r.err().map(|s| (s.code(), s.message().to_string()))
    }
    let sweep_id = ids.sweep.clone();
    let mut out = vec![
        (
            "SubmitSweep",
            code(
                s.submit_sweep(authed(pb::SubmitSweepRequest { sweep_toml: grid(1, 1), source: "t".into() }, token))
                    .await,
            ),
        ),
        ("ListSweeps", code(s.list_sweeps(authed(pb::ListSweepsRequest::default(), token)).await)),
        ("GetSweep", code(s.get_sweep(authed(pb::GetSweepRequest { sweep_id: sweep_id.clone() }, token)).await)),
        (
            "ListJobs",
            code(
                s.list_jobs(authed(
                    pb::ListJobsRequest { sweep_id: sweep_id.clone(), state: 0, ..Default::default() },
                    token,
                ))
                .await,
            ),
        ),
        ("WatchSweep", code(s.watch_sweep(authed(pb::WatchSweepRequest { sweep_id: sweep_id.clone() }, token)).await)),
        ("GetCurve", code(s.get_curve(authed(pb::GetCurveRequest { job_id: ids.job.clone() }, token)).await)),
        ("ListWorkers", code(s.list_workers(authed(pb::ListWorkersRequest::default(), token)).await)),
        (
            "RegisterWorker",
            code(
                w.register_worker(authed(
                    pb::RegisterWorkerRequest {
                        name: "w2".into(),
                        device: "cpu".into(),
                        trainer: "synthetic".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
            ),
        ),
        // The sweep's only job is leased already, so a granted call answers "no work".
        ("LeaseJob", code(w.lease_job(authed(pb::LeaseJobRequest { worker_id: ids.worker.clone() }, token)).await)),
        (
            "Heartbeat",
            code(
                w.heartbeat(authed(
                    pb::HeartbeatRequest {
                        worker_id: ids.worker.clone(),
                        job_id: ids.job.clone(),
                        attempt: 1,
                        step: 1,
                        total_steps: 10,
                    },
                    token,
                ))
                .await,
            ),
        ),
    ];
    let points = pb::ReportPointsRequest { job_id: ids.job.clone(), attempt: 1, points: train_points(2) };
    let stream = authed(tokio_stream::iter(vec![points]), token);
    out.push(("ReportPoints", code(w.report_points(stream).await)));
    // A wrong attempt: a granted call is FAILED_PRECONDITION, which still shows auth let it by.
    let fail = pb::FailJobRequest {
        worker_id: ids.worker.clone(),
        job_id: ids.job.clone(),
        attempt: 99,
        error: "x".into(),
        retryable: true,
        released: false,
    };
    out.push(("FailJob", code(w.fail_job(authed(fail, token)).await)));
    let complete = pb::CompleteJobRequest {
        worker_id: ids.worker.clone(),
        job_id: ids.job.clone(),
        attempt: 99,
        state: pb::JobState::Succeeded as i32,
        final_eval_loss: Some(1.0),
        tokens: 1,
        seconds: 1.0,
        ..Default::default()
    };
    out.push(("CompleteJob", code(w.complete_job(authed(complete, token)).await)));
    let mut a = c.artifacts.clone();
    let meta = pb::UploadArtifactMeta {
        worker_id: ids.worker.clone(),
        job_id: ids.job.clone(),
        attempt: 99,
        kind: pb::ArtifactKind::Checkpoint as i32,
        step: 1,
        size: 1,
        sha256: "0".repeat(64),
    };
    let upload = vec![pb::UploadArtifactRequest { part: Some(pb::upload_artifact_request::Part::Meta(meta)) }];
    out.push(("UploadArtifact", code(a.upload_artifact(authed(tokio_stream::iter(upload), token)).await)));
    let list = pb::ListArtifactsRequest { job_id: ids.job.clone(), kind: 0 };
    out.push(("ListArtifacts", code(a.list_artifacts(authed(list, token)).await)));
    let download = pb::DownloadArtifactRequest { job_id: ids.job.clone(), kind: 1, step: 1 };
    out.push(("DownloadArtifact", code(a.download_artifact(authed(download, token)).await)));
    let warning = pb::ReportJobWarningRequest {
        worker_id: ids.worker.clone(),
        job_id: ids.job.clone(),
        attempt: 99,
        message: "w".into(),
    };
    out.push(("ReportJobWarning", code(a.report_job_warning(authed(warning, token)).await)));
    // Retry before cancel: with nothing failed it requeues nothing; cancel last, it ends the sweep.
    out.push((
        "RetrySweep",
        code(s.retry_sweep(authed(pb::RetrySweepRequest { sweep_id: sweep_id.clone() }, token)).await),
    ));
    out.push(("CancelSweep", code(s.cancel_sweep(authed(pb::CancelSweepRequest { sweep_id }, token)).await)));
    out
}

struct Ids {
    sweep: String,
    job: String,
    worker: String,
}

/// Sets up a sweep with one leased job, through the admin and worker tokens.
async fn setup(c: &TestCoordinator) -> anyhow::Result<Ids> {
    let (mut s, mut w) = (c.sweeps.clone(), c.workers.clone());
    let sweep = s
        .submit_sweep(authed(pb::SubmitSweepRequest { sweep_toml: grid(1, 1), source: "t".into() }, Some(ADMIN)))
        .await?
        .into_inner()
        .sweep_id;
    let register = pb::RegisterWorkerRequest {
        name: "w".into(),
        device: "cpu".into(),
        trainer: "synthetic".into(),
        ..Default::default()
    };
    let worker = w.register_worker(authed(register, Some(WORKER))).await?.into_inner().worker_id;
    let lease = w.lease_job(authed(pb::LeaseJobRequest { worker_id: worker.clone() }, Some(WORKER))).await?;
    let job = lease.into_inner().lease.ok_or_else(|| anyhow::anyhow!("no lease"))?.job_id;
    Ok(Ids { sweep, job, worker })
}

const ADMIN_CALLS: [&str; 3] = ["SubmitSweep", "RetrySweep", "CancelSweep"];

/// The refusals `call_all` provokes on purpose once auth let a call through: stale attempts
/// (FAILED_PRECONDITION) and a download of an artifact that does not exist (NOT_FOUND).
fn assert_past_auth(method: &str, code: Code, message: &str) {
    match method {
        "FailJob" | "CompleteJob" | "UploadArtifact" | "ReportJobWarning" => {
            assert_eq!(code, Code::FailedPrecondition, "{method}: {message}");
        }
        "DownloadArtifact" => assert_eq!(code, Code::NotFound, "{method}: {message}"),
        _ => panic!("{method} refused past auth: {code:?} {message}"),
    }
}

#[tokio::test]
async fn missing_or_wrong_tokens_are_unauthenticated_and_store_nothing() -> anyhow::Result<()> {
    let c = spawn_secured().await?;
    let ids = setup(&c).await?;
    let before = c.counts().await?;
    for token in [None, Some("not-the-token-0123456789"), Some(&ADMIN[..ADMIN.len() - 1])] {
        let results = call_all(&c, token, &ids).await;
        assert_eq!(results.len(), 19, "every RPC of the three services is tried");
        for (method, result) in results {
            let (code, message) = result.unwrap_or_else(|| panic!("{method} with {token:?} was accepted"));
            assert_eq!(code, Code::Unauthenticated, "{method} with {token:?}: {message}");
            assert!(message.contains(method), "{method}: {message}");
            let needed = if ADMIN_CALLS.contains(&method) { "admin token" } else { "token" };
            assert!(message.contains(needed), "{method}: {message}");
            let why = if token.is_none() { "no token was sent" } else { "not valid" };
            assert!(message.contains(why), "{method}: {message}");
        }
    }
    // A header that is not `Bearer <token>`.
    let mut raw = Request::new(pb::ListSweepsRequest::default());
    raw.metadata_mut().insert("authorization", format!("Basic {ADMIN}").parse()?);
    let status = c.sweeps.clone().list_sweeps(raw).await.expect_err("Basic auth accepted");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("Bearer"), "{status:?}");
    assert_eq!(c.counts().await?, before, "no refused call changed the database");
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_worker_token_works_for_workers_and_reads_but_not_admin_calls() -> anyhow::Result<()> {
    let c = spawn_secured().await?;
    let ids = setup(&c).await?;
    let before = c.counts().await?;
    for (method, result) in call_all(&c, Some(WORKER), &ids).await {
        match result {
            Some((code, message)) if ADMIN_CALLS.contains(&method) => {
                assert_eq!(code, Code::PermissionDenied, "{method}: {message}");
                assert!(message.contains(method) && message.contains("admin token"), "{method}: {message}");
            }
            // The stale attempt 99 is refused by the lease check, past auth.
            Some((code, message)) => assert_past_auth(method, code, &message),
            None => assert!(!ADMIN_CALLS.contains(&method), "{method} accepted the worker token"),
        }
    }
    let after = c.counts().await?;
    // Only the granted worker calls wrote: a second worker and two points; no sweep, no cancel.
    let count = |v: &[(String, i64)], t: &str| v.iter().find(|(n, _)| n == t).map(|(_, n)| *n);
    assert_eq!(count(&after, "sweeps"), count(&before, "sweeps"), "SubmitSweep stored nothing");
    assert_eq!(count(&after, "workers"), count(&before, "workers").map(|n| n + 1));
    assert_eq!(count(&after, "loss_points"), Some(2));
    let mut s = c.sweeps.clone();
    let jobs = s
        .list_jobs(authed(
            pb::ListJobsRequest { sweep_id: ids.sweep.clone(), state: 0, ..Default::default() },
            Some(WORKER),
        ))
        .await?;
    assert_eq!(state(&jobs.into_inner().jobs[0]), pb::JobState::Running, "CancelSweep was refused");
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_admin_token_may_call_everything() -> anyhow::Result<()> {
    let c = spawn_secured().await?;
    let ids = setup(&c).await?;
    for (method, result) in call_all(&c, Some(ADMIN), &ids).await {
        if let Some((code, message)) = result {
            assert_past_auth(method, code, &message);
        }
    }
    let mut s = c.sweeps.clone();
    let sweeps = s.list_sweeps(authed(pb::ListSweepsRequest::default(), Some(ADMIN))).await?.into_inner().sweeps;
    assert_eq!(sweeps.len(), 2, "the admin's SubmitSweep was stored");
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn no_tokens_on_a_non_loopback_address_is_refused_before_anything_opens() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    // Bound to every interface but refused before serving: nothing is accepted on it.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let config = Config::new(dir.path().join("data"));
    let err = lorasweep_coordinator::serve(listener, config, CancellationToken::new())
        .await
        .expect_err("served without tokens on 0.0.0.0");
    assert!(matches!(err, Error::Unsafe(_)), "{err:?}");
    let text = err.to_string();
    for needle in ["0.0.0.0", "no token", "--admin-token-file", "--insecure", "127.0.0.1"] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(!dir.path().join("data").exists(), "the refusal created the data directory");

    let public = "10.1.2.3:50051".parse()?;
    let mut insecure = Config::new(dir.path());
    insecure.insecure = true;
    check_exposure(public, &insecure)?;
    let mut secured = Config::new(dir.path());
    secured.tokens = tokens();
    check_exposure(public, &secured)?;
    check_exposure("[::1]:50051".parse()?, &Config::new(dir.path()))?;
    assert!(check_exposure("[2001:db8::1]:1".parse()?, &Config::new(dir.path())).is_err());
    Ok(())
}

#[test]
fn the_binary_refuses_a_public_address_without_tokens() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lorasweep-coordinator"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("LORASWEEP_ADMIN_TOKEN")
        .env_remove("LORASWEEP_WORKER_TOKEN")
        .env_remove("LORASWEEP_INSECURE")
        .output()?;
    assert!(!output.status.success(), "the coordinator started without tokens on 0.0.0.0");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to start") && stderr.contains("--insecure"), "{stderr}");
    Ok(())
}
