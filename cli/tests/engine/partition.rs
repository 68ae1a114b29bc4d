//! The 140-job synthetic sweep across containers: one coordinator and three workers on an
//! internal network, a lease TTL of 3 s. Mid-sweep one worker is `docker kill`ed, another is
//! disconnected from the network for 9 s (three TTLs) and reconnected, and the coordinator is
//! restarted. Every job must end succeeded exactly once, every curve must hold each step once,
//! the partitioned worker's late reports must be refused and its job finished by another worker.
//! Also: a second coordinator on the same volume is refused, naming the first.

use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail, ensure};

use crate::docker::{
    cli_json, copy_data_out, docker, engine_test, field, line_time, log_lines, open_db, secs, wait_for, wait_healthy,
    worker_healthz,
};

const STEPS: u64 = 300;
const JOBS: usize = 140;
const TTL_S: u64 = 3;
const PARTITION: Duration = Duration::from_secs(9);

/// Jobs that ended: succeeded, or diverged (the synthetic curves diverge at the study's high
/// learning rates, as the real ones do).
fn ended(coord: &str, sweep: &str) -> anyhow::Result<u64> {
    let status = cli_json(coord, &["status", sweep, "--json"])?;
    let n = |state: &str| status["counts"][state].as_u64().unwrap_or(0);
    Ok(n("succeeded") + n("diverged"))
}

/// The job a worker is training now, from its `/healthz`: `(worker_id, job_id)`.
fn training(worker: &str) -> anyhow::Result<Option<(String, String)>> {
    let line = worker_healthz(worker)?;
    Ok(match (field(&line, "state"), field(&line, "worker_id"), field(&line, "job")) {
        (Some("training"), Some(w), Some(j)) => Some((w.to_string(), j.to_string())),
        _ => None,
    })
}

