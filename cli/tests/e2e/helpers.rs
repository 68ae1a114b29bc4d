//! Test harness: coordinators and workers in-process or as child processes of the `lorasweep`
//! binary, gRPC clients, CLI invocation and [`await_condition`].

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Once,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use lorasweep_proto::pb::{self, sweeps_client::SweepsClient, workers_client::WorkersClient};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The `lorasweep` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lorasweep");

static TRACING: Once = Once::new();

/// Silent unless `TEST_LOG` is set.
pub(crate) fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("info,sqlx=warn,h2=warn,hyper=warn,tower=warn")
                .with_test_writer()
                .init();
        }
    });
}

/// Polls `check` every 20 ms until it yields `Some`, failing after `timeout` with `what`.
pub(crate) async fn await_condition<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An in-process coordinator.
pub(crate) struct InProcessCoordinator {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), lorasweep_coordinator::Error>>,
}

/// Starts a coordinator in this process on `data_dir` with lease TTL `ttl`.
pub(crate) async fn spawn_coordinator(data_dir: &Path, ttl: Duration) -> anyhow::Result<InProcessCoordinator> {
    spawn_coordinator_on("127.0.0.1:0", data_dir, ttl).await
}

/// Like [`spawn_coordinator`], on a given address (to restart on the same port).
pub(crate) async fn spawn_coordinator_on(
    addr: &str,
    data_dir: &Path,
    ttl: Duration,
) -> anyhow::Result<InProcessCoordinator> {
    init_tracing();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut config = lorasweep_coordinator::Config::new(data_dir);
    config.lease_ttl = ttl;
    config.reap_interval = Duration::from_millis(50);
    config.watch_interval = Duration::from_millis(20);
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(lorasweep_coordinator::serve(listener, config, shutdown.clone()));
    Ok(InProcessCoordinator { url, shutdown, handle })
}

impl InProcessCoordinator {
    /// Shuts down gracefully.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await??;
        Ok(())
    }
}

/// An in-process worker daemon.
pub(crate) struct InProcessWorker {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), lorasweep_worker::WorkerError>>,
}

/// Starts a synthetic worker named `name` with `step_ms` per optimizer step.
pub(crate) fn spawn_worker(url: &str, name: &str, step_ms: u64) -> anyhow::Result<InProcessWorker> {
    spawn_worker_with(url, name, step_ms, &lorasweep_worker::ConnectArgs::default())
}

/// [`spawn_worker`] with a token and/or TLS CA.
pub(crate) fn spawn_worker_with(
    url: &str,
    name: &str,
    step_ms: u64,
    connect: &lorasweep_worker::ConnectArgs,
) -> anyhow::Result<InProcessWorker> {
    let args = lorasweep_worker::WorkerArgs {
        name: Some(name.into()),
        device: "cpu".into(),
        trainer: lorasweep_worker::TrainerKind::Synthetic,
        synthetic_step_ms: step_ms,
        max_backoff_ms: 200,
        metrics_listen: None,
        shutdown_grace: std::time::Duration::from_secs(5),
        exit_when_idle: None,
        gpu_memory_gb: None,
    };
    let config = lorasweep_worker::Config::new(url, args)?.with_connect(connect)?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(lorasweep_worker::run(config, shutdown.clone()));
    Ok(InProcessWorker { shutdown, handle })
}

impl InProcessWorker {
    /// Shuts down gracefully and checks the daemon returned Ok.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await??;
        Ok(())
    }
}

/// A child process of the `lorasweep` binary; killed when dropped. Its stderr goes to `log`.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Starts `lorasweep ARGS` with stderr to `log`.
    pub(crate) fn start(args: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        let err = std::fs::File::create(&log)?;
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info,h2=warn,hyper=warn,tower=warn,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {BIN}"))?;
        Ok(Self { child, log })
    }

    /// The process's stderr so far, for assertion messages.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no cleanup, no goodbye.
    pub(crate) async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// Starts `lorasweep coordinator` as a child on `listen` and returns it with its URL, read from
