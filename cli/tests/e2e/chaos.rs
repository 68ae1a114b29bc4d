//! Chaos: a coordinator process and 3 candle worker processes run a 35-job grid on the tiny
//! fixture with checkpoints, while workers are SIGKILLed (and restarted) several times and the
//! coordinator once. Every job must end succeeded with exactly the fault-free run's curve (no
//! point lost or duplicated) and final eval loss, bit for bit.

use std::collections::HashMap;
use std::time::Duration;

use lorasweep_common::{JobSpec, LossPoint, Series, SweepSpec};
use lorasweep_proto::pb;
use lorasweep_proto::pb::artifacts_client::ArtifactsClient;
use lorasweep_train::CandleTrainer;
use lorasweep_train::Progress;

use crate::helpers::{self, Proc, await_condition, await_sweep_done, clients, fixture, start_coordinator_process};

/// 5 inits × 7 lrs = 35 jobs of three epochs (66 optimizer steps) each, a checkpoint every 5.
/// One epoch used to be enough, but the trainer got fast enough that a job often finished
/// between the moment the test saw it past a checkpoint and the kill.
fn sweep_toml() -> String {
    format!(
        "[model]\npath = {:?}\ndtype = \"f32\"\n[data]\npath = {:?}\nmax_length = 64\nshuffle = true\n\
         [lora]\nr = 4\nalpha = 8.0\ndropout = 0.1\ntargets = [\"q_proj\", \"v_proj\"]\n\
         [train]\nmicro_batch = 2\ngrad_accum = 2\nepochs = 3\neval_every = 8\ncheckpoint_every = 5\n\
         divergence_threshold = 100.0\n[grid]\n\
         inits = [\"standard\", \"reversed\", \"ortho-eye\", \"ortho-qr-const\", \"ortho-qr-match\"]\n\
         lrs = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]\nseeds = [11]\n",
        fixture("tiny-qwen2"),
        fixture("tiny-data")
    )
}

#[derive(Default)]
struct Points(Vec<LossPoint>);

impl Progress for Points {
    fn total_steps(&mut self, _: u64) {}
    fn point(&mut self, p: LossPoint) {
        self.0.push(p);
    }
    fn cancelled(&self) -> bool {
        false
    }
}

/// `(series, step, loss bits)` of a curve, in order.
type Curve = Vec<(i32, u64, u64)>;

fn key(init: &str, lr: f64) -> (String, u64) {
    (init.to_string(), lr.to_bits())
}

/// The fault-free curves, computed in this process with one resident trainer.
fn reference(jobs: Vec<JobSpec>) -> anyhow::Result<HashMap<(String, u64), Curve>> {
    let mut trainer = CandleTrainer::new("cpu")?;
    let mut out = HashMap::new();
    for job in jobs {
        let mut points = Points::default();
        trainer.run_job(&job, None, None, &mut points)?;
        let mut curve: Curve = points
            .0
            .iter()
            .map(|p| (if p.series == Series::Train { 1 } else { 2 }, p.step, p.loss.to_bits()))
            .collect();
        curve.sort();
        out.insert(key(&job.init.to_string(), job.lr), curve);
    }
    Ok(out)
}

