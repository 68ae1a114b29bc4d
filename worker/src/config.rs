//! The worker's command-line flags ([`WorkerArgs`], clap + `LORASWEEP_*` env vars) and the
//! validated [`Config`] the daemon runs from.

use std::time::Duration;

use crate::{
    WorkerError,
    connect::{ConnectArgs, Remote},
};

/// Which training backend the worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainerKind {
    /// Qwen2 + LoRA with candle: the real experiment.
    Candle,
    /// Deterministic curves shaped like the study's, no model: for orchestration tests and demos.
    Synthetic,
}

impl TrainerKind {
    /// The name sent to the coordinator at registration.
    pub fn name(self) -> &'static str {
        match self {
            TrainerKind::Candle => "candle",
            TrainerKind::Synthetic => "synthetic",
        }
    }
}

/// Worker flags other than the coordinator address, so the `lorasweep` CLI can embed them
/// under its own global `--coordinator`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// A human-readable name shown by `lorasweep workers` (default: `$HOSTNAME/<device>`).
    #[arg(long, env = "LORASWEEP_WORKER_NAME")]
    pub name: Option<String>,
    /// The device to train on: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    #[arg(long, env = "LORASWEEP_DEVICE", default_value = "cpu")]
    pub device: String,
    /// The training backend.
    #[arg(long, env = "LORASWEEP_TRAINER", value_enum, default_value_t = TrainerKind::Candle)]
    pub trainer: TrainerKind,
    /// Milliseconds the synthetic trainer spends per optimizer step.
    #[arg(long, env = "LORASWEEP_SYNTHETIC_STEP_MS", default_value_t = 50)]
    pub synthetic_step_ms: u64,
    /// Longest wait, in milliseconds, between lease polls and between retries while the
    /// coordinator is unreachable (the wait doubles from 50 ms up to this).
    #[arg(long, env = "LORASWEEP_MAX_BACKOFF_MS", default_value_t = 2000)]
    pub max_backoff_ms: u64,
    /// Address to serve Prometheus `GET /metrics` and the `GET /healthz` probe on (plain HTTP,
    /// no auth); off if unset.
    #[arg(long, env = "LORASWEEP_WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// From the first SIGTERM (or ctrl-c) to the exit: the trainer stops at the next optimizer
    /// step, writes a checkpoint of it, uploads it and releases the lease within this; once
    /// only a few seconds of it are left (or on a second signal) the lease is released without
    /// the checkpoint. Keep it under the engine's kill timeout (Slurm's KillWait after the
    /// `--signal` lead, Kubernetes' terminationGracePeriodSeconds, `docker stop -t`).
    #[arg(long, env = "LORASWEEP_SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Exit (status 0) once the coordinator has answered "no job" for this long (e.g. `5m`), so a
    /// Slurm allocation or a Kubernetes Job ends with the sweep. Time the coordinator is
    /// unreachable does not count. Off if unset.
    #[arg(long, env = "LORASWEEP_EXIT_WHEN_IDLE", value_parser = humantime::parse_duration)]
    pub exit_when_idle: Option<Duration>,
    /// The GPU's memory in GB, reported at registration and matched against sweeps'
    /// `[requirements] min_gpu_memory_gb`; default: what the CUDA driver reports.
    #[arg(long, env = "LORASWEEP_GPU_MEMORY_GB")]
    pub gpu_memory_gb: Option<f64>,
}

/// The worker binary's flags.
#[derive(Debug, clap::Parser)]
#[command(name = "lorasweep-worker", version, about = "lorasweep worker daemon: leases jobs and trains them")]
pub struct WorkerCli {
    /// The coordinator's gRPC address.
    #[arg(long, env = "LORASWEEP_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// Token and TLS.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// CPU threads for training's matrix products (default: the CPUs this process may use, or
    /// RAYON_NUM_THREADS).
    #[arg(long, env = "LORASWEEP_THREADS")]
    pub threads: Option<usize>,
    /// Everything else.
    #[command(flatten)]
    pub args: WorkerArgs,
}

