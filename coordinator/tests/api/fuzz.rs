//! Property test of every RPC handler on random input against one live coordinator: no call
//! panics or fails internally, every refused call leaves the database exactly as it was (no
//! partial write), and the database passes SQLite's integrity and foreign-key checks afterwards.
//!
//! Inputs mix live ids (so calls reach past id validation into the lease checks) with random
//! strings, random attempts, NaN/inf floats, out-of-range enums and random sweep files.

use std::sync::Mutex;

use lorasweep_proto::pb;
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config as RunnerConfig, TestRunner},
};
use sha2::Digest as _;
use tonic::Code;

use crate::helpers::*;

/// An id: one of the coordinator's live ids, or a random string.
#[derive(Debug, Clone)]
enum Id {
    Live(Index),
    Raw(String),
}

#[derive(Debug, Clone)]
enum Call {
    Submit {
        toml: String,
        source: String,
    },
    ListSweeps,
    GetSweep(Id),
    ListJobs(Id, i32),
    Watch(Id),
    Cancel(Id),
    Retry(Id),
    Curve(Id),
    ListWorkers,
    Register {
        name: String,
        device: String,
        trainer: String,
    },
    Lease(Id),
    Heartbeat {
        worker: Id,
        job: Id,
        attempt: u32,
        step: u64,
        total: u64,
    },
    Report {
        job: Id,
        attempt: u32,
        points: Vec<(i32, u64, f64)>,
    },
    Complete {
        worker: Id,
        job: Id,
        attempt: u32,
        state: i32,
        loss: Option<f64>,
        tokens: u64,
        seconds: f64,
    },
    Fail {
        worker: Id,
        job: Id,
        attempt: u32,
        error: String,
        retryable: bool,
        released: bool,
    },
    Upload {
        worker: Id,
        job: Id,
        attempt: u32,
        kind: i32,
        step: u64,
        size: u64,
        sha: Option<String>,
        chunks: Vec<Vec<u8>>,
    },
    ListArtifacts(Id, i32),
    Download(Id, i32, u64),
    Warning {
        worker: Id,
        job: Id,
        attempt: u32,
        message: String,
    },
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,24}",
        1 => Just(String::new()),
        1 => Just("   ".to_string()),
        1 => (100usize..400).prop_map(|n| "z".repeat(n)),
        1 => Just("'; DROP TABLE jobs; --".to_string()),
        1 => Just("\u{0}\u{202e}\u{fffd}".to_string()),
    ]
}

fn id() -> impl Strategy<Value = Id> {
    prop_oneof![3 => any::<Index>().prop_map(Id::Live), 1 => text().prop_map(Id::Raw)]
}

fn attempt() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..4, 1 => any::<u32>()]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![3 => 0.0f64..10.0, 1 => prop::num::f64::ANY]
}

fn big() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..100, 1 => any::<u64>()]
}

fn sweep_toml() -> impl Strategy<Value = String> {
    let lr = prop_oneof![
        (1u32..9).prop_map(|v| format!("{v}e-4")),
        Just("nan".into()),
        Just("-1.0".into()),
        Just("0".into())
    ];
    let init = prop::sample::select(vec!["\"standard\"", "\"reversed\"", "\"ortho-eye\"", "\"xavier\"", "1"]);
    let seed = prop_oneof![(0i64..5).prop_map(|v| v.to_string()), Just("-3".to_string()), Just("1.5".to_string())];
    // Mostly valid grids (so leases and point reports reach live jobs), the rest anything.
    let valid = (
        prop::sample::subsequence(vec!["\"standard\"", "\"reversed\"", "\"ortho-eye\""], 1..3),
        prop::sample::subsequence(vec!["1e-4", "2e-4", "5e-4"], 1..3),
        prop::sample::subsequence(vec!["1", "2", "3"], 1..3),
    )
        .prop_map(|(inits, lrs, seeds)| {
            format!(
                "name = \"fuzz\"\n[grid]\ninits = [{}]\nlrs = [{}]\nseeds = [{}]\n",
                inits.join(","),
                lrs.join(","),
                seeds.join(",")
            )
        });
    prop_oneof![
        2 => valid,
        3 => (
            text(),
            prop::collection::vec(init, 0..3),
            prop::collection::vec(lr, 0..3),
            prop::collection::vec(seed, 0..3),
        )
            .prop_map(|(name, inits, lrs, seeds)| {
                format!(
                    "name = {name:?}\n[grid]\ninits = [{}]\nlrs = [{}]\nseeds = [{}]\n",
                    inits.join(","),
                    lrs.join(","),
                    seeds.join(",")
                )
            }),
        1 => "\\PC{0,80}",
    ]
}

