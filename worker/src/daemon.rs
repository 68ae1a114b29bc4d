//! The worker daemon: register with the coordinator, then lease and run jobs one at a time until
//! shut down.
//!
//! The coordinator may be down when the worker starts, or go away at any point; every call is
//! retried with capped backoff and a log line saying so, and the daemon never exits because of
//! it. Shutdown (the token) stops the running trainer, reports what it produced, releases the
//! lease with `FailJob { released: true }` and returns.

use std::{sync::Arc, time::Duration};

use lorasweep_proto::pb::{self, workers_client::WorkersClient};
use tokio_util::sync::CancellationToken;

use lorasweep_train::{CandleTrainer, Trainer, synthetic::SyntheticTrainer};

use crate::{
    Config, TrainerKind, WorkerError,
    artifacts::ArtifactsGrpc,
    connect::Authed,
    control::Shutdown,
    job::{self, JobContext},
    logship::Shipper,
    metrics,
    rpc::{self, Backoff},
    status::{State, WorkerStatus},
};

/// Per-call timeout: generous for a loaded coordinator, short enough that a hung connection is
/// noticed and retried well within a lease TTL.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect timeout; a refused connection fails at once anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds the configured trainer.
///
/// # Errors
/// [`WorkerError::TrainerUnavailable`] when the trainer cannot be built here.
pub fn make_trainer(config: &Config) -> Result<Box<dyn Trainer>, WorkerError> {
    match config.trainer {
        TrainerKind::Synthetic => Ok(Box::new(SyntheticTrainer::new(config.synthetic_step))),
        TrainerKind::Candle => CandleTrainer::new(&config.device)
            .map(|t| Box::new(t) as Box<dyn Trainer>)
            .map_err(|e| WorkerError::TrainerUnavailable(format!("candle on {}: {e}", config.device))),
    }
}

/// Exit status of a worker that stopped with a job's work still to do (it released or gave up
/// its attempt because of a signal): non-zero, so Slurm's `--requeue` / `scontrol requeue` and a
/// Kubernetes restart policy bring it back. 75 is sysexits' EX_TEMPFAIL ("try again later").
pub const EXIT_INTERRUPTED: i32 = 75;

/// Exit status for a configuration the worker cannot run with (a bad flag, no usable GPU, an
/// unbindable address): retrying the same command would fail the same way.
pub const EXIT_CONFIG: i32 = 3;

/// How the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `--exit-when-idle`: the coordinator had no job for that long.
    Idle,
    /// A signal; `interrupted` if an attempt was running and did not finish.
    Signalled {
        /// An attempt was stopped (released or left to expire) rather than finished.
        interrupted: bool,
    },
}

impl Stopped {
    /// The process exit status: [`EXIT_INTERRUPTED`] after an interrupted attempt, else 0.
    pub fn exit_code(self) -> i32 {
        match self {
            Stopped::Signalled { interrupted: true } => EXIT_INTERRUPTED,
            Stopped::Idle | Stopped::Signalled { interrupted: false } => 0,
        }
    }
}

/// Runs the daemon until `shutdown` is cancelled (see [`run_until`]).
///
/// # Errors
/// As [`run_until`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    run_until(config, shutdown, CancellationToken::new()).await.map(|_| ())
}

