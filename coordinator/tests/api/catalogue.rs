//! The catalogue of bad inputs: one table of refused calls against a coordinator with tokens,
//! each asserted to get its status code and a message naming what is wrong, none changing the
//! database. `BAD_INPUTS_REPORT=1 cargo test -p lorasweep-coordinator --test api catalogue --
//! --nocapture` prints the table (input, code, message) for review. The observability calls'
//! cases are in `catalogue_observe`, on the same setup.

use std::{future::Future, pin::Pin, time::Duration};

use lorasweep_coordinator::{ManualClock, limits};
use lorasweep_proto::pb;
use sha2::Digest;
use tempfile::TempDir;
use tonic::{Code, Status};

use crate::{
    helpers::*,
    security::{ADMIN, WORKER, authed, tokens},
};

pub(crate) type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

pub(crate) struct Case {
    input: String,
    code: Code,
    needle: String,
    call: Call,
}

pub(crate) fn case(input: impl Into<String>, code: Code, needle: impl Into<String>, call: Call) -> Case {
    Case { input: input.into(), code, needle: needle.into(), call }
}

/// A coordinator with tokens and a 100-point stream limit, a 2-job sweep, a registered worker
/// and its lease: what every catalogue case is refused against.
pub(crate) async fn setup() -> anyhow::Result<(TestCoordinator, String, pb::Lease)> {
    let c = spawn_configured(
        TempDir::new()?,
        ManualClock::new(1_700_000_000_000),
        3,
        Duration::from_millis(20),
        |config| {
            config.tokens = tokens();
            config.max_points_per_stream = 100;
        },
        None,
    )
    .await?;
    let submit_req = pb::SubmitSweepRequest { sweep_toml: grid(1, 2), source: "t.toml".into() };
    c.sweeps.clone().submit_sweep(authed(submit_req, Some(ADMIN))).await?;
    let register = pb::RegisterWorkerRequest {
        name: "w".into(),
        device: "cpu".into(),
        trainer: "synthetic".into(),
        ..Default::default()
    };
    let worker = c.workers.clone().register_worker(authed(register, Some(WORKER))).await?.into_inner().worker_id;
    let lease = c
        .workers
        .clone()
        .lease_job(authed(pb::LeaseJobRequest { worker_id: worker.clone() }, Some(WORKER)))
        .await?
        .into_inner()
        .lease
        .ok_or_else(|| anyhow::anyhow!("no lease"))?;
    Ok((c, worker, lease))
}

/// Runs every case, asserting its code and that its message names what is wrong (with
/// `BAD_INPUTS_REPORT` set, prints the table, numbered from `first`); then that the database is
/// as `before` and intact, and stops the coordinator.
pub(crate) async fn refuse_all(
    c: TestCoordinator,
    cases: Vec<Case>,
    before: Vec<(String, i64)>,
    first: usize,
) -> anyhow::Result<()> {
    let print = std::env::var_os("BAD_INPUTS_REPORT").is_some();
    for (i, Case { input, code, needle, call }) in cases.into_iter().enumerate() {
        let status = call.await.expect_err(&format!("accepted: {input}"));
        assert_eq!(status.code(), code, "{input}: {status:?}");
        assert!(status.message().contains(&needle), "{input}: {:?} does not mention {needle:?}", status.message());
        if print {
            let mut message: String = status.message().chars().take(160).collect();
            message = message.replace('|', "\\|").replace('\n', " ");
            println!("| {} | {} | {:?} | {} |", first + i, input.replace('|', "\\|"), status.code(), message);
        }
    }
    assert_eq!(c.counts().await?, before, "a refused call changed the database");
    c.assert_integrity().await?;
    c.stop().await?;
    Ok(())
}

