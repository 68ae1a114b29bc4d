//! The worker daemon against a scripted fake coordinator (a real tonic `Workers` server on
//! 127.0.0.1:0), to pin down its protocol behaviour without a database: points are resent after
//! transient failures, a heartbeat `cancel` or a stale lease drops the job, shutdown releases it.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lorasweep_common::{JobSpec, LoraInit};
use lorasweep_proto::pb::{
    self,
    workers_server::{Workers, WorkersServer},
};
use lorasweep_worker::{Config, TrainerKind, WorkerArgs, WorkerError, daemon::Stopped};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming, transport::server::TcpIncoming};

/// What the fake coordinator was told, and how it should misbehave.
#[derive(Debug, Default)]
struct Script {
    leases: VecDeque<pb::Lease>,
    leased: u32,
    /// Answer this many ReportPoints calls with UNAVAILABLE.
    fail_reports: u32,
    /// Answer ReportPoints with FAILED_PRECONDITION (the lease was lost).
    stale_reports: bool,
    /// Answer heartbeats with `cancel` once a step > 0 was reported.
    cancel_when_running: bool,
    /// Answer every CompleteJob with INTERNAL (a coordinator with a deterministic bug).
    internal_on_complete: bool,
    /// Answer every ReportPoints with INTERNAL.
    internal_reports: bool,
    complete_calls: Vec<String>,
    report_calls: u32,
    heartbeats: Vec<pb::HeartbeatRequest>,
    points: Vec<pb::Point>,
    completed: Vec<pb::CompleteJobRequest>,
    failed: Vec<pb::FailJobRequest>,
    /// ShipLogs calls received.
    shipped: Vec<pb::ShipLogsRequest>,
    /// Answer every ShipLogs with UNAVAILABLE (a coordinator that cannot take logs).
    refuse_logs: bool,
}

#[derive(Debug, Clone, Default)]
struct Fake(Arc<Mutex<Script>>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().expect("test lock"))
    }
}

#[tonic::async_trait]
impl Workers for Fake {
    async fn register_worker(
        &self,
        _: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        // Unique per registration: the log layer routes records by worker id, and the tests of
        // this binary run daemons side by side in one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: format!("w{n}"),
            lease_ttl_ms: 3000,
            heartbeat_interval_ms: 30,
        }))
    }

    async fn lease_job(&self, _: Request<pb::LeaseJobRequest>) -> Result<Response<pb::LeaseJobResponse>, Status> {
        let lease = self.with(|s| {
            let l = s.leases.pop_front();
            s.leased += u32::from(l.is_some());
            l
        });
        Ok(Response::new(pb::LeaseJobResponse { lease }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let cancel = self.with(|s| {
            let cancel = s.cancel_when_running && req.step > 0;
            s.heartbeats.push(req);
            cancel
        });
        Ok(Response::new(pb::HeartbeatResponse { expires_at_ms: 0, cancel }))
    }

    async fn report_points(
        &self,
        req: Request<Streaming<pb::ReportPointsRequest>>,
    ) -> Result<Response<pb::ReportPointsResponse>, Status> {
        let mut stream = req.into_inner();
        let mut got = Vec::new();
        while let Some(msg) = stream.next().await {
            got.extend(msg?.points);
        }
        self.with(|s| {
            s.report_calls += 1;
            if s.stale_reports {
                return Err(Status::failed_precondition("attempt 1 is not the live lease"));
            }
            if s.internal_reports {
                return Err(Status::internal("database disk image is malformed"));
            }
            if s.fail_reports > 0 {
                s.fail_reports -= 1;
                return Err(Status::unavailable("coordinator restarting"));
            }
            let n = got.len() as u64;
            s.points.extend(got);
            Ok(Response::new(pb::ReportPointsResponse { committed: n }))
        })
    }

    async fn complete_job(
        &self,
        req: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        self.with(|s| {
            let req = req.into_inner();
            s.complete_calls.push(req.job_id.clone());
            if s.internal_on_complete {
                return Err(Status::internal("UNIQUE constraint failed: points.job_id"));
            }
            s.completed.push(req);
            Ok(Response::new(pb::CompleteJobResponse {}))
        })
    }

    async fn fail_job(&self, req: Request<pb::FailJobRequest>) -> Result<Response<pb::FailJobResponse>, Status> {
        self.with(|s| s.failed.push(req.into_inner()));
        Ok(Response::new(pb::FailJobResponse { state: pb::JobState::Queued as i32 }))
    }

    async fn ship_logs(&self, req: Request<pb::ShipLogsRequest>) -> Result<Response<pb::ShipLogsResponse>, Status> {
        self.with(|s| {
            if s.refuse_logs {
                return Err(Status::unavailable("log store offline"));
            }
            let req = req.into_inner();
            let stored = req.records.len() as u32;
            s.shipped.push(req);
            Ok(Response::new(pb::ShipLogsResponse { stored, capped: false }))
        })
    }
}

/// This test binary's subscriber carries the log-shipping layer, as the worker binary's does.
fn install_log_layer() {
    use tracing_subscriber::{Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::registry()
            .with(lorasweep_worker::logship::layer().with_filter(LevelFilter::INFO))
            .try_init();
    });
}

