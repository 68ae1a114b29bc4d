//! The catalogue of bad inputs, continued: the observability calls (GetJob, events, logs,
//! paging tokens, ResumeSweep, ReportResumed, ShipLogs) and the sweep keys and completion fields
//! they brought. Same setup and checks as `catalogue`: each call is refused with its code and a
//! message naming what is wrong, and none changes the database.

use lorasweep_proto::pb;
use tonic::Code;

use crate::{
    catalogue::{Call, case, refuse_all, setup},
    security::{ADMIN, WORKER, authed},
};

#[tokio::test]
async fn every_bad_input_of_the_observability_calls_is_refused_by_name_and_changes_nothing() -> anyhow::Result<()> {
    let (c, worker, lease) = setup().await?;
    let (s0, w0) = (c.sweeps.clone(), c.workers.clone());
    let (job, attempt) = (lease.job_id.clone(), lease.attempt);
    let before = c.counts().await?;
    let toml = |text: &str| -> Call {
        let mut s = s0.clone();
        let req = authed(pb::SubmitSweepRequest { sweep_toml: text.into(), source: "bad.toml".into() }, Some(ADMIN));
        Box::pin(async move { s.submit_sweep(req).await.map(|_| ()) })
    };
    // The observability calls.
    let observe = |what: &'static str, id: String, token_text: String| -> Call {
        let (mut s, mut w, mut a) = (s0.clone(), w0.clone(), c.artifacts.clone());
        let (worker, job) = (worker.clone(), job.clone());
        Box::pin(async move {
            let t = Some(if what == "resume-worker" { WORKER } else { ADMIN });
            match what {
                "get_job" => s.get_job(authed(pb::GetJobRequest { job_id: id }, t)).await.map(|_| ()),
                "events" => s
                    .list_events(authed(pb::ListEventsRequest { id, page_size: 0, page_token: token_text }, t))
                    .await
                    .map(|_| ()),
                "follow_events" => s
                    .follow_events(authed(pb::ListEventsRequest { id, page_size: 0, page_token: token_text }, t))
                    .await
                    .map(|_| ()),
                "logs" => s
                    .list_logs(authed(
                        pb::ListLogsRequest { job_id: id, attempt: 0, page_size: 0, page_token: token_text },
                        t,
                    ))
                    .await
                    .map(|_| ()),
                "jobs_page" => s
                    .list_jobs(authed(
                        pb::ListJobsRequest { sweep_id: id, page_token: token_text, ..Default::default() },
                        t,
                    ))
                    .await
                    .map(|_| ()),
                "sweeps_page" => s
                    .list_sweeps(authed(pb::ListSweepsRequest { page_size: 0, page_token: token_text }, t))
                    .await
                    .map(|_| ()),
                "resume" | "resume-worker" => {
                    s.resume_sweep(authed(pb::ResumeSweepRequest { sweep_id: id }, t)).await.map(|_| ())
                }
                "resumed" => a
                    .report_resumed(authed(
                        pb::ReportResumedRequest { worker_id: worker, job_id: job, attempt: 9, step: 3 },
                        Some(WORKER),
                    ))
                    .await
                    .map(|_| ()),
                level => {
                    let record = pb::LogRecord { level: level.into(), message: token_text, ..Default::default() };
                    let req = pb::ShipLogsRequest {
                        worker_id: id,
                        job_id: job,
                        attempt: 1,
                        records: vec![record],
                        dropped: 0,
                    };
                    w.ship_logs(authed(req, Some(WORKER))).await.map(|_| ())
                }
            }
        })
    };
    let sweep_of_job = s0
        .clone()
        .list_sweeps(authed(pb::ListSweepsRequest::default(), Some(ADMIN)))
        .await?
        .into_inner()
        .sweeps
        .remove(0)
        .id;
    use Code::{FailedPrecondition, InvalidArgument, NotFound, PermissionDenied};
    let cases = vec![
        // Observability: unknown ids, bad page tokens, steering a sweep that is not paused,
        // logs and resumes of attempts that are not the caller's.
        case(
            "GetJob of an unknown job",
            NotFound,
            "no job with id \"ghost\"",
            observe("get_job", "ghost".into(), String::new()),
        ),
        case(
            "ListEvents of an unknown id",
            NotFound,
            "no sweep or job",
            observe("events", "ghost".into(), String::new()),
        ),
        case(
            "FollowEvents of an unknown id",
            NotFound,
            "no sweep or job",
            observe("follow_events", "ghost".into(), String::new()),
        ),
        case("ListLogs of an unknown job", NotFound, "no job", observe("logs", "ghost".into(), String::new())),
        case(
            "ListEvents with a malformed page token",
            InvalidArgument,
            "page_token",
            observe("events", job.clone(), "e:x".into()),
        ),
        case(
            "ListLogs with another call's page token",
            InvalidArgument,
            "page_token",
            observe("logs", job.clone(), "j:3".into()),
        ),
        case(
            "ListJobs with a negative page token",
            InvalidArgument,
            "page_token",
            observe("jobs_page", sweep_of_job.clone(), "j:-1".into()),
        ),
        case(
            "ListSweeps with a garbage page token",
            InvalidArgument,
            "page_token",
            observe("sweeps_page", String::new(), "🙃".into()),
        ),
        case(
            "ResumeSweep of a sweep that is not paused",
            FailedPrecondition,
            "not paused",
            observe("resume", sweep_of_job.clone(), String::new()),
        ),
        case("ResumeSweep of an unknown sweep", NotFound, "no sweep", observe("resume", "ghost".into(), String::new())),
        case(
            "ResumeSweep with the worker token",
            PermissionDenied,
            "admin token",
            observe("resume-worker", sweep_of_job.clone(), String::new()),
        ),
        case(
            "ReportResumed of a stale attempt",
            FailedPrecondition,
            "stale",
            observe("resumed", String::new(), String::new()),
        ),
        case(
            "ShipLogs at DEBUG",
            InvalidArgument,
            "allowed: ERROR, WARN, INFO",
            observe("DEBUG", worker.clone(), "m".into()),
        ),
        case(
            "ShipLogs of a 5000-byte message",
            InvalidArgument,
            "4096",
            observe("INFO", worker.clone(), "m".repeat(5000)),
        ),
        case(
            "ShipLogs from a worker that never held the attempt",
            FailedPrecondition,
            "never held",
            observe("INFO", "w-other".into(), "m".into()),
        ),
        case("fail_fast = 0", InvalidArgument, "`fail_fast`", toml("fail_fast = 0")),
        case("fail_fast = -1", InvalidArgument, "`fail_fast`", toml("fail_fast = -1")),
        case("CompleteJob SUCCEEDED with a diverged_step", InvalidArgument, "diverged_step", {
            let mut w = w0.clone();
            let req = pb::CompleteJobRequest {
                worker_id: worker.clone(),
                job_id: job.clone(),
                attempt,
                state: pb::JobState::Succeeded as i32,
                diverged_step: Some(3),
                ..Default::default()
            };
            let req = authed(req, Some(WORKER));
            Box::pin(async move { w.complete_job(req).await.map(|_| ()) })
        }),
    ];
    refuse_all(c, cases, before, 1000).await
}