/// Point lists: mostly valid (so they are stored), sometimes with a bad series, step or loss.
fn points() -> impl Strategy<Value = Vec<(i32, u64, f64)>> {
    prop_oneof![
        2 => prop::collection::vec((1i32..3, 0u64..1000, prop::num::f64::ANY), 0..20),
        1 => prop::collection::vec((prop_oneof![0i32..3, any::<i32>()], big(), float()), 0..20),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        3 => (sweep_toml(), text()).prop_map(|(toml, source)| Call::Submit { toml, source }),
        1 => Just(Call::ListSweeps),
        1 => id().prop_map(Call::GetSweep),
        1 => (id(), prop_oneof![0i32..7, any::<i32>()]).prop_map(|(i, s)| Call::ListJobs(i, s)),
        1 => id().prop_map(Call::Watch),
        1 => id().prop_map(Call::Cancel),
        1 => id().prop_map(Call::Retry),
        1 => id().prop_map(Call::Curve),
        1 => Just(Call::ListWorkers),
        2 => (text(), text(), text()).prop_map(|(name, device, trainer)| Call::Register { name, device, trainer }),
        3 => id().prop_map(Call::Lease),
        3 => (id(), id(), attempt(), big(), big())
            .prop_map(|(worker, job, attempt, step, total)| Call::Heartbeat { worker, job, attempt, step, total }),
        3 => (id(), attempt(), points())
            .prop_map(|(job, attempt, points)| Call::Report { job, attempt, points }),
        3 => (
            id(),
            id(),
            attempt(),
            prop_oneof![3i32..6, any::<i32>()],
            proptest::option::of(float()),
            big(),
            float(),
        )
            .prop_map(|(worker, job, attempt, state, loss, tokens, seconds)| Call::Complete {
                worker,
                job,
                attempt,
                state,
                loss,
                tokens,
                seconds,
            }),
        2 => (id(), id(), attempt(), text(), any::<bool>(), any::<bool>()).prop_map(
            |(worker, job, attempt, error, retryable, released)| Call::Fail {
                worker,
                job,
                attempt,
                error,
                retryable,
                released
            }
        ),
        2 => (
            (id(), id(), attempt()),
            prop_oneof![3 => 1i32..3, 1 => any::<i32>()],
            big(),
            prop_oneof![0u64..64, any::<u64>()],
            prop_oneof![3 => Just(None), 1 => prop_oneof!["[0-9a-f]{64}", "\\PC{0,70}"].prop_map(Some)],
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4),
        )
            .prop_map(|((worker, job, attempt), kind, step, size, sha, chunks)| Call::Upload {
                worker,
                job,
                attempt,
                kind,
                step,
                size,
                sha,
                chunks
            }),
        1 => (id(), prop_oneof![0i32..3, any::<i32>()]).prop_map(|(i, k)| Call::ListArtifacts(i, k)),
        1 => (id(), prop_oneof![0i32..3, any::<i32>()], big()).prop_map(|(i, k, s)| Call::Download(i, k, s)),
        1 => (id(), id(), attempt(), text())
            .prop_map(|(worker, job, attempt, message)| Call::Warning { worker, job, attempt, message }),
    ]
}

/// Live ids seen so far (sweeps, jobs, workers mixed: a wrong kind of id is an input too).
#[derive(Debug, Default)]
struct Pool(Vec<String>);

impl Pool {
    fn get(&self, id: &Id) -> String {
        match id {
            Id::Live(i) if !self.0.is_empty() => self.0[i.index(self.0.len())].clone(),
            Id::Live(_) => String::new(),
            Id::Raw(s) => s.clone(),
        }
    }
}