/// A lease of a synthetic job with `steps` optimizer steps.
fn lease(job_id: &str, steps: u64) -> pb::Lease {
    let train = lorasweep_common::job::TrainSpec { max_steps: Some(steps), ..Default::default() };
    let spec = JobSpec {
        model: Default::default(),
        data: Default::default(),
        lora: Default::default(),
        train,
        init: LoraInit::Standard,
        lr: 1e-3,
        seed: 42,
    };
    pb::Lease {
        job_id: job_id.into(),
        attempt: 1,
        spec_json: serde_json::to_string(&spec).expect("spec serialises"),
        expires_at_ms: 0,
        sweep_id: "s".into(),
    }
}

type Worker = JoinHandle<Result<Stopped, WorkerError>>;

/// Serves `fake` and runs a synthetic worker (`step_ms` per step) against it.
async fn start(fake: &Fake, step_ms: u64) -> anyhow::Result<(CancellationToken, Worker)> {
    start_with(fake, step_ms, None).await
}

/// [`start`], with `--exit-when-idle`.
async fn start_with(
    fake: &Fake,
    step_ms: u64,
    exit_when_idle: Option<Duration>,
) -> anyhow::Result<(CancellationToken, Worker)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = fake.clone();
    let stop = CancellationToken::new();
    // The server outlives the worker's shutdown so the release can reach it; it ends with the
    // test's runtime.
    let server_stop = CancellationToken::new();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(WorkersServer::new(server))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), server_stop.cancelled_owned())
            .await
    });
    let args = WorkerArgs {
        name: Some("t".into()),
        device: "cpu".into(),
        trainer: TrainerKind::Synthetic,
        synthetic_step_ms: step_ms,
        max_backoff_ms: 100,
        metrics_listen: None,
        shutdown_grace: std::time::Duration::from_secs(5),
        exit_when_idle,
        gpu_memory_gb: None,
    };
    let worker = tokio::spawn(lorasweep_worker::daemon::run_until(
        Config::new(&url, args)?,
        stop.clone(),
        CancellationToken::new(),
    ));
    Ok((stop, worker))
}