fn job<'a>(jobs: &'a serde_json::Value, id: &str) -> anyhow::Result<&'a serde_json::Value> {
    jobs.as_array().and_then(|a| a.iter().find(|j| j["id"] == id)).with_context(|| format!("job {id} not listed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps engine tests from running at once; each test has its own runtime, so
// holding it across awaits blocks nothing that could release it.
#[allow(clippy::await_holding_lock)]
#[ignore = "needs a Docker engine: cargo test --workspace --test engine -- --ignored (.ci/run runs it)"]
async fn a_140_job_sweep_survives_a_kill_a_partition_and_a_coordinator_restart() -> anyhow::Result<()> {
    let (_serial, mut scope) = engine_test("partition")?;
    let net = scope.network("sweep")?;
    let data = scope.volume("data")?;
    let volume = format!("{data}:/data");
    let ttl = format!("{TTL_S}s");

    let started = Instant::now();
    // `--insecure`: no tokens on this test-made internal network (the compose test uses them).
    let coord = scope.start(
        "coordinator",
        &[
            "--network",
            &net,
            "--network-alias",
            "coordinator",
            "-v",
            &volume,
            "lorasweep-coordinator:dev",
            "--lease-ttl",
            &ttl,
            "--insecure",
        ],
    )?;
    let first_answer = wait_for("the coordinator to answer", Duration::from_secs(60), || {
        Ok(docker(&["exec", &coord, "lorasweep", "health"]).ok().map(|_| started.elapsed()))
    })?;
    let healthy = wait_healthy(&coord, Duration::from_secs(60))?;
    eprintln!(
        "coordinator container: serving {:.2} s after `docker run`, HEALTHCHECK healthy after {:.2} s",
        first_answer.as_secs_f64(),
        (first_answer + healthy).as_secs_f64()
    );

    // A second coordinator on the same volume must refuse to start, naming the first.
    let second =
        scope.start("second", &["--network", &net, "-v", &volume, "lorasweep-coordinator:dev", "--insecure"])?;
    let code = wait_for("the second coordinator to exit", Duration::from_secs(30), || {
        let state = docker(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", &second])?;
        Ok(state.strip_prefix("exited ").map(str::to_string))
    })?;
    let refusal = log_lines(&second, "another coordinator is using it")?;
    ensure!(code != "0" && !refusal.is_empty(), "a second coordinator on one volume was not refused (exit {code})");
    ensure!(refusal[0].contains("pid 1 on host"), "the refusal does not name the holder: {}", refusal[0]);

    let workers: Vec<String> = (1..=3)
        .map(|i| {
            let name = format!("w{i}");
            scope.start(
                &name,
                &[
                    "--network",
                    &net,
                    "lorasweep-worker:dev",
                    "--name",
                    &name,
                    "--trainer",
                    "synthetic",
                    "--synthetic-step-ms",
                    "3",
                    "--max-backoff-ms",
                    "300",
                ],
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let (killed, partitioned) = (&workers[2], &workers[1]);

    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), format!("name = \"partition\"\n[train]\nmax_steps = {STEPS}\n"))?;
    // Readable by the containers' user (a temp file is 0600).
    std::fs::set_permissions(file.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    docker(&["cp", &file.path().display().to_string(), &format!("{coord}:/tmp/sweep.toml")])?;
    let sweep = docker(&["exec", &coord, "lorasweep", "submit", "/tmp/sweep.toml"])?;
    let sweep_started = Instant::now();
    wait_for("5 jobs to end", Duration::from_secs(120), || Ok((ended(&coord, &sweep)? >= 5).then_some(())))?;

    // 1. kill -9 a worker mid-job.
    let (_, killed_job) = wait_for("a job on the worker to kill", Duration::from_secs(30), || training(killed))?;
    docker(&["kill", killed])?;
    let t_kill = SystemTime::now();

    // 2. Cut another worker off the network mid-job, for three lease TTLs.
    let (partitioned_id, cut_job) =
        wait_for("a job on the worker to partition", Duration::from_secs(30), || training(partitioned))?;
    docker(&["network", "disconnect", &net, partitioned])?;
    let t_disconnect = SystemTime::now();
    let relet = wait_for("the partitioned worker's job to be leased again", Duration::from_secs(30), || {
        let jobs = cli_json(&coord, &["jobs", &sweep, "--json"])?;
        let j = job(&jobs, &cut_job)?;
        let moved = j["attempt"].as_u64().unwrap_or(0) >= 2 && j["worker"].as_str() != Some(partitioned_id.as_str());
        Ok(moved.then(|| (SystemTime::now(), j["worker"].as_str().unwrap_or_default().to_string())))
    })?;
    let expiry = log_lines(&coord, "lease expired")?
        .iter()
        .find(|l| l.contains(&cut_job))
        .and_then(|l| line_time(l))
        .context("no `lease expired` log line for the partitioned worker's job")?;
    let rest = PARTITION.saturating_sub(t_disconnect.elapsed().unwrap_or_default());
    std::thread::sleep(rest);
    docker(&["network", "connect", &net, partitioned])?;
    let t_reconnect = SystemTime::now();
    let refused = wait_for("the reconnected worker's late reports to be refused", Duration::from_secs(60), || {
        Ok(log_lines(partitioned, "lease lost")?.iter().filter_map(|l| line_time(l)).find(|t| *t >= t_disconnect))
    })?;
    let refusal_line = log_lines(partitioned, "lease lost")?.join("\n");
    ensure!(refusal_line.contains("FailedPrecondition"), "the refusal is not FAILED_PRECONDITION: {refusal_line}");
    let metrics = docker(&["exec", partitioned, "lorasweep", "health", "--http", "http://127.0.0.1:9091/metrics"])?;
    ensure!(
        metrics.lines().any(|l| l.starts_with("lorasweep_worker_leases_lost_total ") && !l.ends_with(" 0")),
        "the partitioned worker's metrics do not count the lost lease:\n{metrics}"
    );
    docker(&["start", killed])?;

    // 3. Restart the coordinator (SIGTERM, then start on the same volume).
    let before_restart = ended(&coord, &sweep)?;
    let t_restart = Instant::now();
    docker(&["restart", &coord])?;
    wait_for("the restarted coordinator to answer", Duration::from_secs(60), || {
        Ok(docker(&["exec", &coord, "lorasweep", "health"]).ok())
    })?;
    let restart_took = t_restart.elapsed();

    let mut last = serde_json::Value::Null;
    let finished = wait_for("the sweep to finish", Duration::from_secs(300), || {
        last = cli_json(&coord, &["status", &sweep, "--json"])?;
        Ok((last["finished"] == true).then(|| last.clone()))
    })
    .with_context(|| format!("last status: {last}"))?;
    let counts = &finished["counts"];
    ensure!(
        counts["succeeded"].as_u64().unwrap_or(0) + counts["diverged"].as_u64().unwrap_or(0) == JOBS as u64,
        "the sweep ended with {counts}"
    );
    let sweep_took = sweep_started.elapsed();

    eprintln!("partition timeline (seconds after `docker network disconnect` of {partitioned}):");
    eprintln!("  {:>6.2}  disconnected, holding job {cut_job} (attempt 1)", 0.0);
    eprintln!("  {:>6.2}  coordinator: lease expired (TTL {TTL_S} s)", secs(t_disconnect, expiry));
    eprintln!("  {:>6.2}  job leased again (attempt 2) by worker {}", secs(t_disconnect, relet.0), relet.1);
    eprintln!("  {:>6.2}  reconnected", secs(t_disconnect, t_reconnect));
    eprintln!("  {:>6.2}  its late reports refused: lease lost", secs(t_disconnect, refused));
    eprintln!("  (worker log: {refusal_line})");
    eprintln!(
        "kill -9 of {killed} at {:.2} s before the disconnect; coordinator restart took {:.2} s with {before_restart}/{JOBS} \
         jobs done; the sweep took {:.1} s",
        secs(t_kill, t_disconnect),
        restart_took.as_secs_f64(),
        sweep_took.as_secs_f64()
    );
    let logs = Command::new("docker").args(["logs", &coord]).output()?;
    ensure!(
        !logs.stdout.windows(2).chain(logs.stderr.windows(2)).any(|w| w == b"\x1b["),
        "the coordinator writes ANSI colour codes into a non-terminal log"
    );
    ensure!(before_restart < JOBS as u64, "the sweep ended before the coordinator restart; the restart tested nothing");
    ensure!(secs(t_disconnect, expiry) >= TTL_S as f64 - 0.5, "the lease expired before its TTL");
    ensure!(refused >= t_reconnect, "a refusal logged before the reconnect cannot be the late report's");

    // The database the coordinator leaves in its volume.
    docker(&["stop", &coord])?;
    let out = tempfile::tempdir()?;
    let dir = copy_data_out(&coord, out.path())?;
    let db = open_db(&dir).await?;
    let ended_jobs: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE sweep_id = ?1 AND state IN ('succeeded', 'diverged')")
            .bind(&sweep)
            .fetch_one(&db)
            .await?;
    ensure!(ended_jobs == JOBS as i64, "{ended_jobs} of {JOBS} jobs ended succeeded or diverged");
    let completions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job_id, COUNT(*) FROM events WHERE sweep_id = ?1 AND kind IN ('succeeded', 'diverged') GROUP BY job_id",
    )
    .bind(&sweep)
    .fetch_all(&db)
    .await?;
    ensure!(completions.len() == JOBS, "{} jobs have a completion event, not {JOBS}", completions.len());
    if let Some((id, n)) = completions.iter().find(|(_, n)| *n != 1) {
        bail!("job {id} completed {n} times");
    }
    // Each step once and none missing: steps 1..=last, where last is the job's final step (all
    // of them for a succeeded job, where it stopped for a diverged one).
    let curves: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT j.id, j.state, j.step, COUNT(*), MIN(p.step), MAX(p.step) FROM loss_points p \
         JOIN jobs j ON j.pk = p.job_pk WHERE j.sweep_id = ?1 AND p.series = 'train' GROUP BY j.id",
    )
    .bind(&sweep)
    .fetch_all(&db)
    .await?;
    ensure!(curves.len() == JOBS, "{} jobs have a train curve", curves.len());
    let mut diverged = 0;
    for (id, state, last, n, lo, hi) in &curves {
        let want = if state == "succeeded" { STEPS as i64 } else { *last };
        ensure!(
            (*n, *lo, *hi) == (want, 1, want),
            "job {id} ({state}, step {last}): {n} train points, steps {lo}..={hi}"
        );
        diverged += usize::from(state == "diverged");
    }
    eprintln!("database: {JOBS} jobs ended once each ({diverged} diverged), every train curve complete");
    let attempts: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT id, attempt FROM jobs WHERE sweep_id = ?1")
            .bind(&sweep)
            .fetch_all(&db)
            .await?
            .into_iter()
            .collect();
    for (what, id) in [("killed", &killed_job), ("partitioned", &cut_job)] {
        ensure!(
            attempts.get(id.as_str()).is_some_and(|a| *a >= 2),
            "the {what} worker's job {id} was not rerun: {:?}",
            attempts.get(id.as_str())
        );
    }
    let expired: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE job_id = ?1 AND kind = 'heartbeat-lost'")
        .bind(&cut_job)
        .fetch_one(&db)
        .await?;
    ensure!(expired >= 1, "no heartbeat-lost event for the partitioned worker's job");
    // The partitioned attempt's row says it was lost; a later attempt finished the job.
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT a.outcome FROM attempts a JOIN jobs j ON j.pk = a.job_pk WHERE j.id = ?1 ORDER BY a.attempt",
    )
    .bind(&cut_job)
    .fetch_all(&db)
    .await?;
    ensure!(
        outcomes.iter().any(|o| o == "lost") && outcomes.last().is_some_and(|o| o == "succeeded" || o == "diverged"),
        "attempts of the partitioned job: {outcomes:?}"
    );
    db.close().await;
    scope.passed();
    Ok(())
}
