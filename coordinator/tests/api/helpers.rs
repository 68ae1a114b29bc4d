//! Test harness: a real coordinator on 127.0.0.1:0 with a temporary data directory and a manual
//! clock, plus gRPC clients and direct read access to its database.

use std::{future::Future, path::PathBuf, sync::Once, time::Duration};

use anyhow::Context;
use lorasweep_coordinator::{Config, DB_FILE, ManualClock};
use lorasweep_proto::pb::{
    self, artifacts_client::ArtifactsClient, sweeps_client::SweepsClient, workers_client::WorkersClient,
};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The lease TTL of test coordinators.
pub(crate) const TTL: Duration = Duration::from_secs(10);

/// A running coordinator and everything a test needs to poke it.
pub(crate) struct TestCoordinator {
    pub(crate) sweeps: SweepsClient<Channel>,
    pub(crate) workers: WorkersClient<Channel>,
    pub(crate) artifacts: ArtifactsClient<Channel>,
    pub(crate) clock: ManualClock,
    pub(crate) dir: TempDir,
    pub(crate) max_attempts: u32,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), lorasweep_coordinator::Error>>,
}

static TRACING: Once = Once::new();

/// Silent unless `TEST_LOG` is set.
pub(crate) fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("debug,sqlx=warn,h2=warn,hyper=warn,tower=warn")
                .with_test_writer()
                .init();
        }
    });
}

/// Starts a coordinator with a fresh data dir, a 10 s TTL and 3 attempts.
pub(crate) async fn spawn_coordinator() -> anyhow::Result<TestCoordinator> {
    spawn_with(TempDir::new()?, ManualClock::new(1_700_000_000_000), 3).await
}

/// Starts a coordinator on `dir` with `clock`.
pub(crate) async fn spawn_with(dir: TempDir, clock: ManualClock, max_attempts: u32) -> anyhow::Result<TestCoordinator> {
    spawn_reaping_every(dir, clock, max_attempts, Duration::from_millis(20)).await
}

/// Starts a coordinator whose reaper looks for expired leases every `reap_interval`.
pub(crate) async fn spawn_reaping_every(
    dir: TempDir,
    clock: ManualClock,
    max_attempts: u32,
    reap_interval: Duration,
) -> anyhow::Result<TestCoordinator> {
    spawn_configured(dir, clock, max_attempts, reap_interval, |_| {}, None).await
}

/// Starts a coordinator with the test defaults changed by `configure` (tokens, say), serving
/// metrics on `metrics` if given.
pub(crate) async fn spawn_configured(
    dir: TempDir,
    clock: ManualClock,
    max_attempts: u32,
    reap_interval: Duration,
    configure: impl FnOnce(&mut Config),
    metrics: Option<tokio::net::TcpListener>,
) -> anyhow::Result<TestCoordinator> {
    spawn_serving(dir, clock, max_attempts, reap_interval, configure, metrics, None).await
}

/// Starts a coordinator with the test defaults and `configure`, serving the dashboard on a
/// fresh loopback port; returns it and the dashboard's address.
pub(crate) async fn spawn_with_dashboard(
    configure: impl FnOnce(&mut Config),
) -> anyhow::Result<(TestCoordinator, std::net::SocketAddr)> {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = http.local_addr()?;
    let c = spawn_serving(
        TempDir::new()?,
        ManualClock::new(1_700_000_000_000),
        3,
        Duration::from_millis(20),
        configure,
        None,
        Some(http),
    )
    .await?;
    Ok((c, addr))
}

async fn spawn_serving(
    dir: TempDir,
    clock: ManualClock,
    max_attempts: u32,
    reap_interval: Duration,
    configure: impl FnOnce(&mut Config),
    metrics: Option<tokio::net::TcpListener>,
    http: Option<tokio::net::TcpListener>,
) -> anyhow::Result<TestCoordinator> {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = Config::new(dir.path());
    config.lease_ttl = TTL;
    config.max_attempts = max_attempts;
    config.reap_interval = reap_interval;
    config.watch_interval = Duration::from_millis(10);
    config.clock = std::sync::Arc::new(clock.clone());
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let listeners =
        lorasweep_coordinator::Listeners { metrics, http, ..lorasweep_coordinator::Listeners::grpc(listener) };
    let handle = tokio::spawn(lorasweep_coordinator::serve_on(listeners, config, shutdown.clone()));
    // The listener is bound already, so connecting cannot race the server's start.
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await.context("connecting")?;
    Ok(TestCoordinator {
        sweeps: SweepsClient::new(channel.clone()),
        workers: WorkersClient::new(channel.clone()),
        artifacts: ArtifactsClient::new(channel),
        clock,
        dir,
        max_attempts,
        shutdown,
        handle,
    })
}

