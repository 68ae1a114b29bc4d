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
    fn bad_values_name_the_flag() {
        let err = parse(&["w", "--device", "gpu0"]).unwrap_err().to_string();
        assert!(err.contains("--device") && err.contains("gpu0"), "{err}");
        let err = parse(&["w", "--coordinator", "localhost:1"]).unwrap_err().to_string();
        assert!(err.contains("--coordinator"), "{err}");
        let err = parse(&["w", "--name", " "]).unwrap_err().to_string();
        assert!(err.contains("--name"), "{err}");
    }
}