/// Polls until `done` holds for the script, or fails after 20 s.
async fn await_script(fake: &Fake, what: &str, done: impl Fn(&Script) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fake.with(|s| done(s)) {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", fake.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn points_are_resent_after_transient_failures() -> anyhow::Result<()> {
    let fake = Fake::default();
    fake.with(|s| {
        s.leases.push_back(lease("j1", 30));
        s.fail_reports = 3;
    });
    let (stop, worker) = start(&fake, 5).await?;
    await_script(&fake, "completion", |s| !s.completed.is_empty()).await?;
    stop.cancel();
    worker.await??;
    fake.with(|s| {
        assert!(s.report_calls >= 4, "three failed flushes and at least one good one");
        let train: BTreeSet<u64> =
            s.points.iter().filter(|p| p.series == pb::Series::Train as i32).map(|p| p.step).collect();
        assert_eq!(train, (1..=30).collect(), "every step arrived despite the failures");
        let done = &s.completed[0];
        assert_eq!((done.job_id.as_str(), done.attempt), ("j1", 1));
        assert_eq!(done.state, pb::JobState::Succeeded as i32);
        assert!(done.final_eval_loss.is_some());
        let last = s.heartbeats.last().expect("heartbeats were sent");
        assert_eq!((last.step, last.total_steps), (30, 30), "the last heartbeat is final");
    });
    Ok(())
}

#[tokio::test]
async fn heartbeat_cancel_stops_the_job_and_the_worker_moves_on() -> anyhow::Result<()> {
    let fake = Fake::default();
    fake.with(|s| {
        s.leases.push_back(lease("long", 100_000));
        s.cancel_when_running = true;
    });
    let (stop, worker) = start(&fake, 5).await?;
    await_script(&fake, "the cancelling heartbeat", |s| s.heartbeats.iter().any(|h| h.step > 0)).await?;
    // The next lease is taken only once the cancelled job is dropped.
    fake.with(|s| {
        s.cancel_when_running = false;
        s.leases.push_back(lease("next", 3));
    });
    await_script(&fake, "the next job", |s| s.completed.iter().any(|c| c.job_id == "next")).await?;
    stop.cancel();
    worker.await??;
    fake.with(|s| {
        assert!(s.completed.iter().all(|c| c.job_id != "long"), "a cancelled job is not completed");
        assert!(s.failed.is_empty(), "nor failed: {:?}", s.failed);
    });
    Ok(())
}

#[tokio::test]
async fn stale_lease_on_report_drops_the_job() -> anyhow::Result<()> {
    let fake = Fake::default();
    fake.with(|s| {
        s.leases.push_back(lease("stale", 100_000));
        s.stale_reports = true;
    });
    let (stop, worker) = start(&fake, 2).await?;
    await_script(&fake, "a rejected report", |s| s.report_calls > 0).await?;
    fake.with(|s| {
        s.stale_reports = false;
        s.leases.push_back(lease("next", 3));
    });
    await_script(&fake, "the next job", |s| s.completed.iter().any(|c| c.job_id == "next")).await?;
    stop.cancel();
    worker.await??;
    fake.with(|s| {
        assert!(s.completed.iter().all(|c| c.job_id != "stale"));
        assert!(s.failed.is_empty(), "{:?}", s.failed);
    });
    Ok(())
}

#[tokio::test]
async fn shutdown_releases_the_running_job() -> anyhow::Result<()> {
    let fake = Fake::default();
    fake.with(|s| s.leases.push_back(lease("held", 100_000)));
    let (stop, worker) = start(&fake, 2).await?;
    await_script(&fake, "points", |s| !s.points.is_empty()).await?;
    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), worker).await???;
    // Work was left: the exit status tells Slurm or Kubernetes to run the worker again.
    assert_eq!(stopped, Stopped::Signalled { interrupted: true });
    assert_eq!(stopped.exit_code(), lorasweep_worker::daemon::EXIT_INTERRUPTED);
    fake.with(|s| {
        let f = s.failed.first().expect("the job was given back");
        assert_eq!(f.job_id, "held");
        assert!(f.released && f.retryable, "{f:?}");
        assert!(s.completed.is_empty());
    });
    Ok(())
}

#[tokio::test]
async fn an_idle_worker_exits_zero_after_exit_when_idle_and_a_busy_one_does_not() -> anyhow::Result<()> {
    let fake = Fake::default();
    // One job of ~0.6 s first: the idle clock starts only after it.
    fake.with(|s| s.leases.push_back(lease("only", 200)));
    let started = Instant::now();
    let (_stop, worker) = start_with(&fake, 3, Some(Duration::from_millis(400))).await?;
    let stopped = tokio::time::timeout(Duration::from_secs(20), worker).await???;
    assert_eq!((stopped, stopped.exit_code()), (Stopped::Idle, 0));
    fake.with(|s| assert_eq!(s.completed.len(), 1, "the job ran to its end before the idle exit"));
    assert!(started.elapsed() >= Duration::from_millis(400 + 500), "exited after {:?}", started.elapsed());
    Ok(())
}

#[tokio::test]
async fn a_signal_while_idle_exits_zero() -> anyhow::Result<()> {
    let fake = Fake::default();
    let (stop, worker) = start(&fake, 3).await?;
    // Registered and polling (an empty queue) by then.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), worker).await???;
    assert_eq!((stopped, stopped.exit_code()), (Stopped::Signalled { interrupted: false }, 0));
    Ok(())
}

/// A coordinator that answers every `CompleteJob` with INTERNAL used to pin the worker: the
/// call was retried with no end while the heartbeat kept the lease alive. Now the worker tries a
/// few times, gives the attempt back (retryable, with the reason) and leases the next job.
#[tokio::test]
async fn a_coordinator_answering_internal_on_complete_makes_the_worker_give_up_and_go_on() -> anyhow::Result<()> {
    let fake = Fake::default();
    fake.with(|s| {
        s.leases.push_back(lease("j1", 3));
        s.leases.push_back(lease("j2", 3));
        s.internal_on_complete = true;
    });
    let (stop, worker) = start(&fake, 1).await?;
    await_script(&fake, "both attempts given back", |s| s.failed.len() >= 2).await?;
    stop.cancel();
    worker.await??;
    fake.with(|s| {
        assert_eq!(s.leased, 2, "the worker went on to the next job");
        let tries = s.complete_calls.iter().filter(|j| *j == "j1").count();
        assert!((2..=10).contains(&tries), "CompleteJob retried a bounded number of times, not forever: {tries}");
        for (f, job) in s.failed.iter().zip(["j1", "j2"]) {
            assert_eq!(f.job_id, job);
            assert!(f.retryable && !f.released, "{f:?}");
            assert!(f.error.contains("did not accept the completion") && f.error.contains("UNIQUE"), "{}", f.error);
        }
        assert!(s.completed.is_empty());
    });
    Ok(())
}

