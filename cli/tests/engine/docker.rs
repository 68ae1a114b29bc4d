//! The harness: the `docker` CLI, the engine check, the images (built once), and [`Scope`], which
//! names, labels and finally removes everything a test creates.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};

/// The `lorasweep` binary of this build; the coordinator and worker binaries sit beside it.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lorasweep");

/// The repository root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One engine test at a time (see the crate doc).
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The start of every container test: the serial guard, the engine check, the images, and the
/// test's [`Scope`].
pub(crate) fn engine_test(test: &str) -> anyhow::Result<(MutexGuard<'static, ()>, Scope)> {
    let guard = serial();
    require_engine()?;
    images()?;
    Ok((guard, Scope::new(test)))
}

/// Runs `program args`, returning trimmed stdout; a failure names the command and its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program}` (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker args…`.
pub(crate) fn docker(args: &[&str]) -> anyhow::Result<String> {
    run("docker", args)
}

/// Fails unless a Docker engine answers, saying how to get one.
pub(crate) fn require_engine() -> anyhow::Result<()> {
    let out = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    match out {
        Err(e) => bail!(
            "these tests need a Docker engine and there is no `docker` command ({e}); install Debian's docker.io \
             and start `dockerd --bridge=none &` (.ci/run does both)"
        ),
        Ok(o) if !o.status.success() => bail!(
            "these tests need a Docker engine and none answers: {}; start one with `dockerd --bridge=none &` \
             (.ci/run does)",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => Ok(()),
    }
}

/// Builds lorasweep-coordinator:dev and lorasweep-worker:dev once per test run, from this
/// build's binaries, with docker/build.sh (which makes the base image if it is missing).
pub(crate) fn images() -> anyhow::Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bins = Path::new(BIN).parent().expect("a binary lives in a directory");
            for b in ["lorasweep-coordinator", "lorasweep-worker"] {
                if !bins.join(b).exists() {
                    return Err(format!(
                        "{} is missing: build the workspace's binaries first (`cargo build --workspace --all-targets`)",
                        bins.join(b).display()
                    ));
                }
            }
            let started = Instant::now();
            let script = repo().join("docker/build.sh");
            let out = run("bash", &[&script.display().to_string(), "--bin-dir", &bins.display().to_string()])
                .map_err(|e| format!("building the images: {e:#}"))?;
            eprintln!("{out}\n(images built in {:.1} s)", started.elapsed().as_secs_f64());
            Ok(())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Everything one test creates: names share a unique prefix and carry a label, and `Drop`
/// removes them all (printing the containers' last log lines first unless [`Scope::passed`]).
pub(crate) struct Scope {
    prefix: String,
    label: String,
    passed: bool,
}

impl Scope {
    pub(crate) fn new(test: &str) -> Self {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let prefix = format!("lst-{test}-{}-{nanos:x}", std::process::id());
        Self { label: format!("lorasweep.test={prefix}"), prefix, passed: false }
    }

    /// The scoped name of `what`.
    pub(crate) fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// An internal network: its containers reach each other and nothing else.
    pub(crate) fn network(&self, what: &str) -> anyhow::Result<String> {
        let name = self.name(what);
        docker(&["network", "create", "--internal", "--label", &self.label, &name])?;
        Ok(name)
    }

    pub(crate) fn volume(&self, what: &str) -> anyhow::Result<String> {
        let name = self.name(what);
        docker(&["volume", "create", "--label", &self.label, &name])?;
        Ok(name)
    }

    /// `docker run -d` of a container named `what` with `args` (options, image, command).
    pub(crate) fn start(&self, what: &str, args: &[&str]) -> anyhow::Result<String> {
        let name = self.name(what);
        let mut all = vec!["run", "-d", "--name", &name, "--label", &self.label];
        all.extend_from_slice(args);
        docker(&all)?;
        Ok(name)
    }

    /// Marks the test passed: no log dump on drop.
    pub(crate) fn passed(&mut self) {
        self.passed = true;
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let filter = format!("label={}", self.label);
        let ids = |kind: &[&str]| -> Vec<String> {
            let mut args = kind.to_vec();
            args.extend(["--filter", &filter, "-q"]);
            docker(&args).map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
        };
        let containers = ids(&["ps", "-a"]);
        if !self.passed {
            for c in &containers {
                let name = docker(&["inspect", "-f", "{{.Name}}", c]).unwrap_or_default();
                let logs = Command::new("docker").args(["logs", "--tail", "40", c]).output();
                if let Ok(o) = logs {
                    eprintln!(
                        "---- last log lines of {name}\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
        }
        for c in containers {
            let _ = docker(&["rm", "-f", "-v", &c]);
        }
        for n in ids(&["network", "ls"]) {
            let _ = docker(&["network", "rm", &n]);
        }
        for v in ids(&["volume", "ls"]) {
            let _ = docker(&["volume", "rm", "-f", &v]);
        }
    }
}

/// `docker exec CONTAINER lorasweep ARGS…` parsed as JSON.
pub(crate) fn cli_json(container: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = vec!["exec", container, "lorasweep"];
    all.extend_from_slice(args);
    let text = docker(&all)?;
    serde_json::from_str(&text).with_context(|| format!("`lorasweep {}` printed no JSON: {text}", args.join(" ")))
}

/// A container's health as its HEALTHCHECK last saw it (`starting`, `healthy`, `unhealthy`).
pub(crate) fn health(container: &str) -> anyhow::Result<String> {
    docker(&["inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}", container])
}

/// Polls `check` every 100 ms until it yields `Some`, failing after `timeout` with `what`.
pub(crate) fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `container`'s HEALTHCHECK reports healthy; returns how long that took.
pub(crate) fn wait_healthy(container: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    wait_for(&format!("{container} to be healthy"), timeout, || {
        Ok(match health(container)?.as_str() {
            "healthy" => Some(()),
            "unhealthy" => bail!("{container} is unhealthy: {}", docker(&["logs", "--tail", "20", container])?),
            _ => None,
        })
    })?;
    Ok(started.elapsed())
}

/// The worker's `/healthz` line, asked from inside its container.
pub(crate) fn worker_healthz(container: &str) -> anyhow::Result<String> {
    docker(&["exec", container, "lorasweep", "health", "--http", "http://127.0.0.1:9091/healthz"])
}

/// The value of `key=` in a `/healthz` line.
pub(crate) fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Copies a stopped coordinator's `/data` out of its container into `into`; returns the
/// directory holding the database.
pub(crate) fn copy_data_out(container: &str, into: &Path) -> anyhow::Result<PathBuf> {
    docker(&["cp", &format!("{container}:/data"), &into.display().to_string()])?;
    Ok(into.join("data"))
}

/// Log lines of `container` containing `needle`.
pub(crate) fn log_lines(container: &str, needle: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("docker").args(["logs", container]).output().context("docker logs")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(text.lines().filter(|l| l.contains(needle)).map(str::to_string).collect())
}

/// The time at the start of a tracing log line (`2026-12-02T02:20:36.022419Z  INFO …`).
pub(crate) fn line_time(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

/// Seconds from `from` to `to` (negative if `to` is earlier).
pub(crate) fn secs(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Opens the SQLite database in `data_dir` (a copy: WAL needs a writable `-shm`).
pub(crate) async fn open_db(data_dir: &Path) -> anyhow::Result<sqlx::SqlitePool> {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("coordinator.db"));
    Ok(sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await?)
}