impl TestCoordinator {
    /// Shuts down gracefully and waits until the server and its writer are done.
    pub(crate) async fn stop(self) -> anyhow::Result<(TempDir, ManualClock)> {
        self.shutdown.cancel();
        drop(self.sweeps);
        drop(self.workers);
        drop(self.artifacts);
        self.handle.await??;
        Ok((self.dir, self.clock))
    }

    /// Stops and starts again on the same data directory and clock.
    pub(crate) async fn restart(self) -> anyhow::Result<TestCoordinator> {
        let max_attempts = self.max_attempts;
        let (dir, clock) = self.stop().await?;
        spawn_with(dir, clock, max_attempts).await
    }

    /// The manual clock's reading.
    pub(crate) fn clock_now(&self) -> i64 {
        use lorasweep_coordinator::Clock;
        self.clock.now_ms()
    }

    /// The database file.
    pub(crate) fn db_path(&self) -> PathBuf {
        self.dir.path().join(DB_FILE)
    }

    /// Row counts of every table, read straight from the database file.
    pub(crate) async fn counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        use sqlx::Connection;
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", self.db_path().display())).await?;
        let mut out = Vec::new();
        for table in ["sweeps", "jobs", "workers", "loss_points", "events", "artifacts"] {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut conn)
                .await?;
            out.push((table.to_string(), n));
        }
        // A digest of every job's mutable columns, so an update that changes no count shows too.
        let digest: String = sqlx::query_scalar(
            "SELECT coalesce(group_concat(id || state || attempt || failures || step || lease_expires_at, ','), '') FROM jobs",
        )
        .fetch_one(&mut conn)
        .await?;
        out.push((digest, 0));
        // Artifact files on disk (including `.part` files a refused upload must not leave behind).
        out.push(("artifact files".into(), count_files(&self.dir.path().join("artifacts")) as i64));
        conn.close().await?;
        Ok(out)
    }

    /// Asserts the database file passes SQLite's `integrity_check` and `foreign_key_check`.
    pub(crate) async fn assert_integrity(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", self.db_path().display())).await?;
        let integrity: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&mut conn).await?;
        anyhow::ensure!(integrity == ["ok"], "integrity_check: {integrity:?}");
        let dangling: Vec<(String, i64)> =
            sqlx::query_as("SELECT \"table\", rowid FROM pragma_foreign_key_check").fetch_all(&mut conn).await?;
        anyhow::ensure!(dangling.is_empty(), "foreign_key_check: {dangling:?}");
        conn.close().await?;
        Ok(())
    }

    /// The event log of one job, oldest first, as (kind, detail with its attempt and worker id).
    pub(crate) async fn events(&self, job_id: &str) -> anyhow::Result<Vec<(String, String)>> {
        use sqlx::Connection;
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", self.db_path().display())).await?;
        let rows = sqlx::query_as(
            "SELECT kind, detail || ' [attempt ' || attempt || ', worker ' || worker_id || ']' FROM events \
             WHERE job_id = ?1 ORDER BY id",
        )
        .bind(job_id)
        .fetch_all(&mut conn)
        .await?;
        conn.close().await?;
        Ok(rows)
    }

    /// Submits `toml` and returns the sweep id.
    pub(crate) async fn submit(&mut self, toml: &str) -> anyhow::Result<String> {
        let resp = self
            .sweeps
            .submit_sweep(pb::SubmitSweepRequest { sweep_toml: toml.into(), source: "test.toml".into() })
            .await?
            .into_inner();
        Ok(resp.sweep_id)
    }

    /// Registers a worker and returns its id.
    pub(crate) async fn register(&mut self, name: &str) -> anyhow::Result<String> {
        let resp = self
            .workers
            .register_worker(pb::RegisterWorkerRequest {
                name: name.into(),
                device: "cpu".into(),
                trainer: "synthetic".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(resp.worker_id)
    }

    /// Leases a job for `worker`, failing the test if none is queued.
    pub(crate) async fn lease(&mut self, worker: &str) -> anyhow::Result<pb::Lease> {
        self.workers
            .lease_job(pb::LeaseJobRequest { worker_id: worker.into() })
            .await?
            .into_inner()
            .lease
            .context("expected a lease, got none")
    }

    /// All jobs of a sweep.
    pub(crate) async fn jobs(&mut self, sweep_id: &str) -> anyhow::Result<Vec<pb::Job>> {
        Ok(self
            .sweeps
            .list_jobs(pb::ListJobsRequest { sweep_id: sweep_id.into(), state: 0, ..Default::default() })
            .await?
            .into_inner()
            .jobs)
    }

    /// One job by id.
    pub(crate) async fn job(&mut self, sweep_id: &str, job_id: &str) -> anyhow::Result<pb::Job> {
        self.jobs(sweep_id).await?.into_iter().find(|j| j.id == job_id).context("job not listed")
    }

    /// Streams `points` as one ReportPoints call split into messages of `per_message`.
    pub(crate) async fn report(
        &mut self,
        job_id: &str,
        attempt: u32,
        points: &[pb::Point],
        per_message: usize,
    ) -> Result<u64, tonic::Status> {
        let messages: Vec<pb::ReportPointsRequest> = points
            .chunks(per_message.max(1))
            .map(|chunk| pb::ReportPointsRequest { job_id: job_id.into(), attempt, points: chunk.to_vec() })
            .collect();
        Ok(self.workers.report_points(tokio_stream::iter(messages)).await?.into_inner().committed)
    }

    /// Completes an attempt as succeeded.
    pub(crate) async fn complete(&mut self, worker: &str, lease: &pb::Lease, loss: f64) -> Result<(), tonic::Status> {
        self.workers
            .complete_job(pb::CompleteJobRequest {
                worker_id: worker.into(),
                job_id: lease.job_id.clone(),
                attempt: lease.attempt,
                state: pb::JobState::Succeeded as i32,
                final_eval_loss: Some(loss),
                tokens: 1000,
                seconds: 1.5,
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// Heartbeats an attempt.
    pub(crate) async fn heartbeat(
        &mut self,
        worker: &str,
        job_id: &str,
        attempt: u32,
    ) -> Result<pb::HeartbeatResponse, tonic::Status> {
        self.workers
            .heartbeat(pb::HeartbeatRequest {
                worker_id: worker.into(),
                job_id: job_id.into(),
                attempt,
                step: 1,
                total_steps: 10,
            })
            .await
            .map(|r| r.into_inner())
    }
}

/// Regular files under `dir`, recursively (0 if it does not exist).
fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => count_files(&e.path()),
                Ok(t) if t.is_file() => 1,
                _ => 0,
            })
            .sum()
    })
}