/// The same for the points: a coordinator answering every `ReportPoints` with INTERNAL makes the
/// worker stop training, give the attempt back with the reason, and lease the next job.
#[tokio::test]
async fn a_coordinator_answering_internal_on_points_makes_the_worker_give_up_and_go_on() -> anyhow::Result<()> {
    let fake = Fake::default();
    fake.with(|s| {
        s.leases.push_back(lease("stuck", 100_000));
        s.internal_reports = true;
    });
    let (stop, worker) = start(&fake, 2).await?;
    await_script(&fake, "the attempt given back", |s| !s.failed.is_empty()).await?;
    fake.with(|s| {
        s.internal_reports = false;
        s.leases.push_back(lease("next", 3));
    });
    await_script(&fake, "the next job", |s| s.completed.iter().any(|c| c.job_id == "next")).await?;
    stop.cancel();
    worker.await??;
    fake.with(|s| {
        let f = &s.failed[0];
        assert_eq!(f.job_id, "stuck");
        assert!(f.retryable && !f.released, "{f:?}");
        assert!(f.error.contains("ReportPoints") && f.error.contains("malformed"), "{}", f.error);
        assert!(s.completed.iter().all(|c| c.job_id != "stuck"));
    });
    Ok(())
}

/// Without the `cuda` feature a CUDA device cannot work: the daemon refuses to start, naming
/// the device, instead of leasing jobs it would fail.
#[cfg(not(feature = "cuda"))]
#[tokio::test]
async fn unusable_trainer_device_is_a_clear_startup_error() -> anyhow::Result<()> {
    let args = WorkerArgs {
        name: None,
        device: "cuda:0".into(),
        trainer: TrainerKind::Candle,
        synthetic_step_ms: 0,
        max_backoff_ms: 100,
        metrics_listen: None,
        shutdown_grace: std::time::Duration::from_secs(5),
        exit_when_idle: None,
        gpu_memory_gb: None,
    };
    let config = Config::new("http://127.0.0.1:9", args)?;
    let run = lorasweep_worker::run(config, CancellationToken::new());
    let err = tokio::time::timeout(Duration::from_secs(10), run).await?.unwrap_err();
    assert!(matches!(err, WorkerError::TrainerUnavailable(_)), "{err}");
    assert!(err.to_string().contains("cuda:0"), "{err}");
    Ok(())
}

#[tokio::test]
async fn job_logs_are_shipped_per_attempt() -> anyhow::Result<()> {
    install_log_layer();
    let fake = Fake::default();
    fake.with(|s| s.leases.push_back(lease("logged", 5)));
    let (stop, worker) = start(&fake, 2).await?;
    await_script(&fake, "completion", |s| !s.completed.is_empty()).await?;
    // The shipper flushes twice a second; the daemon's exit flushes the rest.
    stop.cancel();
    worker.await??;
    fake.with(|s| {
        let records: Vec<&pb::LogRecord> = s.shipped.iter().flat_map(|r| &r.records).collect();
        assert!(s.shipped.iter().all(|r| r.job_id == "logged" && r.attempt == 1), "{:?}", s.shipped);
        assert!(
            records
                .iter()
                .any(|r| r.level == "INFO" && r.message.contains("leased job") && r.message.contains("lr=0.001")),
            "the job's INFO records, fields included: {records:?}"
        );
        assert!(records.iter().any(|r| r.message.contains("job finished")), "{records:?}");
        assert!(records.iter().all(|r| r.attempt == 1 && r.at_ms > 0 && !r.target.is_empty()));
        assert!(
            records.iter().all(|r| !r.message.contains("registered with the coordinator")),
            "records outside a job's span stay local"
        );
    });
    Ok(())
}

#[tokio::test]
async fn a_coordinator_that_refuses_logs_does_not_stop_training() -> anyhow::Result<()> {
    install_log_layer();
    let fake = Fake::default();
    fake.with(|s| {
        s.refuse_logs = true;
        s.leases.push_back(lease("a", 20));
        s.leases.push_back(lease("b", 20));
    });
    let (stop, worker) = start(&fake, 2).await?;
    await_script(&fake, "both completions", |s| s.completed.len() == 2).await?;
    stop.cancel();
    worker.await??;
    fake.with(|s| {
        assert!(s.shipped.is_empty());
        let train = s.points.iter().filter(|p| p.series == pb::Series::Train as i32).count();
        assert_eq!(train, 40, "every step of both jobs was trained and reported");
    });
    Ok(())
}