/// Runs the daemon until `soft` is cancelled (the first signal: finish the step, checkpoint,
/// release, exit within `config.shutdown_grace`), `hard` is cancelled (a second signal: release
/// now), or `--exit-when-idle` ends it.
///
/// # Errors
/// Only for problems that retrying cannot fix: an unusable coordinator URL, trainer or metrics
/// address. An unreachable coordinator is waited for, not an error.
pub async fn run_until(
    config: Config,
    soft: CancellationToken,
    hard: CancellationToken,
) -> Result<Stopped, WorkerError> {
    let stop = Shutdown::new(soft.clone(), hard, config.shutdown_grace);
    tokio::spawn(stop.clone().escalate_after_window());
    let shutdown = soft;
    // What `--metrics-listen` shows; `status` below is always a gRPC status.
    let live = Arc::new(WorkerStatus::new(&config.name, &config.device, config.trainer.name()));
    if let Some(addr) = config.metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| WorkerError::Bind { addr, source })?;
        tokio::spawn(metrics::serve(listener, live.clone(), shutdown.clone()));
    }
    {
        let (status, shutdown) = (live.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            status.set_state(State::Stopping);
        });
    }
    let trainer = make_trainer(&config)?;
    let endpoint = config.remote.endpoint()?.timeout(CALL_TIMEOUT).connect_timeout(CONNECT_TIMEOUT);
    // Lazy: the channel (re)connects on use, so a coordinator restart needs nothing from us.
    let client = WorkersClient::new(config.remote.authed(endpoint.connect_lazy()));
    // Artifacts get their own channel without the per-call timeout: a large checkpoint may take
    // longer than a control call is allowed to.
    let artifacts = ArtifactsGrpc::new(
        config.remote.authed(config.remote.endpoint()?.connect_timeout(CONNECT_TIMEOUT).connect_lazy()),
    );

    let Some(mut ctx) = register(&config, &client, &artifacts, &live, &stop).await else {
        return Ok(Stopped::Signalled { interrupted: false });
    };
    // Job logs to the coordinator (if this process's subscriber has the logship layer).
    let mut shipper = Shipper::start(&ctx.worker_id, client.clone());
    let stopped = lease_loop(&config, &client, &artifacts, &live, &stop, &mut ctx, &mut shipper, trainer).await;
    shipper.finish(LOG_FLUSH).await;
    stopped
}

/// How long an exiting daemon waits for its last log records to be shipped.
const LOG_FLUSH: Duration = Duration::from_secs(2);

