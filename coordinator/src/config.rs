//! Command-line flags and environment variables of `lorasweep-coordinator` ([`Cli`]), validated
//! into the [`Config`] the library runs with.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::{
    auth::{Secret, Tokens},
    clock::{Clock, SystemClock},
    store::{Durability, StoreOptions},
};

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
    /// File holding the admin token (may call everything: submit, cancel, retry, and all a worker
    /// may). Alternatively set LORASWEEP_ADMIN_TOKEN. With no token at all, the coordinator only
    /// starts on a loopback address (or with --insecure).
    #[arg(long, env = "LORASWEEP_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The admin token itself (prefer the file: a flag shows in `ps`).
    #[arg(long, env = "LORASWEEP_ADMIN_TOKEN", hide = true, hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the worker token (may register, lease, report and read). Alternatively set
    /// LORASWEEP_WORKER_TOKEN.
    #[arg(long, env = "LORASWEEP_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// The worker token itself (prefer the file).
    #[arg(long, env = "LORASWEEP_WORKER_TOKEN", hide = true, hide_env_values = true)]
    pub worker_token: Option<String>,
    /// File holding a read-only viewer token: the read-only calls and the dashboard, nothing
    /// that changes a sweep. Alternatively set LORASWEEP_VIEWER_TOKEN.
    #[arg(long, env = "LORASWEEP_VIEWER_TOKEN_FILE")]
    pub viewer_token_file: Option<PathBuf>,
    /// The viewer token itself (prefer the file).
    #[arg(long, env = "LORASWEEP_VIEWER_TOKEN", hide = true, hide_env_values = true)]
    pub viewer_token: Option<String>,
    /// Address to serve the read-only web dashboard on (`http://ADDR/`); off if unset. On a
    /// non-loopback address it needs tokens (a browser logs in with any of them).
    #[arg(long, env = "LORASWEEP_HTTP_LISTEN")]
    pub http: Option<SocketAddr>,
    /// Serve without tokens on a non-loopback address: anyone who reaches the port may submit
    /// and take work. Only for a network you trust entirely.
    #[arg(long, env = "LORASWEEP_INSECURE")]
    pub insecure: bool,
    /// PEM certificate chain for TLS (with --tls-key); without it gRPC is plaintext.
    #[arg(long, env = "LORASWEEP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "LORASWEEP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (`GET /metrics`, plain HTTP, no auth); off if unset.
    #[arg(long, env = "LORASWEEP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address to serve only the gRPC health protocol on (`grpc.health.v1`), plaintext and
    /// without tokens, for probes that cannot do TLS; off if unset. The main port serves it too.
    #[arg(long, env = "LORASWEEP_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Start even if --data-dir is on a network filesystem (NFS, SMB, Lustre, GPFS, CephFS, 9p,
    /// FUSE), where SQLite's WAL can corrupt the database.
    #[arg(long, env = "LORASWEEP_ALLOW_NETWORK_FS")]
    pub allow_network_fs: bool,
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
    /// The tokens calls must carry; none configured means auth is off (loopback or `insecure` only).
    pub tokens: Tokens,
    /// Allow serving without tokens on a non-loopback address.
    pub insecure: bool,
    /// TLS identity; `None` serves plaintext.
    pub tls: Option<TlsIdentity>,
    /// Start on a network filesystem despite the risk (see [`crate::data_dir`]).
    pub allow_network_fs: bool,
    /// Most points one ReportPoints stream may carry ([`crate::limits::MAX_POINTS_PER_STREAM`];
    /// tests lower it to reach the limit cheaply).
    pub max_points_per_stream: u64,
}