fn worker(url: &str, n: usize, life: usize, dir: &std::path::Path) -> anyhow::Result<Proc> {
    let name = format!("w{n}-{life}");
    Proc::start(
        &["--coordinator", url, "worker", "--name", &name, "--trainer", "candle", "--max-backoff-ms", "200"],
        dir.join(format!("{name}.log")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_the_coordinator_killed_mid_sweep_lose_and_change_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (mut coordinator, url) =
        start_coordinator_process(&data, "127.0.0.1:0", "1s", dir.path().join("coordinator-0.log")).await?;
    let listen = url.trim_start_matches("http://").to_string();
    let toml = sweep_toml();
    let (mut sweeps, _) = clients(&url).await?;
    let sweep = helpers::submit(&mut sweeps, &toml).await?;
    let specs = SweepSpec::parse(&toml, "chaos.toml")?.jobs();
    assert_eq!(specs.len(), 35);
    let want = tokio::task::spawn_blocking(move || reference(specs));

    let mut workers: Vec<Proc> = (0..3).map(|n| worker(&url, n, 0, dir.path())).collect::<anyhow::Result<_>>()?;
    let mut lives = [0usize; 3];
    // Four times, kill the live worker of a running job that is past its first checkpoint and
    // well short of its last step (so every kill lands mid-job) and start a new one in its place;
    // once, kill the coordinator.
    let mut kills = 0;
    for round in 0..5 {
        if round == 2 {
            coordinator.kill9().await?;
            let (c, _) = start_coordinator_process(&data, &listen, "1s", dir.path().join("coordinator-1.log")).await?;
            coordinator = c;
            (sweeps, _) = clients(&url).await?;
            continue;
        }
        let live: Vec<String> = (0..3).map(|n| format!("w{n}-{}", lives[n])).collect();
        let victim = await_condition("a live worker's job with a stored checkpoint", Duration::from_secs(60), || {
            let (mut s, sweep, live, url) = (sweeps.clone(), sweep.clone(), live.clone(), url.clone());
            async move {
                let names: HashMap<String, String> = s
                    .list_workers(pb::ListWorkersRequest::default())
                    .await?
                    .into_inner()
                    .workers
                    .into_iter()
                    .map(|w| (w.id, w.name))
                    .collect();
                let jobs = helpers::jobs(&mut s, &sweep).await?;
                let mut artifacts = ArtifactsClient::connect(url).await?;
                for j in jobs.iter().filter(|j| j.state == pb::JobState::Running as i32 && j.step <= 45) {
                    let Some(slot) = names.get(&j.worker).and_then(|name| live.iter().position(|l| l == name)) else {
                        continue;
                    };
                    // A checkpoint is uploaded after its points are acknowledged, so the job's
                    // step alone does not say one is stored yet.
                    let listed = artifacts
                        .list_artifacts(pb::ListArtifactsRequest {
                            job_id: j.id.clone(),
                            kind: pb::ArtifactKind::Checkpoint as i32,
                        })
                        .await?
                        .into_inner();
                    if !listed.artifacts.is_empty() {
                        return Ok(Some(slot));
                    }
                }
                Ok(None)
            }
        })
        .await;
        let Ok(n) = victim else { break }; // the sweep is nearly done
        workers[n].kill9().await?;
        lives[n] += 1;
        workers[n] = worker(&url, n, lives[n], dir.path())?;
        kills += 1;
    }
    assert!(kills >= 2, "too few kills landed mid-sweep");

    let jobs = await_sweep_done(&sweeps, &sweep, Duration::from_secs(300)).await?;
    let want = want.await??;
    let mut resumed = 0;
    for job in &jobs {
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
        let curve = crate::curve::read_curve(&mut sweeps, &job.id.clone()).await?;
        let mut got: Curve = curve
            .train_steps
            .iter()
            .zip(&curve.train_losses)
            .map(|(s, l)| (1, *s, l.to_bits()))
            .chain(curve.eval_steps.iter().zip(&curve.eval_losses).map(|(s, l)| (2, *s, l.to_bits())))
            .collect();
        got.sort();
        let reference = &want[&key(&job.init, job.lr)];
        assert_eq!(&got, reference, "job {} ({} lr {})", job.id, job.init, job.lr);
        let last_eval = reference.iter().filter(|p| p.0 == 2).max_by_key(|p| p.1).map(|p| p.2);
        assert_eq!(job.final_eval_loss.map(f64::to_bits), last_eval, "job {}", job.id);
        if job.attempt > 1 {
            resumed += 1;
        }
    }
    assert!(resumed >= 1, "no job was re-leased: the kills did not hit running jobs");
    for w in &mut workers {
        w.kill9().await?;
    }
    // At least one re-leased job continued from a checkpoint rather than from step 0.
    let logs: String = std::fs::read_dir(dir.path())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('w'))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(logs.contains("resuming from checkpoint"), "no attempt resumed from a checkpoint");
    println!(
        "chaos: {kills} worker kills + 1 coordinator kill; {resumed} jobs re-leased; {} resumes from checkpoints",
        logs.matches("resuming from checkpoint").count()
    );
    coordinator.kill9().await?;
    Ok(())
}