#[tokio::test]
async fn every_bad_input_of_the_catalogue_is_refused_by_name_and_changes_nothing() -> anyhow::Result<()> {
    let (c, worker, lease) = setup().await?;
    let (s0, w0) = (c.sweeps.clone(), c.workers.clone());
    let (job, attempt) = (lease.job_id.clone(), lease.attempt);
    let before = c.counts().await?;

    // Call builders, each with a token.
    let submit = |toml: String, source: &str, token: Option<&str>| -> Call {
        let mut s = s0.clone();
        let req = authed(pb::SubmitSweepRequest { sweep_toml: toml, source: source.into() }, token);
        Box::pin(async move { s.submit_sweep(req).await.map(|_| ()) })
    };
    let toml = |text: &str| -> Call { submit(text.to_string(), "bad.toml", Some(ADMIN)) };
    let get_sweep = |id: String| -> Call {
        let mut s = s0.clone();
        Box::pin(
            async move { s.get_sweep(authed(pb::GetSweepRequest { sweep_id: id }, Some(WORKER))).await.map(|_| ()) },
        )
    };
    let register = |name: String, device: String, trainer: String| -> Call {
        let mut w = w0.clone();
        let req = authed(pb::RegisterWorkerRequest { name, device, trainer, ..Default::default() }, Some(WORKER));
        Box::pin(async move { w.register_worker(req).await.map(|_| ()) })
    };
    let heartbeat = |attempt: u32, step: u64, token: Option<&str>| -> Call {
        let mut w = w0.clone();
        let req =
            pb::HeartbeatRequest { worker_id: worker.clone(), job_id: job.clone(), attempt, step, total_steps: 0 };
        let req = authed(req, token);
        Box::pin(async move { w.heartbeat(req).await.map(|_| ()) })
    };
    let complete = |attempt: u32, state: i32, seconds: f64, tokens: u64| -> Call {
        let mut w = w0.clone();
        let req = pb::CompleteJobRequest {
            worker_id: worker.clone(),
            job_id: job.clone(),
            attempt,
            state,
            final_eval_loss: Some(1.0),
            tokens,
            seconds,
            ..Default::default()
        };
        let req = authed(req, Some(WORKER));
        Box::pin(async move { w.complete_job(req).await.map(|_| ()) })
    };
    let fail = |attempt: u32, error: String| -> Call {
        let mut w = w0.clone();
        let req = pb::FailJobRequest {
            worker_id: worker.clone(),
            job_id: job.clone(),
            attempt,
            error,
            retryable: true,
            released: false,
        };
        let req = authed(req, Some(WORKER));
        Box::pin(async move { w.fail_job(req).await.map(|_| ()) })
    };
    let report = |messages: Vec<(String, u32, Vec<pb::Point>)>, token: Option<&str>| -> Call {
        let mut w = w0.clone();
        let messages: Vec<pb::ReportPointsRequest> = messages
            .into_iter()
            .map(|(job_id, attempt, points)| pb::ReportPointsRequest { job_id, attempt, points })
            .collect();
        let req = authed(tokio_stream::iter(messages), token);
        Box::pin(async move { w.report_points(req).await.map(|_| ()) })
    };
    let point = |series: i32, step: u64| vec![pb::Point { series, step, loss: 1.0 }];
    let hex = |bytes: &[u8]| -> String { sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect() };
    // An upload stream: `meta` (if any) with the given fields, then `chunks`, with `token`.
    let upload = |meta: Option<(u32, i32, u64, u64, String)>, chunks: Vec<Vec<u8>>, token: Option<&str>| -> Call {
        use pb::upload_artifact_request::Part;
        let mut a = c.artifacts.clone();
        let mut msgs: Vec<pb::UploadArtifactRequest> = meta
            .into_iter()
            .map(|(attempt, kind, step, size, sha256)| pb::UploadArtifactRequest {
                part: Some(Part::Meta(pb::UploadArtifactMeta {
                    worker_id: worker.clone(),
                    job_id: job.clone(),
                    attempt,
                    kind,
                    step,
                    size,
                    sha256,
                })),
            })
            .collect();
        msgs.extend(chunks.into_iter().map(|c| pb::UploadArtifactRequest { part: Some(Part::Chunk(c)) }));
        let req = authed(tokio_stream::iter(msgs), token);
        Box::pin(async move { a.upload_artifact(req).await.map(|_| ()) })
    };
    let artifact_read = |job_id: String, kind: i32, download: bool| -> Call {
        let mut a = c.artifacts.clone();
        Box::pin(async move {
            if download {
                let req = authed(pb::DownloadArtifactRequest { job_id, kind, step: 1 }, Some(WORKER));
                a.download_artifact(req).await.map(|_| ())
            } else {
                a.list_artifacts(authed(pb::ListArtifactsRequest { job_id, kind }, Some(WORKER))).await.map(|_| ())
            }
        })
    };
    let warning = |attempt: u32, message: String| -> Call {
        let mut a = c.artifacts.clone();
        let req = pb::ReportJobWarningRequest { worker_id: worker.clone(), job_id: job.clone(), attempt, message };
        let req = authed(req, Some(WORKER));
        Box::pin(async move { a.report_job_warning(req).await.map(|_| ()) })
    };
    let ck = pb::ArtifactKind::Checkpoint as i32;
    let small = vec![1u8, 2, 3];
    let raw_header = |value: &str| -> Call {
        let mut s = s0.clone();
        let mut req = tonic::Request::new(pb::ListSweepsRequest::default());
        req.metadata_mut().insert("authorization", value.parse().expect("ascii header"));
        Box::pin(async move { s.list_sweeps(req).await.map(|_| ()) })
    };
    let (sweeps_any, workers_any) = (s0.clone(), w0.clone());
    let list_sweeps = move |token: Option<&str>| -> Call {
        let mut s = sweeps_any.clone();
        let req = authed(pb::ListSweepsRequest::default(), token);
        Box::pin(async move { s.list_sweeps(req).await.map(|_| ()) })
    };
    let lease_job = move |worker_id: String, token: Option<&str>| -> Call {
        let mut w = workers_any.clone();
        let req = authed(pb::LeaseJobRequest { worker_id }, token);
        Box::pin(async move { w.lease_job(req).await.map(|_| ()) })
    };
    let sweep_call = |method: &str, sweep_id: String, token: Option<&str>| -> Call {
        let mut s = s0.clone();
        let token = token.map(str::to_string);
        let method = method.to_string();
        Box::pin(async move {
            let t = token.as_deref();
            match method.as_str() {
                "cancel" => s.cancel_sweep(authed(pb::CancelSweepRequest { sweep_id }, t)).await.map(|_| ()),
                "retry" => s.retry_sweep(authed(pb::RetrySweepRequest { sweep_id }, t)).await.map(|_| ()),
                "curve" => s.get_curve(authed(pb::GetCurveRequest { job_id: sweep_id }, t)).await.map(|_| ()),
                _ => s
                    .list_jobs(authed(pb::ListJobsRequest { sweep_id, state: 17, ..Default::default() }, t))
                    .await
                    .map(|_| ()),
            }
        })
    };

    use Code::{FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated};
    let wrong = "not-the-token-0123456789abcdef";
    let near_admin = format!("{}X", &ADMIN[..ADMIN.len() - 1]);
    let (train, eval) = (pb::Series::Train as i32, pb::Series::Eval as i32);
    let cases = vec![
        // Auth.
        case("SubmitSweep without a token", Unauthenticated, "no token was sent", submit(grid(1, 1), "t", None)),
        case("SubmitSweep with a wrong token", Unauthenticated, "not valid", submit(grid(1, 1), "t", Some(wrong))),
        case(
            "SubmitSweep with the admin token's last byte changed",
            Unauthenticated,
            "not valid",
            submit(grid(1, 1), "t", Some(&near_admin)),
        ),
        case(
            "SubmitSweep with the worker token",
            PermissionDenied,
            "needs the admin token",
            submit(grid(1, 1), "t", Some(WORKER)),
        ),
        case(
            "CancelSweep with the worker token",
            PermissionDenied,
            "admin token",
            sweep_call("cancel", "x".into(), Some(WORKER)),
        ),
        case(
            "RetrySweep with the worker token",
            PermissionDenied,
            "admin token",
            sweep_call("retry", "x".into(), Some(WORKER)),
        ),
        case(
            "CancelSweep without a token",
            Unauthenticated,
            "CancelSweep needs the admin token",
            sweep_call("cancel", "x".into(), None),
        ),
        case("ListSweeps without a token", Unauthenticated, "a valid token", list_sweeps(None)),
        case("ListSweeps with a wrong token", Unauthenticated, "not valid", list_sweeps(Some(wrong))),
        case("GetCurve with a wrong token", Unauthenticated, "GetCurve", sweep_call("curve", job.clone(), Some(wrong))),
        case("LeaseJob without a token", Unauthenticated, "worker token", lease_job(worker.clone(), None)),
        case("LeaseJob with a wrong token", Unauthenticated, "not valid", lease_job(worker.clone(), Some(wrong))),
        case("Heartbeat without a token", Unauthenticated, "Heartbeat", heartbeat(attempt, 1, None)),
        case(
            "ReportPoints with a wrong token",
            Unauthenticated,
            "ReportPoints",
            report(vec![(job.clone(), attempt, point(train, 1))], Some(wrong)),
        ),
        case("authorization: <token> (no Bearer)", Unauthenticated, "Bearer", raw_header(ADMIN)),
        case("authorization: Basic <token>", Unauthenticated, "Bearer", raw_header(&format!("Basic {ADMIN}"))),
        case("authorization: Bearer (empty token)", Unauthenticated, "not valid", raw_header("Bearer ")),
        case(
            "authorization: Bearer <token> <token>",
            Unauthenticated,
            "not valid",
            raw_header(&format!("Bearer {ADMIN} {ADMIN}")),
        ),
        // Size limits.
        case(
            format!("SubmitSweep message of {} bytes", limits::MAX_MESSAGE_BYTES + 20),
            ResourceExhausted,
            limits::MAX_MESSAGE_BYTES.to_string(),
            toml(&format!("# {}", "y".repeat(limits::MAX_MESSAGE_BYTES))),
        ),
        case(
            "sweep file of 1 MiB + 3 bytes",
            InvalidArgument,
            "1048576",
            toml(&format!("# {}\n", "y".repeat(1 << 20))),
        ),
        case(
            "grid of 5 inits × 50 lrs × 50 seeds = 12500 jobs",
            InvalidArgument,
            "allowed: at most 10000",
            toml(&format!(
                "[grid]\nlrs = [{}]\nseeds = [{}]\n",
                (1..=50).map(|i| format!("{i}e-5")).collect::<Vec<_>>().join(","),
                (0..50).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
            )),
        ),
        case(
            "sweep name of 300 bytes",
            InvalidArgument,
            "at most 256",
            toml(&format!("name = \"{}\"", "n".repeat(300))),
        ),
        case(
            "model.path of 5001 bytes",
            InvalidArgument,
            "at most 4096",
            toml(&format!("[model]\npath = \"/{}\"", "p".repeat(5000))),
        ),
        case(
            "data.path of 5001 bytes",
            InvalidArgument,
            "at most 4096",
            toml(&format!("[data]\npath = \"/{}\"", "d".repeat(5000))),
        ),
        case(
            "SubmitSweep source of 5000 bytes",
            InvalidArgument,
            "at most 4096",
            submit(grid(1, 1), &"s".repeat(5000), Some(ADMIN)),
        ),
        case(
            "worker name of 300 bytes",
            InvalidArgument,
            "at most 256",
            register("w".repeat(300), "cpu".into(), String::new()),
        ),
        case(
            "worker device of 257 bytes",
            InvalidArgument,
            "device",
            register("w".into(), "d".repeat(257), String::new()),
        ),
        case(
            "worker trainer of 300 bytes",
            InvalidArgument,
            "trainer",
            register("w".into(), "cpu".into(), "t".repeat(300)),
        ),
        case(
            "FailJob error of 64 KiB + 1",
            InvalidArgument,
            "65536",
            fail(attempt, "e".repeat(limits::MAX_ERROR_LEN + 1)),
        ),
        case(
            "GetCurve job_id of 129 bytes",
            InvalidArgument,
            "at most 128",
            sweep_call("curve", "j".repeat(129), Some(ADMIN)),
        ),
        case(
            "LeaseJob worker_id of 1000 bytes",
            InvalidArgument,
            "worker_id",
            lease_job("w".repeat(1000), Some(WORKER)),
        ),
        case(
            "ReportPoints message of 400000 points (> 4 MiB)",
            ResourceExhausted,
            limits::MAX_MESSAGE_BYTES.to_string(),
            report(vec![(job.clone(), attempt, train_points(400_000))], Some(WORKER)),
        ),
        case(
            "ReportPoints stream of 101 points (limit set to 100), in one message",
            ResourceExhausted,
            "at most 100 points per stream",
            report(vec![(job.clone(), attempt, train_points(101))], Some(WORKER)),
        ),
        // Sweep files.
        case("lrs = [nan]", InvalidArgument, "grid.lrs[0]", toml("[grid]\nlrs = [nan]")),
        case("lrs = [inf]", InvalidArgument, "grid.lrs[0]", toml("[grid]\nlrs = [inf]")),
        case("lrs = [-1e-4]", InvalidArgument, "grid.lrs[0]", toml("[grid]\nlrs = [-1e-4]")),
        case("lrs = [0.0]", InvalidArgument, "grid.lrs[0]", toml("[grid]\nlrs = [0.0]")),
        case("lrs = [1e-4, 1e-4]", InvalidArgument, "grid.lrs", toml("[grid]\nlrs = [1e-4, 1e-4]")),
        case("lrs = [\"fast\"]", InvalidArgument, "grid.lrs", toml("[grid]\nlrs = [\"fast\"]")),
        case("lrs = [[1e-4]]", InvalidArgument, "grid.lrs", toml("[grid]\nlrs = [[1e-4]]")),
        case("lrs = []", InvalidArgument, "grid.lrs", toml("[grid]\nlrs = []")),
        case("inits = [\"xavier\"]", InvalidArgument, "ortho-eye", toml("[grid]\ninits = [\"xavier\"]")),
        case(
            "inits = [\"standard\", \"standard\"]",
            InvalidArgument,
            "grid.inits",
            toml("[grid]\ninits = [\"standard\", \"standard\"]"),
        ),
        case("seeds = [-1]", InvalidArgument, "grid.seeds", toml("[grid]\nseeds = [-1]")),
        case("seeds = [1.5]", InvalidArgument, "grid.seeds", toml("[grid]\nseeds = [1.5]")),
        case("seeds = [18446744073709551616]", InvalidArgument, "TOML", toml("[grid]\nseeds = [18446744073709551616]")),
        case("lora.r = 0", InvalidArgument, "lora.r", toml("[lora]\nr = 0")),
        case("lora.r = -8", InvalidArgument, "lora.r", toml("[lora]\nr = -8")),
        case("lora.alpha = 0", InvalidArgument, "lora.alpha", toml("[lora]\nalpha = 0.0")),
        case("lora.dropout = 1.0", InvalidArgument, "lora.dropout", toml("[lora]\ndropout = 1.0")),
        case("lora.targets = [\"attn\"]", InvalidArgument, "lora.targets[0]", toml("[lora]\ntargets = [\"attn\"]")),
        case("lora.targets = []", InvalidArgument, "lora.targets", toml("[lora]\ntargets = []")),
        case("model.dtype = \"f16\"", InvalidArgument, "model.dtype", toml("[model]\ndtype = \"f16\"")),
        case("model.path = \"\"", InvalidArgument, "model.path", toml("[model]\npath = \"\"")),
        case("data.max_length = 1", InvalidArgument, "data.max_length", toml("[data]\nmax_length = 1")),
        case("train.batch = 4 (unknown key)", InvalidArgument, "train.batch", toml("[train]\nbatch = 4")),
        case("train.eval_every = 0", InvalidArgument, "train.eval_every", toml("[train]\neval_every = 0")),
        case("train.warmup_ratio = 2", InvalidArgument, "train.warmup_ratio", toml("[train]\nwarmup_ratio = 2.0")),
        case("train.max_grad_norm = -1", InvalidArgument, "train.max_grad_norm", toml("[train]\nmax_grad_norm = -1.0")),
        case("train.weight_decay = nan", InvalidArgument, "train.weight_decay", toml("[train]\nweight_decay = nan")),
        case("top-level foo = 1", InvalidArgument, "foo", toml("foo = 1")),
        case("grid = 3 (not a table)", InvalidArgument, "expected a table", toml("grid = 3")),
        case("name = \"\"", InvalidArgument, "name", toml("name = \"\"")),
        case("name = 5", InvalidArgument, "expected a string", toml("name = 5")),
        case("\"not toml at all\"", InvalidArgument, "TOML", toml("not toml at all")),
        case(
            "lrs nested 5000 arrays deep",
            InvalidArgument,
            "TOML",
            toml(&format!("[grid]\nlrs = {}1{}", "[".repeat(5000), "]".repeat(5000))),
        ),
        case("NUL byte inside a key", InvalidArgument, "TOML", toml("na\u{0}me = 1")),
        // Malformed RPCs.
        case("GetSweep with an empty id", InvalidArgument, "empty", get_sweep(String::new())),
        case("GetSweep \"nope\"", NotFound, "nope", get_sweep("nope".into())),
        case("GetSweep \"'; DROP TABLE jobs; --\"", NotFound, "DROP TABLE", get_sweep("'; DROP TABLE jobs; --".into())),
        case(
            "GetSweep with NUL and RTL-override characters",
            NotFound,
            "no sweep with id",
            get_sweep("\u{0}\u{202e}x".into()),
        ),
        case("ListJobs state = 17", InvalidArgument, "17", sweep_call("jobs", "x".into(), Some(ADMIN))),
        case(
            "CancelSweep of an unknown sweep",
            NotFound,
            "missing",
            sweep_call("cancel", "missing".into(), Some(ADMIN)),
        ),
        case("GetCurve of an unknown job", NotFound, "ghost", sweep_call("curve", "ghost".into(), Some(ADMIN))),
        case(
            "RegisterWorker with an empty name",
            InvalidArgument,
            "name is empty",
            register(String::new(), String::new(), String::new()),
        ),
        case(
            "RegisterWorker with a blank name",
            InvalidArgument,
            "name is empty",
            register("   ".into(), String::new(), String::new()),
        ),
        case(
            "LeaseJob for an unregistered worker",
            NotFound,
            "RegisterWorker",
            lease_job("ghost".into(), Some(WORKER)),
        ),
        case("Heartbeat attempt 0", InvalidArgument, "attempt 0", heartbeat(0, 1, Some(WORKER))),
        case("Heartbeat stale attempt 9", FailedPrecondition, "stale", heartbeat(9, 1, Some(WORKER))),
        case("Heartbeat step = u64::MAX", InvalidArgument, "too large", heartbeat(attempt, u64::MAX, Some(WORKER))),
        case(
            "CompleteJob state QUEUED",
            InvalidArgument,
            "SUCCEEDED",
            complete(attempt, pb::JobState::Queued as i32, 1.0, 1),
        ),
        case("CompleteJob state 99", InvalidArgument, "99", complete(attempt, 99, 1.0, 1)),
        case("CompleteJob seconds NaN", InvalidArgument, "seconds", complete(attempt, 3, f64::NAN, 1)),
        case("CompleteJob seconds -1", InvalidArgument, "seconds", complete(attempt, 3, -1.0, 1)),
        case("CompleteJob seconds +inf", InvalidArgument, "seconds", complete(attempt, 3, f64::INFINITY, 1)),
        case("CompleteJob tokens = u64::MAX", InvalidArgument, "tokens", complete(attempt, 3, 1.0, u64::MAX)),
        case("CompleteJob stale attempt 7", FailedPrecondition, "stale", complete(7, 3, 1.0, 1)),
        case("FailJob attempt 0", InvalidArgument, "attempt 0", fail(0, "x".into())),
        case("FailJob stale attempt 5", FailedPrecondition, "stale", fail(5, "x".into())),
        case(
            "ReportPoints series 0",
            InvalidArgument,
            "series",
            report(vec![(job.clone(), attempt, point(0, 1))], Some(WORKER)),
        ),
        case(
            "ReportPoints series 7",
            InvalidArgument,
            "series",
            report(vec![(job.clone(), attempt, point(7, 1))], Some(WORKER)),
        ),
        case(
            "ReportPoints step = u64::MAX",
            InvalidArgument,
            "step",
            report(vec![(job.clone(), attempt, point(eval, u64::MAX))], Some(WORKER)),
        ),
        case(
            "ReportPoints stream naming two jobs",
            InvalidArgument,
            "same job",
            report(vec![(job.clone(), attempt, vec![]), ("other".into(), attempt, vec![])], Some(WORKER)),
        ),
        case(
            "ReportPoints for an unknown job",
            NotFound,
            "ghost",
            report(vec![("ghost".into(), 1, point(train, 1))], Some(WORKER)),
        ),
        case(
            "ReportPoints stale attempt",
            FailedPrecondition,
            "stale",
            report(vec![(job.clone(), attempt + 3, point(train, 1))], Some(WORKER)),
        ),
        case(
            "ReportPoints attempt 0",
            InvalidArgument,
            "attempt 0",
            report(vec![(job.clone(), 0, point(train, 1))], Some(WORKER)),
        ),
        // Artifacts.
        case(
            "UploadArtifact without a token",
            Unauthenticated,
            "UploadArtifact needs the worker token",
            upload(Some((attempt, ck, 1, 3, hex(&small))), vec![small.clone()], None),
        ),
        case(
            "UploadArtifact declaring 8 GiB + 1 bytes",
            InvalidArgument,
            "8589934592",
            upload(Some((attempt, ck, 1, (8 << 30) + 1, hex(&small))), vec![small.clone()], Some(WORKER)),
        ),
        case(
            "UploadArtifact chunk of 1 MiB + 1 bytes",
            InvalidArgument,
            "at most 1048576",
            upload(Some((attempt, ck, 1, 2 << 20, hex(&small))), vec![vec![0; (1 << 20) + 1]], Some(WORKER)),
        ),
        case(
            "UploadArtifact sending more bytes than declared",
            InvalidArgument,
            "more bytes than the declared size",
            upload(Some((attempt, ck, 1, 2, hex(&small))), vec![small.clone()], Some(WORKER)),
        ),
        case(
            "UploadArtifact whose bytes do not match the declared sha256",
            InvalidArgument,
            "does not match",
            upload(Some((attempt, ck, 1, 3, hex(b"other"))), vec![small.clone()], Some(WORKER)),
        ),
        case(
            "UploadArtifact with a sha256 that is not hex",
            InvalidArgument,
            "64 hex digits",
            upload(Some((attempt, ck, 1, 3, "zz".repeat(32))), vec![small.clone()], Some(WORKER)),
        ),
        case(
            "UploadArtifact starting with a chunk, no meta",
            InvalidArgument,
            "must carry meta",
            upload(None, vec![small.clone()], Some(WORKER)),
        ),
        case(
            "UploadArtifact of kind 0",
            InvalidArgument,
            "not an artifact kind",
            upload(Some((attempt, 0, 1, 3, hex(&small))), vec![small.clone()], Some(WORKER)),
        ),
        case(
            "UploadArtifact at step u64::MAX",
            InvalidArgument,
            "step",
            upload(Some((attempt, ck, u64::MAX, 3, hex(&small))), vec![small.clone()], Some(WORKER)),
        ),
        case(
            "UploadArtifact of a stale attempt",
            FailedPrecondition,
            "stale",
            upload(Some((attempt + 1, ck, 1, 3, hex(&small))), vec![small.clone()], Some(WORKER)),
        ),
        case("ListArtifacts of kind 9", InvalidArgument, "not an artifact kind", artifact_read(job.clone(), 9, false)),
        case("ListArtifacts of \"../../etc\"", NotFound, "../../etc", artifact_read("../../etc".into(), 0, false)),
        case(
            "DownloadArtifact that was never uploaded",
            NotFound,
            "has no checkpoint",
            artifact_read(job.clone(), ck, true),
        ),
        case(
            "ReportJobWarning of 64 KiB + 1",
            InvalidArgument,
            "65536",
            warning(attempt, "w".repeat(limits::MAX_ERROR_LEN + 1)),
        ),
        case("ReportJobWarning of a stale attempt", FailedPrecondition, "stale", warning(attempt + 2, "w".into())),
    ];
    let n = cases.len();
    assert!(n >= 50, "the catalogue has {n} inputs");
    refuse_all(c, cases, before, 1).await
}