/// Leases and runs jobs until shutdown or `--exit-when-idle`.
#[allow(clippy::too_many_arguments)]
async fn lease_loop(
    config: &Config,
    client: &WorkersClient<Authed>,
    artifacts: &ArtifactsGrpc,
    live: &Arc<WorkerStatus>,
    stop: &Shutdown,
    ctx: &mut JobContext,
    shipper: &mut Shipper,
    mut trainer: Box<dyn Trainer>,
) -> Result<Stopped, WorkerError> {
    let shutdown = stop.soft.clone();
    let mut idle = Backoff::new(config.max_backoff);
    let mut interrupted = false;
    // Since when the coordinator has answered "no job" (unreachable time does not count).
    let mut idle_since: Option<tokio::time::Instant> = None;
    while !shutdown.is_cancelled() {
        let leased = {
            let mut c = client.clone();
            c.lease_job(pb::LeaseJobRequest { worker_id: ctx.worker_id.clone() }).await
        };
        match leased {
            Ok(resp) => match resp.into_inner().lease {
                Some(lease) => {
                    live.contact();
                    idle.reset();
                    idle_since = None;
                    let (next, finished) = job::run_job(ctx, lease, trainer).await;
                    interrupted |= !finished;
                    trainer = match next {
                        Some(t) => t,
                        None => make_trainer(config)?,
                    };
                    continue;
                }
                None => {
                    live.contact();
                    tracing::debug!("no queued job");
                    let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                    if let Some(limit) = config.exit_when_idle
                        && since.elapsed() >= limit
                    {
                        tracing::info!(worker_id = %ctx.worker_id, idle = ?limit, "no job for --exit-when-idle: exiting");
                        return Ok(Stopped::Idle);
                    }
                }
            },
            Err(status) if status.code() == tonic::Code::NotFound => {
                // The coordinator forgot us (a fresh database): register again.
                tracing::warn!(error = %status.message(), "coordinator does not know this worker; registering again");
                match register(config, client, artifacts, live, stop).await {
                    Some(c) => {
                        *ctx = c;
                        std::mem::replace(shipper, Shipper::start(&ctx.worker_id, client.clone()))
                            .finish(LOG_FLUSH)
                            .await;
                    }
                    None => break,
                }
                continue;
            }
            Err(status) => {
                idle_since = None;
                tracing::warn!(
                    coordinator = %config.coordinator, code = ?status.code(), error = %status.message(),
                    "leasing failed; coordinator unreachable? retrying"
                );
            }
        }
        let wait = idle.next_wait();
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!(worker_id = %ctx.worker_id, interrupted, "worker stopped");
    Ok(Stopped::Signalled { interrupted })
}

/// Registers, retrying until the coordinator answers; `None` if shut down first.
async fn register(
    config: &Config,
    client: &WorkersClient<Authed>,
    artifacts: &ArtifactsGrpc,
    live: &Arc<WorkerStatus>,
    stop: &Shutdown,
) -> Option<JobContext> {
    let shutdown = &stop.soft;
    if !shutdown.is_cancelled() {
        live.set_state(State::Registering);
    }
    // The GPU's name and memory from the driver (cuda builds); --gpu-memory-gb overrides.
    let gpu = if config.device.starts_with("cuda") {
        lorasweep_train::device_info(&config.device).unwrap_or_else(|e| {
            tracing::warn!(device = %config.device, error = %e, "cannot ask the driver about the GPU; reporting none");
            lorasweep_train::DeviceInfo::default()
        })
    } else {
        lorasweep_train::DeviceInfo::default()
    };
    let req = pb::RegisterWorkerRequest {
        name: config.name.clone(),
        device: config.device.clone(),
        trainer: config.trainer.name().to_string(),
        // What a scheduler bound to this process; `lorasweep workers` shows it.
        visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
        cpu_threads: u32::try_from(lorasweep_train::cpu::thread_count(None)).unwrap_or(u32::MAX),
        gpu_memory_bytes: if config.gpu_memory_bytes > 0 { config.gpu_memory_bytes } else { gpu.memory_bytes },
        gpu_name: gpu.name,
    };
    let mut backoff = Backoff::new(config.max_backoff);
    loop {
        let mut c = client.clone();
        match c.register_worker(req.clone()).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let heartbeat_every = Duration::from_millis(resp.heartbeat_interval_ms.max(10));
                tracing::info!(worker_id = %resp.worker_id, name = %config.name, lease_ttl_ms = resp.lease_ttl_ms,
                    heartbeat_ms = heartbeat_every.as_millis() as u64, "registered with the coordinator");
                live.registered(&resp.worker_id);
                if !shutdown.is_cancelled() {
                    live.set_state(State::Idle);
                }
                return Some(JobContext {
                    status: live.clone(),
                    client: client.clone(),
                    artifacts: artifacts.clone(),
                    worker_id: resp.worker_id,
                    heartbeat_every,
                    max_backoff: config.max_backoff,
                    shutdown: stop.clone(),
                });
            }
            Err(status) => {
                let wait = backoff.next_wait();
                if rpc::is_transient(&status) {
                    tracing::warn!(coordinator = %config.coordinator, code = ?status.code(), error = %status.message(),
                        retry_in_ms = wait.as_millis() as u64, "cannot register: coordinator unreachable; retrying");
                } else {
                    tracing::error!(coordinator = %config.coordinator, code = ?status.code(), error = %status.message(),
                        "registration refused; retrying");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Cancels `token` on the first ctrl-c or SIGTERM, which is how `main` starts a graceful
/// shutdown.
pub async fn cancel_on_signal(token: CancellationToken) {
    cancel_on_signals(token, CancellationToken::new()).await;
}

/// Cancels `soft` on the first ctrl-c or SIGTERM and `hard` on the second: the arguments of
/// [`run_until`].
pub async fn cancel_on_signals(soft: CancellationToken, hard: CancellationToken) {
    lorasweep_common::shutdown::signalled("worker").await;
    soft.cancel();
    lorasweep_common::shutdown::signalled("worker").await;
    tracing::warn!("second signal: releasing the lease now, without waiting for a checkpoint");
    hard.cancel();
}
