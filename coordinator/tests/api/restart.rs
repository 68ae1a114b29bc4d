//! Restarts on the same data directory: acknowledged writes survive, and a lease that is still
//! valid keeps working. One test restarts in process; one kills the real binary with SIGKILL.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::Context;
use lorasweep_proto::pb::{self, sweeps_client::SweepsClient, workers_client::WorkersClient};

use crate::helpers::*;

#[tokio::test]
async fn restart_keeps_points_and_honours_a_live_lease() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let sweep_id = c.submit(&grid(1, 2)).await?;
    let worker = c.register("w").await?;
    let lease = c.lease(&worker).await?;
    c.report(&lease.job_id, lease.attempt, &train_points(500), 100).await?;

    let mut c = c.restart().await?;
    c.clock.advance(TTL / 2);
    let beat = c.heartbeat(&worker, &lease.job_id, lease.attempt).await?;
    assert!(!beat.cancel, "the lease survived the restart");
    c.report(&lease.job_id, lease.attempt, &train_points(600)[500..], 100).await?;
    c.complete(&worker, &lease, 1.7).await?;
    let curve = read_curve(&mut c.sweeps, &lease.job_id.clone()).await?;
    assert_eq!(curve.train_steps, (1..=600).collect::<Vec<_>>());
    let job = c.job(&sweep_id, &lease.job_id).await?;
    assert_eq!((state(&job), job.attempt), (pb::JobState::Succeeded, 1));
    c.stop().await?;
    Ok(())
}

/// Starts the real binary on `dir` and returns it with its address, read from its log.
fn start_binary(dir: &std::path::Path) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lorasweep-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    // Read the log on a thread (and keep draining it, so the child never blocks on a full pipe);
    // the address comes back over a channel with a timeout, so a silent child fails the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("127.0.0.1:") {
                let port: String = line[at + 10..].chars().take_while(char::is_ascii_digit).collect();
                if line.contains("serving") && !port.is_empty() {
                    let _ = tx.send(format!("http://127.0.0.1:{port}"));
                }
            }
        }
    });
    let addr = match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(addr) => addr,
        Err(e) => {
            let _ = child.kill();
            anyhow::bail!("the coordinator did not log its address within 10 s: {e}");
        }
    };
    Ok((child, addr))
}

#[tokio::test]
async fn kill_9_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::TempDir::new()?;
    let (mut child, addr) = start_binary(dir.path())?;
    let mut sweeps = SweepsClient::connect(addr.clone()).await?;
    let mut workers = WorkersClient::connect(addr).await?;
    let sweep_id = sweeps
        .submit_sweep(pb::SubmitSweepRequest { sweep_toml: grid(1, 1), source: "k.toml".into() })
        .await?
        .into_inner()
        .sweep_id;
    let worker = workers
        .register_worker(pb::RegisterWorkerRequest { name: "w".into(), ..Default::default() })
        .await?
        .into_inner()
        .worker_id;
    let lease = workers
        .lease_job(pb::LeaseJobRequest { worker_id: worker.clone() })
        .await?
        .into_inner()
        .lease
        .context("lease")?;
    let points: Vec<_> = train_points(20_000)
        .chunks(1000)
        .map(|chunk| pb::ReportPointsRequest {
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            points: chunk.to_vec(),
        })
        .collect();
    let committed = workers.report_points(tokio_stream::iter(points)).await?.into_inner().committed;
    assert_eq!(committed, 20_000);

    child.kill()?; // SIGKILL: no graceful shutdown, no checkpoint
    child.wait()?;
    let (mut child, addr) = start_binary(dir.path())?;
    let mut sweeps = SweepsClient::connect(addr.clone()).await?;
    let mut workers = WorkersClient::connect(addr).await?;
    let curve = read_curve(&mut sweeps, &lease.job_id.clone()).await?;
    assert_eq!(curve.train_steps.len(), 20_000, "every acknowledged point survived kill -9");
    let beat = workers
        .heartbeat(pb::HeartbeatRequest {
            worker_id: worker,
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            step: 20_000,
            total_steps: 0,
        })
        .await?
        .into_inner();
    assert!(!beat.cancel, "the still-valid lease is honoured after the restart");
    let jobs =
        sweeps.list_jobs(pb::ListJobsRequest { sweep_id, state: 0, ..Default::default() }).await?.into_inner().jobs;
    assert_eq!((state(&jobs[0]), jobs[0].step), (pb::JobState::Running, 20_000));
    child.kill()?;
    child.wait()?;
    Ok(())
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() -> anyhow::Result<()> {
    let dir = tempfile::TempDir::new()?;
    let (mut child, addr) = start_binary(dir.path())?;
    let mut sweeps = SweepsClient::connect(addr).await?;
    sweeps.submit_sweep(pb::SubmitSweepRequest { sweep_toml: grid(1, 1), source: "t.toml".into() }).await?;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("the coordinator did not exit within 10 s of SIGTERM");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
    Ok(())
}