/// `n` train points with steps `1..=n` and a decreasing loss.
pub(crate) fn train_points(n: u64) -> Vec<pb::Point> {
    (1..=n).map(|step| pb::Point { series: pb::Series::Train as i32, step, loss: 3.0 / (step as f64).sqrt() }).collect()
}

/// Polls `check` until it returns true, failing after 5 s. Never a fixed sleep.
pub(crate) async fn await_condition<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A job's state as the domain name.
pub(crate) fn state(job: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified)
}

/// A one-sweep grid of `inits × lrs × seeds` cells of the default study settings.
pub(crate) fn grid(lrs: usize, seeds: usize) -> String {
    let lrs: Vec<String> = (1..=lrs).map(|i| format!("{i}e-4")).collect();
    let seeds: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    format!(
        "name = \"t\"\n[grid]\ninits = [\"standard\"]\nlrs = [{}]\nseeds = [{}]\n",
        lrs.join(", "),
        seeds.join(", ")
    )
}

/// A job's whole curves: GetCurve's streamed pieces concatenated.
pub(crate) async fn read_curve(
    sweeps: &mut lorasweep_proto::pb::sweeps_client::SweepsClient<tonic::transport::Channel>,
    job_id: &str,
) -> Result<lorasweep_proto::pb::GetCurveResponse, tonic::Status> {
    let mut stream =
        sweeps.get_curve(lorasweep_proto::pb::GetCurveRequest { job_id: job_id.to_string() }).await?.into_inner();
    let mut curve = lorasweep_proto::pb::GetCurveResponse::default();
    while let Some(piece) = stream.message().await? {
        lorasweep_common::convert::append_curve(&mut curve, piece);
    }
    Ok(curve)
}
