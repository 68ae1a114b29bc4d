//! The study's default grid end to end: 140 jobs, 4 synthetic workers, every job leased and
//! finished exactly once with complete curves.

use std::{collections::HashSet, time::Duration};

use lorasweep_proto::pb;

use crate::helpers::{self, await_sweep_done, clients, expected_eval_steps, spawn_coordinator, spawn_worker};

/// Optimizer steps per job: small so 140 jobs finish in seconds.
const STEPS: u64 = 6;

/// The study's diverged cells (ml-spec §1.7) that the synthetic trainer reproduces.
fn diverges(init: &str, lr: f64) -> bool {
    lr >= 9e-3 || (init == "reversed" && lr >= 4e-3) || (init == "ortho-qr-match" && lr >= 1.5e-3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_grid_completes_with_four_workers_each_job_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = spawn_coordinator(dir.path(), Duration::from_secs(5)).await?;
    let (mut sweeps, _) = clients(&coordinator.url).await?;
    // Only the step count differs from the empty file, so the grid is the default 5 × 7 × 4.
    let sweep = helpers::submit(&mut sweeps, &format!("[train]\nmax_steps = {STEPS}\n")).await?;
    let started = std::time::Instant::now();
    let workers: Vec<_> =
        (0..4).map(|i| spawn_worker(&coordinator.url, &format!("w{i}"), 1)).collect::<Result<_, _>>()?;

    let jobs = await_sweep_done(&sweeps, &sweep, Duration::from_secs(120)).await?;
    let elapsed = started.elapsed();
    eprintln!("140 jobs x {STEPS} steps with 4 synthetic workers: {elapsed:.2?}");
    assert_eq!(jobs.len(), 140);

    let mut cells = HashSet::new();
    let mut used_workers = HashSet::new();
    for job in &jobs {
        assert!(cells.insert((job.init.clone(), job.lr.to_bits(), job.seed)), "duplicate cell {job:?}");
        let expected = if diverges(&job.init, job.lr) { pb::JobState::Diverged } else { pb::JobState::Succeeded };
        assert_eq!(job.state, expected as i32, "{} lr={} seed={}", job.init, job.lr, job.seed);
        assert_eq!((job.attempt, job.failures), (1, 0), "leased exactly once: {job:?}");
        assert_eq!((job.step, job.total_steps), (STEPS, STEPS));
        used_workers.insert(job.worker.clone());

        let curve = crate::curve::read_curve(&mut sweeps, &job.id.clone()).await?;
        assert_eq!(curve.train_steps, (1..=STEPS).collect::<Vec<_>>(), "train curve of {}", job.id);
        assert_eq!(curve.eval_steps, expected_eval_steps(STEPS), "eval curve of {}", job.id);
        assert_eq!(job.final_eval_loss, curve.eval_losses.last().copied(), "final eval of {}", job.id);
        if expected == pb::JobState::Succeeded {
            let last = job.final_eval_loss.expect("succeeded jobs have a final eval");
            assert!((2.15..2.45).contains(&last), "{} lr={} ends at {last}", job.init, job.lr);
        }
    }
    assert_eq!(used_workers.len(), 4, "all four workers took jobs");
    assert_eq!(jobs.iter().filter(|j| j.state == pb::JobState::Diverged as i32).count(), 32);

    let status = sweeps.get_sweep(pb::GetSweepRequest { sweep_id: sweep.clone() }).await?.into_inner();
    assert_eq!(status.sweep.map(|s| s.total), Some(140));
    for w in workers {
        w.stop().await?;
    }
    coordinator.stop().await
}