/// Runs one call; returns its refusal (if any) and ids it revealed.
async fn run(c: &TestCoordinator, pool: &Pool, call: &Call) -> (Option<tonic::Status>, Vec<String>) {
    let (mut s, mut w) = (c.sweeps.clone(), c.workers.clone());
    let id = |i: &Id| pool.get(i);
    let result: Result<Vec<String>, tonic::Status> = async {
        Ok(match call {
            Call::Submit { toml, source } => {
                let r =
                    s.submit_sweep(pb::SubmitSweepRequest { sweep_toml: toml.clone(), source: source.clone() }).await?;
                let sweep_id = r.into_inner().sweep_id;
                let jobs = s
                    .list_jobs(pb::ListJobsRequest { sweep_id: sweep_id.clone(), state: 0, ..Default::default() })
                    .await?;
                std::iter::once(sweep_id).chain(jobs.into_inner().jobs.into_iter().map(|j| j.id)).collect()
            }
            Call::ListSweeps => s.list_sweeps(pb::ListSweepsRequest::default()).await.map(|_| vec![])?,
            Call::GetSweep(i) => s.get_sweep(pb::GetSweepRequest { sweep_id: id(i) }).await.map(|_| vec![])?,
            Call::ListJobs(i, state) => s
                .list_jobs(pb::ListJobsRequest { sweep_id: id(i), state: *state, ..Default::default() })
                .await
                .map(|_| vec![])?,
            Call::Watch(i) => {
                let mut stream = s.watch_sweep(pb::WatchSweepRequest { sweep_id: id(i) }).await?.into_inner();
                stream.message().await?;
                vec![]
            }
            Call::Cancel(i) => s.cancel_sweep(pb::CancelSweepRequest { sweep_id: id(i) }).await.map(|_| vec![])?,
            Call::Retry(i) => s.retry_sweep(pb::RetrySweepRequest { sweep_id: id(i) }).await.map(|_| vec![])?,
            Call::Curve(i) => s.get_curve(pb::GetCurveRequest { job_id: id(i) }).await.map(|_| vec![])?,
            Call::ListWorkers => s.list_workers(pb::ListWorkersRequest::default()).await.map(|_| vec![])?,
            Call::Register { name, device, trainer } => {
                let r = w
                    .register_worker(pb::RegisterWorkerRequest {
                        name: name.clone(),
                        device: device.clone(),
                        trainer: trainer.clone(),
                        ..Default::default()
                    })
                    .await?;
                vec![r.into_inner().worker_id]
            }
            Call::Lease(i) => {
                let r = w.lease_job(pb::LeaseJobRequest { worker_id: id(i) }).await?;
                r.into_inner().lease.map(|l| vec![l.job_id]).unwrap_or_default()
            }
            Call::Heartbeat { worker, job, attempt, step, total } => w
                .heartbeat(pb::HeartbeatRequest {
                    worker_id: id(worker),
                    job_id: id(job),
                    attempt: *attempt,
                    step: *step,
                    total_steps: *total,
                })
                .await
                .map(|_| vec![])?,
            Call::Report { job, attempt, points } => {
                let points = points.iter().map(|&(series, step, loss)| pb::Point { series, step, loss }).collect();
                // One message per stream: a refused stream then must have stored nothing at all.
                let msg = pb::ReportPointsRequest { job_id: id(job), attempt: *attempt, points };
                w.report_points(tokio_stream::iter(vec![msg])).await.map(|_| vec![])?
            }
            Call::Complete { worker, job, attempt, state, loss, tokens, seconds } => w
                .complete_job(pb::CompleteJobRequest {
                    worker_id: id(worker),
                    job_id: id(job),
                    attempt: *attempt,
                    state: *state,
                    final_eval_loss: *loss,
                    tokens: *tokens,
                    seconds: *seconds,
                    ..Default::default()
                })
                .await
                .map(|_| vec![])?,
            Call::Fail { worker, job, attempt, error, retryable, released } => w
                .fail_job(pb::FailJobRequest {
                    worker_id: id(worker),
                    job_id: id(job),
                    attempt: *attempt,
                    error: error.clone(),
                    retryable: *retryable,
                    released: *released,
                })
                .await
                .map(|_| vec![])?,
            Call::Upload { worker, job, attempt, kind, step, size, sha, chunks } => {
                use pb::upload_artifact_request::Part;
                // `sha: None` declares the true digest of the bytes, so size alone decides.
                let all: Vec<u8> = chunks.concat();
                let digest: String = sha2::Sha256::digest(&all).iter().map(|b| format!("{b:02x}")).collect();
                let meta = pb::UploadArtifactMeta {
                    worker_id: id(worker),
                    job_id: id(job),
                    attempt: *attempt,
                    kind: *kind,
                    step: *step,
                    size: *size,
                    sha256: sha.clone().unwrap_or(digest),
                };
                let mut msgs = vec![pb::UploadArtifactRequest { part: Some(Part::Meta(meta)) }];
                msgs.extend(chunks.iter().map(|c| pb::UploadArtifactRequest { part: Some(Part::Chunk(c.clone())) }));
                c.artifacts.clone().upload_artifact(tokio_stream::iter(msgs)).await.map(|_| vec![])?
            }
            Call::ListArtifacts(i, kind) => c
                .artifacts
                .clone()
                .list_artifacts(pb::ListArtifactsRequest { job_id: id(i), kind: *kind })
                .await
                .map(|_| vec![])?,
            Call::Download(i, kind, step) => {
                let req = pb::DownloadArtifactRequest { job_id: id(i), kind: *kind, step: *step };
                let mut stream = c.artifacts.clone().download_artifact(req).await?.into_inner();
                while stream.message().await?.is_some() {}
                vec![]
            }
            Call::Warning { worker, job, attempt, message } => c
                .artifacts
                .clone()
                .report_job_warning(pb::ReportJobWarningRequest {
                    worker_id: id(worker),
                    job_id: id(job),
                    attempt: *attempt,
                    message: message.clone(),
                })
                .await
                .map(|_| vec![])?,
        })
    }
    .await;
    match result {
        Ok(ids) => (None, ids),
        Err(status) => (Some(status), vec![]),
    }
}