/// its `listening on ADDR` line.
pub(crate) async fn start_coordinator_process(
    data_dir: &Path,
    listen: &str,
    ttl: &str,
    log: PathBuf,
) -> anyhow::Result<(Proc, String)> {
    let data = data_dir.to_str().context("utf-8 temp dir")?;
    let mut proc = Proc::start(&["coordinator", "--listen", listen, "--data-dir", data, "--lease-ttl", ttl], log)?;
    let stdout = proc.child.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .with_context(|| format!("coordinator did not report its address; log:\n{}", proc.log_text()))??
        .with_context(|| format!("coordinator exited; log:\n{}", proc.log_text()))?;
    let addr = line.strip_prefix("listening on ").with_context(|| format!("unexpected first line {line:?}"))?;
    Ok((proc, format!("http://{addr}")))
}

/// Connects both clients to `url`.
pub(crate) async fn clients(url: &str) -> anyhow::Result<(SweepsClient<Channel>, WorkersClient<Channel>)> {
    let channel =
        Channel::from_shared(url.to_string())?.connect().await.with_context(|| format!("connecting to {url}"))?;
    Ok((SweepsClient::new(channel.clone()), WorkersClient::new(channel)))
}

/// Submits `toml` and returns the sweep id.
pub(crate) async fn submit(sweeps: &mut SweepsClient<Channel>, toml: &str) -> anyhow::Result<String> {
    let resp = sweeps
        .submit_sweep(pb::SubmitSweepRequest { sweep_toml: toml.into(), source: "test.toml".into() })
        .await?
        .into_inner();
    Ok(resp.sweep_id)
}

/// The sweep's jobs.
pub(crate) async fn jobs(sweeps: &mut SweepsClient<Channel>, sweep: &str) -> anyhow::Result<Vec<pb::Job>> {
    Ok(sweeps
        .list_jobs(pb::ListJobsRequest { sweep_id: sweep.into(), state: 0, ..Default::default() })
        .await?
        .into_inner()
        .jobs)
}

/// True for succeeded, failed, diverged and cancelled.
pub(crate) fn is_terminal(state: i32) -> bool {
    ![pb::JobState::Queued as i32, pb::JobState::Running as i32].contains(&state)
}

/// Waits until every job of the sweep is terminal; returns them.
pub(crate) async fn await_sweep_done(
    sweeps: &SweepsClient<Channel>,
    sweep: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<pb::Job>> {
    await_condition(&format!("sweep {sweep} to finish"), timeout, || {
        let mut s = sweeps.clone();
        async move {
            let jobs = jobs(&mut s, sweep).await?;
            Ok(jobs.iter().all(|j| is_terminal(j.state)).then_some(jobs))
        }
    })
    .await
}

/// Runs `lorasweep --coordinator URL ARGS` to completion.
pub(crate) async fn cli(url: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let out = Command::new(BIN)
        .arg("--coordinator")
        .arg(url)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running lorasweep {args:?}"))?;
    Ok(out)
}

/// Like [`cli`], but requires success and returns stdout.
pub(crate) async fn cli_ok(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = cli(url, args).await?;
    if !out.status.success() {
        bail!("lorasweep {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The expected eval steps of a synthetic run of `steps` optimizer steps with the default
/// `grad_accum = 4`, `eval_every = 40`: every 40 micro-batches, plus the end.
pub(crate) fn expected_eval_steps(steps: u64) -> Vec<u64> {
    let end = steps * 4;
    let mut v: Vec<u64> = (0..end).step_by(40).collect();
    if steps > 0 {
        v.push(end);
    }
    v
}

/// The path of a worker test fixture (`train/tests/fixtures/NAME`), as a string for sweep files.
pub(crate) fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../train/tests/fixtures").join(name).display().to_string()
}

/// Polls `lorasweep [flags] status SWEEP --json` until the sweep counts `n` succeeded jobs.
pub(crate) async fn await_succeeded_via_cli(url: &str, flags: &[&str], sweep: &str, n: u64) -> anyhow::Result<()> {
    await_condition("the jobs to succeed (seen through the CLI)", Duration::from_secs(20), || async move {
        let args: Vec<&str> = flags.iter().copied().chain(["status", sweep, "--json"]).collect();
        let v: serde_json::Value = serde_json::from_str(&cli_ok(url, &args).await?)?;
        Ok((v["counts"]["succeeded"] == n).then_some(()))
    })
    .await
}
