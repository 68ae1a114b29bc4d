//! Job-level client commands: `jobs`, `curve`, `workers`.

use std::str::FromStr;

use anyhow::Context;
use lorasweep_common::JobState;
use lorasweep_proto::pb;

use crate::{client, output};

/// Arguments of `lorasweep jobs`.
#[derive(Debug, clap::Args)]
pub(crate) struct JobsArgs {
    /// The sweep.
    sweep: String,
    /// Only jobs in this state (queued, running, succeeded, failed, diverged, cancelled).
    #[arg(long, value_parser = |s: &str| JobState::from_str(s).map_err(|e| e.to_string()))]
    state: Option<JobState>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `lorasweep curve`.
#[derive(Debug, clap::Args)]
pub(crate) struct CurveArgs {
    /// The job.
    job: String,
    /// Print `{"train": [[step, loss], ...], "eval": [...]}`.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print `series,step,loss` rows.
    #[arg(long)]
    csv: bool,
}

/// Arguments of `lorasweep workers`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkersArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Lists a sweep's jobs in grid order.
pub(crate) async fn jobs(url: &str, args: JobsArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let state = args.state.map_or(pb::JobState::Unspecified as i32, JobState::to_wire);
    let jobs = client
        .list_jobs(pb::ListJobsRequest { sweep_id: args.sweep.clone(), state })
        .await
        .map_err(|s| client::call_error(&format!("jobs of sweep {}", args.sweep), s))?
        .into_inner()
        .jobs;
    if args.json {
        let value: Vec<_> = jobs.iter().map(output::job_json).collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut rows = vec![
        ["JOB", "INIT", "LR", "SEED", "STATE", "ATTEMPT", "STEP", "TRAIN", "EVAL", "WORKER"].map(String::from).to_vec(),
    ];
    // The table shows worker names; ids are unique but unreadable.
    let names: std::collections::HashMap<String, String> = client
        .list_workers(pb::ListWorkersRequest {})
        .await
        .map(|r| r.into_inner().workers.into_iter().map(|w| (w.id, w.name)).collect())
        .unwrap_or_default();
    for j in &jobs {
        rows.push(vec![
            j.id.clone(),
            j.init.clone(),
            format!("{:e}", j.lr),
            j.seed.to_string(),
            output::state_name(j.state).to_string(),
            j.attempt.to_string(),
            if j.total_steps > 0 { format!("{}/{}", j.step, j.total_steps) } else { j.step.to_string() },
            output::loss(j.last_train_loss),
            output::loss(j.final_eval_loss),
            names.get(&j.worker).cloned().unwrap_or_else(|| j.worker.clone()),
        ]);
    }
    print!("{}", output::table(&rows));
    Ok(())
}

/// Prints a job's loss curves.
pub(crate) async fn curve(url: &str, args: CurveArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let curve = client
        .get_curve(pb::GetCurveRequest { job_id: args.job.clone() })
        .await
        .map_err(|s| client::call_error(&format!("curve of job {}", args.job), s))?
        .into_inner();
    if args.json {
        println!("{}", serde_json::to_string(&output::curve_json(&curve)).context("encoding the curve")?);
    } else if args.csv {
        print!("{}", output::curve_csv(&curve));
    } else {
        let mut rows = vec![["SERIES", "STEP", "LOSS"].map(String::from).to_vec()];
        for (s, l) in curve.train_steps.iter().zip(&curve.train_losses) {
            rows.push(vec!["train".into(), s.to_string(), format!("{l:.4}")]);
        }
        for (s, l) in curve.eval_steps.iter().zip(&curve.eval_losses) {
            rows.push(vec!["eval".into(), s.to_string(), format!("{l:.4}")]);
        }
        print!("{}", output::table(&rows));
    }
    Ok(())
}

/// Lists registered workers.
pub(crate) async fn workers(url: &str, args: WorkersArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let workers = client
        .list_workers(pb::ListWorkersRequest {})
        .await
        .map_err(|s| client::call_error("listing workers", s))?
        .into_inner()
        .workers;
    if args.json {
        let value: Vec<_> = workers.iter().map(output::worker_json).collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut rows = vec![
        ["WORKER", "NAME", "DEVICE", "VISIBLE GPUS", "THREADS", "TRAINER", "ALIVE", "JOB"].map(String::from).to_vec(),
    ];
    for w in &workers {
        rows.push(vec![
            w.id.clone(),
            w.name.clone(),
            w.device.clone(),
            match (w.gpu_name.as_str(), w.gpu_memory_bytes) {
                ("", 0) => "-".into(),
                (name, 0) => name.to_string(),
                (name, bytes) => format!("{} {:.0} GB", if name.is_empty() { "GPU" } else { name }, bytes as f64 / 1e9),
            },
            // CUDA_VISIBLE_DEVICES as the worker saw it; "all" when it was unset.
            if w.visible_devices.is_empty() { "all".into() } else { w.visible_devices.clone() },
            w.cpu_threads.to_string(),
            w.trainer.clone(),
            if w.alive { "yes" } else { "no" }.into(),
            w.job_id.clone(),
        ]);
    }
    print!("{}", output::table(&rows));
    Ok(())
}
