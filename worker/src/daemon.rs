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
    job::{self, JobContext},
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

/// Runs the daemon until `shutdown` is cancelled.
///
/// # Errors
/// Only for problems that retrying cannot fix: an unusable coordinator URL or trainer.
/// An unreachable coordinator is waited for, not an error.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
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
    let mut trainer = make_trainer(&config)?;
    let endpoint = config.remote.endpoint()?.timeout(CALL_TIMEOUT).connect_timeout(CONNECT_TIMEOUT);
    // Lazy: the channel (re)connects on use, so a coordinator restart needs nothing from us.
    let client = WorkersClient::new(config.remote.authed(endpoint.connect_lazy()));
    // Artifacts get their own channel without the per-call timeout: a large checkpoint may take
    // longer than a control call is allowed to.
    let artifacts = ArtifactsGrpc::new(
        config.remote.authed(config.remote.endpoint()?.connect_timeout(CONNECT_TIMEOUT).connect_lazy()),
    );

    let Some(mut ctx) = register(&config, &client, &artifacts, &live, &shutdown).await else {
        return Ok(());
    };
    let mut idle = Backoff::new(config.max_backoff);
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
                    trainer = match job::run_job(&ctx, lease, trainer).await {
                        Some(t) => t,
                        None => make_trainer(&config)?,
                    };
                    continue;
                }
                None => {
                    live.contact();
                    tracing::debug!("no queued job");
                }
            },
            Err(status) if status.code() == tonic::Code::NotFound => {
                // The coordinator forgot us (a fresh database): register again.
                tracing::warn!(error = %status.message(), "coordinator does not know this worker; registering again");
                match register(&config, &client, &artifacts, &live, &shutdown).await {
                    Some(c) => ctx = c,
                    None => break,
                }
                continue;
            }
            Err(status) => tracing::warn!(
                coordinator = %config.coordinator, code = ?status.code(), error = %status.message(),
                "leasing failed; coordinator unreachable? retrying"
            ),
        }
        let wait = idle.next_wait();
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!(worker_id = %ctx.worker_id, "worker stopped");
    Ok(())
}

/// Registers, retrying until the coordinator answers; `None` if shut down first.
async fn register(
    config: &Config,
    client: &WorkersClient<Authed>,
    artifacts: &ArtifactsGrpc,
    live: &Arc<WorkerStatus>,
    shutdown: &CancellationToken,
) -> Option<JobContext> {
    if !shutdown.is_cancelled() {
        live.set_state(State::Registering);
    }
    let req = pb::RegisterWorkerRequest {
        name: config.name.clone(),
        device: config.device.clone(),
        trainer: config.trainer.name().to_string(),
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
                    shutdown: shutdown.clone(),
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
    lorasweep_common::shutdown::signalled("worker").await;
    token.cancel();
}
