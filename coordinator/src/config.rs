//! Command-line flags and environment variables of `lorasweep-coordinator` ([`Cli`]), validated
//! into the [`Config`] the library runs with.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::clock::{Clock, SystemClock};

/// Run the lorasweep coordinator: a gRPC server keeping sweeps, jobs, leases and loss curves in
/// SQLite.
#[derive(Debug, clap::Parser)]
#[command(name = "lorasweep-coordinator", version, about)]
pub struct Cli {
    /// Address to serve gRPC on.
    #[arg(long, env = "LORASWEEP_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory holding the SQLite database (created if missing).
    #[arg(long, env = "LORASWEEP_DATA_DIR", default_value = "lorasweep-data")]
    pub data_dir: PathBuf,
    /// How long a lease lives past its last heartbeat (e.g. `30s`, `2m`).
    #[arg(long, env = "LORASWEEP_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// Failed or expired attempts after which a job is marked failed.
    #[arg(long, env = "LORASWEEP_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// SQLite durability: `full` fsyncs every commit (an acknowledged call survives power loss);
    /// `normal` skips it (survives a coordinator crash or kill -9, but an OS crash or power loss
    /// may lose the last commits) and is faster on slow disks.
    #[arg(long, env = "LORASWEEP_SYNCHRONOUS", value_enum, default_value_t = Durability::Full)]
    pub synchronous: Durability,
}

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// fsync the WAL on every commit: acknowledged writes survive power loss.
    Full,
    /// No fsync per commit: acknowledged writes survive a process crash, not an OS crash.
    Normal,
}

/// Validated coordinator settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the SQLite database.
    pub data_dir: PathBuf,
    /// A lease lives this long past its last heartbeat.
    pub lease_ttl: Duration,
    /// Failed or expired attempts after which a job is marked failed (≥ 1).
    pub max_attempts: u32,
    /// How often the reaper looks for expired leases. A fraction of the TTL in production;
    /// tests with a manual clock shorten it so a requeue shows up quickly.
    pub reap_interval: Duration,
    /// Minimum time between two snapshots of one WatchSweep stream, so a sweep receiving 50k
    /// points/s does not make every watcher re-read it 50k times a second.
    pub watch_interval: Duration,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// SQLite durability of a commit.
    pub synchronous: Durability,
}

/// Shortest lease TTL accepted: workers heartbeat at a third of it, and sub-second heartbeats
/// would load the single writer for nothing.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

impl Config {
    /// Settings for `data_dir` with production defaults (30 s TTL, 3 attempts, system clock).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            lease_ttl: Duration::from_secs(30),
            max_attempts: 3,
            reap_interval: Duration::from_secs(1),
            watch_interval: Duration::from_millis(250),
            clock: Arc::new(SystemClock),
            synchronous: Durability::Full,
        }
    }

    /// The interval workers are told to heartbeat at.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease_ttl / 3
    }
}

impl TryFrom<Cli> for Config {
    type Error = crate::Error;

    fn try_from(cli: Cli) -> Result<Self, Self::Error> {
        if cli.lease_ttl < MIN_LEASE_TTL {
            return Err(crate::Error::InvalidArgument(format!(
                "--lease-ttl {} is too short; allowed: ≥ 1s",
                humantime::format_duration(cli.lease_ttl)
            )));
        }
        if cli.max_attempts == 0 {
            return Err(crate::Error::InvalidArgument("--max-attempts 0 is not allowed; allowed: ≥ 1".into()));
        }
        let mut config = Config::new(cli.data_dir);
        config.lease_ttl = cli.lease_ttl;
        config.max_attempts = cli.max_attempts;
        config.synchronous = cli.synchronous;
        config.reap_interval = (cli.lease_ttl / 4).min(Duration::from_secs(1));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from([&["lorasweep-coordinator"], args].concat()).map_err(|e| e.to_string())?;
        Config::try_from(cli).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_parse_into_a_validated_config() {
        let c =
            config(&["--data-dir", "/tmp/x", "--lease-ttl", "2m", "--max-attempts", "5", "--synchronous", "normal"])
                .expect("valid flags");
        assert_eq!((c.lease_ttl, c.max_attempts, c.synchronous), (Duration::from_secs(120), 5, Durability::Normal));
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(40));
        assert_eq!(c.reap_interval, Duration::from_secs(1));
        let defaults = config(&[]).expect("defaults are valid");
        assert_eq!((defaults.lease_ttl, defaults.max_attempts), (Duration::from_secs(30), 3));
        assert_eq!(defaults.synchronous, Durability::Full);
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        for (args, needle) in [
            (&["--lease-ttl", "500ms"][..], "--lease-ttl"),
            (&["--max-attempts", "0"][..], "--max-attempts"),
            (&["--lease-ttl", "soon"][..], "soon"),
            (&["--synchronous", "off"][..], "off"),
        ] {
            let err = config(args).expect_err("bad flag accepted");
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