/// A PEM certificate chain and its private key, as read from `--tls-cert`/`--tls-key`.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// The private key (PEM); never printed.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("cert_pem_bytes", &self.cert_pem.len()).finish_non_exhaustive()
    }
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
            tokens: Tokens::default(),
            insecure: false,
            tls: None,
            allow_network_fs: false,
            max_points_per_stream: crate::limits::MAX_POINTS_PER_STREAM,
        }
    }

    /// The interval workers are told to heartbeat at.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// What the store needs of these settings.
    pub(crate) fn store_options(&self) -> StoreOptions {
        StoreOptions {
            data_dir: self.data_dir.clone(),
            durability: self.synchronous,
            clock: self.clock.clone(),
            lease_ttl: self.lease_ttl,
            max_attempts: self.max_attempts,
        }
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
        config.tokens = Tokens {
            admin: token(
                cli.admin_token_file.as_deref(),
                cli.admin_token,
                "--admin-token-file",
                "LORASWEEP_ADMIN_TOKEN",
            )?,
            worker: token(
                cli.worker_token_file.as_deref(),
                cli.worker_token,
                "--worker-token-file",
                "LORASWEEP_WORKER_TOKEN",
            )?,
            viewer: token(
                cli.viewer_token_file.as_deref(),
                cli.viewer_token,
                "--viewer-token-file",
                "LORASWEEP_VIEWER_TOKEN",
            )?,
        };
        let t = &config.tokens;
        if t.admin.is_none() && (t.worker.is_some() || t.viewer.is_some()) {
            return Err(invalid(
                "a worker or viewer token without an admin token leaves SubmitSweep/CancelSweep/RetrySweep \
                 unusable; give --admin-token-file (or LORASWEEP_ADMIN_TOKEN) too"
                    .into(),
            ));
        }
        let same = |a: &Option<crate::auth::Secret>, b: &Option<crate::auth::Secret>| a.is_some() && a == b;
        if same(&t.admin, &t.worker) {
            return Err(invalid(
                "the admin and worker tokens are identical, which makes every worker an admin; use two tokens".into(),
            ));
        }
        if same(&t.viewer, &t.admin) || same(&t.viewer, &t.worker) {
            return Err(invalid(
                "the viewer token equals the admin or worker token, which lets viewers steer sweeps or take work; \
                 use a token of its own"
                    .into(),
            ));
        }
        config.insecure = cli.insecure;
        config.allow_network_fs = cli.allow_network_fs;
        if let (Some(cert), Some(key)) = (cli.tls_cert, cli.tls_key) {
            config.tls = Some(TlsIdentity { cert_pem: read(&cert, "--tls-cert")?, key_pem: read(&key, "--tls-key")? });
        }
        Ok(config)
    }
}

/// A token file others on the host can read hands them the token; say so (not fatal: shared
/// storage often cannot express tighter modes).
fn warn_if_readable_by_others(path: &Path, flag: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "{flag}: the token file is readable by group or others; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, flag);
}

fn invalid(message: String) -> crate::Error {
    crate::Error::InvalidArgument(message)
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, crate::Error> {
    std::fs::read(path).map_err(|e| invalid(format!("{flag} {}: {e}", path.display())))
}

/// The token from `file` or from the variable's value, validated; both given is ambiguous.
fn token(file: Option<&Path>, value: Option<String>, flag: &str, var: &str) -> Result<Option<Secret>, crate::Error> {
    let (text, origin) = match (file, value) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!("both {flag} and {var} are set; give the token once")));
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|e| invalid(format!("{flag} {}: {e}", path.display())))?;
            warn_if_readable_by_others(path, flag);
            (text, format!("{flag} {}", path.display()))
        }
        (None, Some(value)) => (value, var.to_string()),
        (None, None) => return Ok(None),
    };
    Secret::new(&text, &origin).map(Some).map_err(invalid)
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
        assert!(defaults.tokens.is_open() && !defaults.insecure && defaults.tls.is_none());
    }

    #[test]
    fn tokens_come_from_files_or_values() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("admin");
        std::fs::write(&file, "admin-0123456789abcdef\n")?;
        let c = config(&[
            "--admin-token-file",
            file.to_str().expect("utf-8 temp path"),
            "--worker-token",
            "worker-0123456789abcdef",
        ])
        .map_err(anyhow::Error::msg)?;
        assert!(c.tokens.admin.is_some() && c.tokens.worker.is_some());
        let both = config(&["--admin-token-file", file.to_str().unwrap_or(""), "--admin-token", "x"]);
        assert!(both.expect_err("file and value both given").contains("once"));
        Ok(())
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        for (args, needle) in [
            (&["--lease-ttl", "500ms"][..], "--lease-ttl"),
            (&["--max-attempts", "0"][..], "--max-attempts"),
            (&["--lease-ttl", "soon"][..], "soon"),
            (&["--synchronous", "off"][..], "off"),
            (&["--admin-token", "short"][..], "LORASWEEP_ADMIN_TOKEN"),
            (&["--admin-token-file", "/nonexistent/admin"][..], "--admin-token-file"),
            (&["--worker-token", "worker-0123456789abcdef"][..], "admin token"),
            (&["--admin-token", "same-0123456789abcdef", "--worker-token", "same-0123456789abcdef"][..], "identical"),
            (&["--tls-cert", "/tmp/cert.pem"][..], "--tls-key"),
            (&["--tls-cert", "/nonexistent/c", "--tls-key", "/nonexistent/k"][..], "--tls-cert"),
        ] {
            let err = config(args).expect_err("bad flag accepted");
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
