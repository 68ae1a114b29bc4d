//! docker/compose.yaml as a user runs it: tokens from secret files, `up` with two workers, the
//! `demo` profile's tiny sweep in containers printing the results table, healthchecks, `down -v`.
//! Works with `docker compose` (v2) or Debian's `docker-compose` 1.29, whichever is installed.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use crate::docker::{docker, engine_test, health, repo, wait_for};

/// `docker compose` if the plugin is there, else `docker-compose`.
fn compose_command() -> anyhow::Result<Vec<String>> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    if works("docker", &["compose", "version"]) {
        Ok(vec!["docker".into(), "compose".into()])
    } else if works("docker-compose", &["version"]) {
        Ok(vec!["docker-compose".into()])
    } else {
        bail!("neither `docker compose` nor `docker-compose` is installed (Debian: apt-get install docker-compose)")
    }
}

/// One compose project; `down -v` on drop, whatever happened.
struct Project {
    base: Vec<String>,
    env: Vec<(String, String)>,
}

impl Project {
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.base[0]);
        cmd.args(&self.base[1..]).args(args).envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        let out = cmd.output().with_context(|| format!("running {}", self.base.join(" ")))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success(), "`{} {}` failed ({}):\n{text}", self.base.join(" "), args.join(" "), out.status);
        Ok(text)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["--profile", "demo", "down", "-v", "--remove-orphans"]);
    }
}

#[test]
#[ignore = "needs a Docker engine: cargo test --workspace --test engine -- --ignored (.ci/run runs it)"]
fn compose_serves_with_tokens_and_the_demo_profile_prints_results() -> anyhow::Result<()> {
    let (_serial, scope) = engine_test("compose")?;
    let project_name = scope.name("p").to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let secrets = tempfile::tempdir()?;
    for role in ["admin", "worker"] {
        let path = secrets.path().join(format!("{role}-token"));
        let token: String = format!("{role}-{:032x}", rand_u128());
        std::fs::write(&path, token)?;
        // The images' user (uid 10001) reads it; nobody else may.
        std::os::unix::fs::chown(&path, Some(10001), Some(10001))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let compose_file = repo().join("docker/compose.yaml");
    let mut base = compose_command()?;
    base.extend(["-p".into(), project_name.clone(), "-f".into(), compose_file.display().to_string()]);
    let project = Project {
        base,
        env: vec![
            ("LORASWEEP_SECRETS".into(), secrets.path().display().to_string()),
            ("LORASWEEP_DEMO_INITS".into(), "standard,ortho-qr-match".into()),
            ("LORASWEEP_DEMO_LRS".into(), "1e-3,1e-2".into()),
            ("LORASWEEP_DEMO_ROWS".into(), "160".into()),
        ],
    };

    let started = Instant::now();
    // `depends_on: service_healthy`: `up` returns once the coordinator's HEALTHCHECK passed and
    // the workers are started.
    project.run(&["up", "-d", "--scale", "worker=2"])?;
    let up_took = started.elapsed();
    let ps = |service: &str| -> anyhow::Result<Vec<String>> {
        Ok(project
            .run(&["ps", "-q", service])?
            .split_whitespace()
            .filter(|l| l.len() >= 12)
            .map(str::to_string)
            .collect())
    };
    let coordinator = ps("coordinator")?.pop().context("no coordinator container")?;
    ensure!(health(&coordinator)? == "healthy", "coordinator not healthy after `up`");
    let workers = ps("worker")?;
    ensure!(workers.len() == 2, "expected 2 worker containers, got {workers:?}");
    for w in &workers {
        wait_for("a worker's HEALTHCHECK", Duration::from_secs(60), || Ok((health(w)? == "healthy").then_some(())))?;
    }
    let all_healthy = started.elapsed();
    eprintln!(
        "compose: `up -d --scale worker=2` returned after {:.1} s (coordinator healthy), workers healthy after {:.1} s",
        up_took.as_secs_f64(),
        all_healthy.as_secs_f64()
    );

    // Tokens are on, read from the secret files: the worker token may not steer sweeps.
    let refused = Command::new("docker")
        .args([
            "exec",
            "-e",
            "LORASWEEP_TOKEN_FILE=/run/secrets/worker_token",
            &coordinator,
            "lorasweep",
            "cancel",
            "nosuchsweep",
        ])
        .output()?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(!refused.status.success() && said.contains("admin token"), "the worker token steered a sweep: {said}");

    let demo_started = Instant::now();
    let out = project.run(&["--profile", "demo", "run", "--rm", "demo"])?;
    eprintln!("compose demo ({:.1} s):\n{out}", demo_started.elapsed().as_secs_f64());
    ensure!(out.contains("finished: succeeded=4"), "the demo sweep did not finish with 4 succeeded jobs:\n{out}");
    ensure!(out.contains("Final eval loss") && out.contains("Ortho QR (Match)"), "no results table:\n{out}");
    // Nothing is published: the network is internal and no port is mapped.
    let ports = docker(&["port", &coordinator])?;
    ensure!(ports.is_empty(), "the coordinator publishes ports: {ports}");
    Ok(())
}

/// Enough randomness for a test token, without a dependency.
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (u128::from(h.finish()) << 64) | u128::from(std::collections::hash_map::RandomState::new().build_hasher().finish())
}