/// The validated worker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The coordinator's gRPC URL (`http://host:port`).
    pub coordinator: String,
    /// The name registered with the coordinator.
    pub name: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The training backend.
    pub trainer: TrainerKind,
    /// Per-step sleep of the synthetic trainer.
    pub synthetic_step: Duration,
    /// Cap of the poll and retry backoff.
    pub max_backoff: Duration,
    /// How to reach and authenticate to the coordinator.
    pub remote: Remote,
    /// Where `/metrics` and `/healthz` are served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// From the first signal to the exit (see [`WorkerArgs::shutdown_grace`]).
    pub shutdown_grace: Duration,
    /// Exit once idle this long.
    pub exit_when_idle: Option<Duration>,
    /// GPU memory reported at registration (0: unknown).
    pub gpu_memory_bytes: u64,
}

impl Config {
    /// Validates flags into a config.
    ///
    /// # Errors
    /// [`WorkerError::Config`] naming the flag whose value is wrong.
    pub fn new(coordinator: &str, args: WorkerArgs) -> Result<Self, WorkerError> {
        if !(coordinator.starts_with("http://") || coordinator.starts_with("https://")) {
            return Err(WorkerError::Config(format!(
                "--coordinator {coordinator:?}: expected a URL like http://host:50051"
            )));
        }
        let device = args.device.trim().to_string();
        let device_ok = device == "cpu"
            || device == "cuda"
            || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<u32>().is_ok());
        if !device_ok {
            return Err(WorkerError::Config(format!("--device {device:?}: expected `cpu`, `cuda` or `cuda:N`")));
        }
        if device.starts_with("cuda") {
            visible_gpus(
                &device,
                std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
                std::env::var("SLURM_JOB_ID").ok().as_deref(),
            )
            .map_err(WorkerError::Config)?;
        }
        if args.shutdown_grace < Duration::from_secs(1) {
            return Err(WorkerError::Config(format!(
                "--shutdown-grace {}: too short to release a lease; allowed: ≥ 1s",
                humantime::format_duration(args.shutdown_grace)
            )));
        }
        if args.exit_when_idle.is_some_and(|d| d.is_zero()) {
            return Err(WorkerError::Config(
                "--exit-when-idle 0s would exit before the first lease; allowed: > 0".into(),
            ));
        }
        if args.gpu_memory_gb.is_some_and(|gb| !(gb.is_finite() && gb > 0.0)) {
            return Err(WorkerError::Config("--gpu-memory-gb must be a positive number of GB".into()));
        }
        if args.max_backoff_ms == 0 {
            return Err(WorkerError::Config("--max-backoff-ms must be positive".into()));
        }
        let name = match args.name {
            Some(n) if !n.trim().is_empty() => n.trim().to_string(),
            Some(_) => return Err(WorkerError::Config("--name must not be empty".into())),
            None => {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
                format!("{host}/{device}")
            }
        };
        Ok(Self {
            coordinator: coordinator.to_string(),
            name,
            device,
            trainer: args.trainer,
            synthetic_step: Duration::from_millis(args.synthetic_step_ms),
            max_backoff: Duration::from_millis(args.max_backoff_ms),
            remote: Remote::plain(coordinator),
            metrics_listen: args.metrics_listen,
            shutdown_grace: args.shutdown_grace,
            exit_when_idle: args.exit_when_idle,
            gpu_memory_bytes: args.gpu_memory_gb.map_or(0, |gb| (gb * 1e9) as u64),
        })
    }

    /// Adds the token and TLS settings of `connect`.
    ///
    /// # Errors
    /// [`WorkerError::Config`] naming the flag (see [`Remote::new`]).
    pub fn with_connect(mut self, connect: &ConnectArgs) -> Result<Self, WorkerError> {
        self.remote = Remote::new(&self.coordinator, connect)?;
        Ok(self)
    }
}

