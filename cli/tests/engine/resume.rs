//! Checkpoints across containers: a 4-job candle sweep on the tiny fixture model (in a volume
//! every worker container mounts), two worker containers, one of them `docker kill`ed after its
//! job uploaded checkpoints. A third container takes the requeued job over, resumes from the
//! checkpoint the killed one stored, and every stored curve and final eval loss is bit-identical
//! to a fault-free run computed in this process.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, ensure};
use lorasweep_common::{Series, SweepSpec};
use lorasweep_train::CandleTrainer;

use crate::{
    docker::{cli_json, copy_data_out, docker, engine_test, field, log_lines, open_db, repo, wait_for, worker_healthz},
    tiny,
};

fn sweep_toml(model: &str, data: &str) -> String {
    tiny::sweep_toml(
        "resume",
        model,
        data,
        5,
        "inits = [\"standard\", \"ortho-qr-const\"]\nlrs = [1e-3, 1e-2]\nseeds = [5]",
    )
}

/// `(series, step, loss bits)`, sorted.
type Curve = Vec<(String, i64, i64)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps engine tests from running at once; each test has its own runtime, so
// holding it across awaits blocks nothing that could release it.
#[allow(clippy::await_holding_lock)]
#[ignore = "needs a Docker engine: cargo test --workspace --test engine -- --ignored (.ci/run runs it)"]
async fn a_killed_candle_container_resumes_from_its_checkpoint_bit_for_bit_in_another() -> anyhow::Result<()> {
    let (_serial, mut scope) = engine_test("resume")?;
    let net = scope.network("sweep")?;
    let cache = scope.volume("cache")?;
    let mount = format!("{cache}:/cache");

    // The fixture model and data, copied into the shared volume through a short-lived container.
    let loader = scope.start("loader", &["-v", &mount, "--entrypoint", "sleep", "lorasweep-worker:dev", "600"])?;
    let fixtures = repo().join("train/tests/fixtures");
    for name in ["tiny-qwen2", "tiny-data"] {
        docker(&["cp", &fixtures.join(name).display().to_string(), &format!("{loader}:/cache/{name}")])?;
    }
    docker(&["rm", "-f", &loader])?;

    let coord = scope.start(
        "coordinator",
        &[
            "--network",
            &net,
            "--network-alias",
            "coordinator",
            "lorasweep-coordinator:dev",
            "--lease-ttl",
            "2s",
            "--insecure",
        ],
    )?;
    wait_for("the coordinator to answer", Duration::from_secs(60), || {
        Ok(docker(&["exec", &coord, "lorasweep", "health"]).ok())
    })?;
    let worker = |name: &str| {
        scope.start(
            name,
            &[
                "--network",
                &net,
                "-v",
                &mount,
                "lorasweep-worker:dev",
                "--name",
                name,
                "--trainer",
                "candle",
                "--max-backoff-ms",
                "200",
            ],
        )
    };
    let workers = [worker("w1")?, worker("w2")?];

    let toml = sweep_toml("/cache/tiny-qwen2", "/cache/tiny-data");
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &toml)?;
    // Readable by the containers' user (a temp file is 0600).
    std::fs::set_permissions(file.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    docker(&["cp", &file.path().display().to_string(), &format!("{coord}:/tmp/sweep.toml")])?;
    let sweep = docker(&["exec", &coord, "lorasweep", "submit", "/tmp/sweep.toml"])?;

    // Kill the first worker seen past step 12: its checkpoints of steps 5 and 10 are stored
    // (an upload waits only for the points before it, a few hundred ms).
    let (victim, job_id, step) = wait_for("a job past two checkpoints", Duration::from_secs(180), || {
        for w in &workers {
            let line = worker_healthz(w)?;
            if let (Some(job), Some(steps)) = (field(&line, "job"), field(&line, "step")) {
                let step: u64 = steps.split('/').next().unwrap_or("0").parse().unwrap_or(0);
                if step >= 12 {
                    return Ok(Some((w.clone(), job.to_string(), step)));
                }
            }
        }
        Ok(None)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    docker(&["kill", &victim])?;
    eprintln!("killed {victim} at step ≥ {step} of job {job_id}");
    let replacement = worker("w3")?;

    wait_for("the 4 jobs to succeed", Duration::from_secs(300), || {
        let status = cli_json(&coord, &["status", &sweep, "--json"])?;
        Ok((status["counts"]["succeeded"].as_u64() == Some(4)).then_some(()))
    })?;
    let resumed: Vec<String> = [&workers[0], &workers[1], &replacement]
        .iter()
        .filter(|w| ***w != victim)
        .map(|w| log_lines(w, "resuming from checkpoint"))
        .collect::<anyhow::Result<Vec<_>>>()?
        .concat();
    ensure!(
        resumed.iter().any(|l| l.contains(&job_id)),
        "no worker logged resuming job {job_id} from a checkpoint: {resumed:?}"
    );

    docker(&["stop", &coord])?;
    let out = tempfile::tempdir()?;
    let db = open_db(&copy_data_out(&coord, out.path())?).await?;
    let rows: Vec<(String, f64, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT j.init, j.lr, j.attempt, p.series, p.step, p.bits FROM loss_points p JOIN jobs j ON j.pk = p.job_pk \
         WHERE j.sweep_id = ?1 ORDER BY j.init, j.lr, p.series, p.step",
    )
    .bind(&sweep)
    .fetch_all(&db)
    .await?;
    let finals: Vec<(String, String, f64, i64, Option<f64>)> =
        sqlx::query_as("SELECT id, init, lr, attempt, final_eval_loss FROM jobs WHERE sweep_id = ?1")
            .bind(&sweep)
            .fetch_all(&db)
            .await?;
    db.close().await;
    let mut stored: HashMap<(String, u64), Curve> = HashMap::new();
    for (init, lr, _, series, step, bits) in rows {
        stored.entry((init, lr.to_bits())).or_default().push((series, step, bits));
    }
    let victim_attempt = finals.iter().find(|f| f.0 == job_id).map(|f| f.3).context("the killed job is gone")?;
    ensure!(victim_attempt >= 2, "the killed worker's job ran only {victim_attempt} attempt(s)");

    // The fault-free reference, in this process, on the same files.
    let mut trainer = CandleTrainer::new("cpu")?;
    let host_toml = sweep_toml(
        &fixtures.join("tiny-qwen2").display().to_string(),
        &fixtures.join("tiny-data").display().to_string(),
    );
    for spec in SweepSpec::parse(&host_toml, "resume.toml")?.jobs() {
        let (points, final_eval_loss) = tiny::reference(&mut trainer, &spec)?;
        let mut want: Curve = points
            .iter()
            .map(|p| {
                (
                    if p.series == Series::Train { "train" } else { "eval" }.to_string(),
                    p.step as i64,
                    p.loss.to_bits() as i64,
                )
            })
            .collect();
        want.sort();
        let key = (spec.init.to_string(), spec.lr.to_bits());
        let got = stored.get(&key).with_context(|| format!("no stored curve for {key:?}"))?;
        ensure!(got == &want, "{} lr {}: the stored curve differs from the fault-free run", spec.init, spec.lr);
        let final_loss = finals.iter().find(|f| f.1 == key.0 && f.2.to_bits() == key.1).and_then(|f| f.4);
        ensure!(
            final_loss.map(f64::to_bits) == final_eval_loss.map(f64::to_bits),
            "{} lr {}: final eval loss {final_loss:?} vs fault-free {final_eval_loss:?}",
            spec.init,
            spec.lr
        );
    }
    scope.passed();
    Ok(())
}