#[test]
fn random_calls_never_panic_never_write_partially_and_keep_the_database_sound() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut c = rt.block_on(spawn_coordinator())?;
    // Seed with a real sweep, a worker and a lease, so random calls hit live state.
    let seeded = rt.block_on(async {
        let sweep = c.submit(&grid(2, 2)).await?;
        let worker = c.register("seed").await?;
        let lease = c.lease(&worker).await?;
        anyhow::Ok(vec![sweep, worker, lease.job_id])
    })?;
    let pool = Mutex::new(Pool(seeded));
    let codes = Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let mut runner = TestRunner::new(RunnerConfig { cases: 600, failure_persistence: None, ..RunnerConfig::default() });
    let outcome = runner.run(&call(), |call| {
        rt.block_on(async {
            let before = c.counts().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let snapshot = Pool(pool.lock().map_err(|_| TestCaseError::fail("poisoned"))?.0.clone());
            let (refused, ids) = run(&c, &snapshot, &call).await;
            let name = format!("{call:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string();
            let code = refused.as_ref().map_or(Code::Ok, |s| s.code());
            *codes
                .lock()
                .map_err(|_| TestCaseError::fail("poisoned"))?
                .entry(format!("{name} {code:?}"))
                .or_default() += 1;
            if let Some(status) = refused {
                prop_assert!(
                    matches!(
                        status.code(),
                        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::ResourceExhausted
                    ),
                    "{:?} got {:?}: {}",
                    call,
                    status.code(),
                    status.message()
                );
                prop_assert!(!status.message().is_empty(), "refusal without a message");
                let after = c.counts().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(after, before, "refused call {:?} changed the database", call);
            }
            pool.lock().map_err(|_| TestCaseError::fail("poisoned"))?.0.extend(ids);
            Ok(())
        })
    });
    let codes = codes.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    if std::env::var_os("FUZZ_SUMMARY").is_some() {
        eprintln!("outcomes by RPC and code: {codes:#?}");
    }
    outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
    // Random input reached past validation: some calls were accepted and some refused.
    anyhow::ensure!(codes.keys().any(|k| k.ends_with(" Ok")), "no random call was accepted: {codes:?}");
    anyhow::ensure!(codes.keys().any(|k| k.ends_with(" FailedPrecondition")), "no call reached the lease checks");
    rt.block_on(async {
        c.assert_integrity().await?;
        c.stop().await
    })?;
    Ok(())
}