/// Checks that `device` (`cuda` or `cuda:N`) names a GPU this process can see, from the
/// `CUDA_VISIBLE_DEVICES` value (`cvd`) and whether it runs inside a Slurm job. Slurm sets the
/// variable to the GPUs it bound to the task, and to `NoDevFiles` (or leaves it unset) when the
/// job asked for none: a worker that then trained on "cuda" would fail later, or take a GPU
/// another task owns.
///
/// # Errors
/// A message naming the variable and what to change.
pub fn visible_gpus(device: &str, cvd: Option<&str>, slurm_job: Option<&str>) -> Result<Option<usize>, String> {
    let index: usize =
        device.strip_prefix("cuda:").map_or(Ok(0), str::parse).map_err(|_| format!("--device {device:?}"))?;
    let hint = "request GPUs from the scheduler (Slurm: --gres=gpu:1 or --gpus-per-task=1; Kubernetes: nvidia.com/gpu in limits) or use --device cpu";
    match cvd.map(str::trim) {
        Some("") => {
            Err(format!("--device {device}: CUDA_VISIBLE_DEVICES is empty, so this process sees no GPU; {hint}"))
        }
        Some("NoDevFiles") => Err(format!(
            "--device {device}: CUDA_VISIBLE_DEVICES=NoDevFiles (Slurm's value when the job has no GPU), so this process sees no GPU; {hint}"
        )),
        Some(list) => {
            let n = list.split(',').filter(|d| !d.trim().is_empty()).count();
            if index >= n {
                return Err(format!(
                    "--device {device}: CUDA_VISIBLE_DEVICES={list} makes {n} GPU(s) visible, numbered from 0 inside this process; use --device cuda:0..cuda:{}",
                    n.saturating_sub(1)
                ));
            }
            Ok(Some(n))
        }
        None => match slurm_job {
            Some(job) => Err(format!(
                "--device {device}: CUDA_VISIBLE_DEVICES is unset inside Slurm job {job}, so Slurm bound no GPU to this task; {hint}"
            )),
            // A workstation or a plain container: every GPU of the host is visible.
            None => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(argv: &[&str]) -> Result<Config, WorkerError> {
        let cli = WorkerCli::try_parse_from(argv).expect("flags parse");
        Config::new(&cli.coordinator, cli.args)
    }

    #[test]
    fn flags_become_a_config() {
        let c = parse(&[
            "w",
            "--coordinator",
            "http://10.0.0.1:7000",
            "--name",
            "gpu3",
            "--device",
            "cuda:3",
            "--trainer",
            "synthetic",
            "--synthetic-step-ms",
            "5",
        ])
        .expect("valid");
        assert_eq!(c.coordinator, "http://10.0.0.1:7000");
        assert_eq!((c.name.as_str(), c.device.as_str()), ("gpu3", "cuda:3"));
        assert_eq!(c.trainer, TrainerKind::Synthetic);
        assert_eq!(c.synthetic_step, Duration::from_millis(5));
    }

    #[test]
    fn the_gpus_a_scheduler_hid_are_refused_naming_the_variable() {
        assert_eq!(visible_gpus("cuda", Some("2"), Some("17")), Ok(Some(1)));
        assert_eq!(visible_gpus("cuda:1", Some("0,3"), None), Ok(Some(2)));
        assert_eq!(visible_gpus("cuda", None, None), Ok(None));
        for (device, cvd, slurm, needle) in [
            ("cuda", Some(""), None, "CUDA_VISIBLE_DEVICES is empty"),
            ("cuda", Some("NoDevFiles"), Some("5"), "NoDevFiles"),
            ("cuda:2", Some("0,1"), None, "cuda:0..cuda:1"),
            ("cuda", None, Some("5"), "unset inside Slurm job 5"),
        ] {
            let err = visible_gpus(device, cvd, slurm).expect_err("no usable GPU");
            assert!(err.contains(needle) && err.contains("CUDA_VISIBLE_DEVICES"), "{err}");
        }
    }

    #[test]
    fn grace_and_idle_exit_parse_and_are_checked() {
        let c = parse(&["w", "--shutdown-grace", "90s", "--exit-when-idle", "5m"]).expect("valid");
        assert_eq!((c.shutdown_grace, c.exit_when_idle), (Duration::from_secs(90), Some(Duration::from_secs(300))));
        let d = parse(&["w"]).expect("defaults");
        assert_eq!((d.shutdown_grace, d.exit_when_idle), (Duration::from_secs(25), None));
        let err = parse(&["w", "--shutdown-grace", "100ms"]).unwrap_err().to_string();
        assert!(err.contains("--shutdown-grace"), "{err}");
        let err = parse(&["w", "--exit-when-idle", "0s"]).unwrap_err().to_string();
        assert!(err.contains("--exit-when-idle"), "{err}");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = parse(&["w", "--device", "gpu0"]).unwrap_err().to_string();
        assert!(err.contains("--device") && err.contains("gpu0"), "{err}");
        let err = parse(&["w", "--coordinator", "localhost:1"]).unwrap_err().to_string();
        assert!(err.contains("--coordinator"), "{err}");
        let err = parse(&["w", "--name", " "]).unwrap_err().to_string();
        assert!(err.contains("--name"), "{err}");
    }
}
