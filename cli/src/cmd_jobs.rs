//! Job-level client commands: `jobs`, `job`, `curve`, `workers`, `events`, `logs`.

use std::str::FromStr;

use anyhow::Context;
use lorasweep_common::JobState;
use lorasweep_proto::pb;

use crate::{client, output};

/// Characters of an error the `jobs` table shows (`job JOB` shows it whole).
const ERROR_COLUMN: usize = 60;

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

/// Arguments of `lorasweep job`.
#[derive(Debug, clap::Args)]
pub(crate) struct JobArgs {
    /// The job.
    job: String,
    /// Print JSON (`{"job", "sweep_name", "spec", "attempts", "artifacts"}`).
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

/// Arguments of `lorasweep events`.
#[derive(Debug, clap::Args)]
pub(crate) struct EventsArgs {
    /// A sweep (its events and all its jobs') or one job.
    id: String,
    /// Keep printing new events until the sweep or job is finished.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `lorasweep logs`.
#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// The job.
    job: String,
    /// Only this attempt's records.
    #[arg(long)]
    attempt: Option<u32>,
    /// Keep printing new records until the job is finished.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// Lists a sweep's jobs in grid order.
pub(crate) async fn jobs(url: &str, args: JobsArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let state = args.state.map_or(pb::JobState::Unspecified as i32, JobState::to_wire);
    let jobs = client::all_jobs(&mut client, &args.sweep, state).await?;
    if args.json {
        let value: Vec<_> = jobs.iter().map(output::job_json).collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let names = worker_names(&mut client).await;
    print!("{}", jobs_table(&jobs, &names));
    Ok(())
}

/// The `jobs` table; `names` maps worker ids to names (ids are shown when absent).
pub(crate) fn jobs_table(jobs: &[pb::Job], names: &std::collections::HashMap<String, String>) -> String {
    let mut rows = vec![
        ["JOB", "INIT", "LR", "SEED", "STATE", "ATTEMPT", "STEP", "TRAIN", "EVAL", "WORKER", "ERROR"]
            .map(String::from)
            .to_vec(),
    ];
    for j in jobs {
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
            output::short(&j.error, ERROR_COLUMN),
        ]);
    }
    output::table(&rows)
}

/// Worker names by id: the tables show names; ids are unique but unreadable. Empty if the
/// listing fails (the ids are shown then).
async fn worker_names(client: &mut client::Client) -> std::collections::HashMap<String, String> {
    client::all_workers(client).await.map(|ws| ws.into_iter().map(|w| (w.id, w.name)).collect()).unwrap_or_default()
}

/// Shows one job whole: spec, attempts, checkpoints, final eval loss.
pub(crate) async fn job(url: &str, args: JobArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let resp = client
        .get_job(pb::GetJobRequest { job_id: args.job.clone() })
        .await
        .map_err(|s| client::call_error(&format!("job {}", args.job), s))?
        .into_inner();
    let job = resp.job.clone().with_context(|| format!("job {}: the coordinator sent no job", args.job))?;
    let mut artifacts = pb::artifacts_client::ArtifactsClient::new(client::authed(url).await?);
    let stored = artifacts
        .list_artifacts(pb::ListArtifactsRequest { job_id: args.job.clone(), ..Default::default() })
        .await
        .map_err(|s| client::call_error(&format!("artifacts of job {}", args.job), s))?
        .into_inner()
        .artifacts;
    let spec: serde_json::Value = serde_json::from_str(&resp.spec_json)
        .with_context(|| format!("job {}: the coordinator sent a spec that is not JSON", args.job))?;
    if args.json {
        let value = serde_json::json!({
            "job": output::job_json(&job),
            "sweep_name": resp.sweep_name,
            "spec": spec,
            "attempts": resp.attempts.iter().map(output::attempt_json).collect::<Vec<_>>(),
            "artifacts": stored.iter().map(output::artifact_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("job       {}", job.id);
    println!("sweep     {} ({})", job.sweep_id, resp.sweep_name);
    println!("cell      init={} lr={:e} seed={}", job.init, job.lr, job.seed);
    println!("state     {}", output::state_name(job.state));
    println!(
        "progress  step {}{}, last train loss {}, final eval loss {}",
        job.step,
        if job.total_steps > 0 { format!("/{}", job.total_steps) } else { String::new() },
        output::loss(job.last_train_loss),
        output::loss(job.final_eval_loss)
    );
    if !job.error.is_empty() {
        println!("error     [{}] {}", if job.error_kind.is_empty() { "-" } else { &job.error_kind }, job.error);
    }
    let model = spec.pointer("/model/path").and_then(|v| v.as_str()).unwrap_or("?");
    let data = spec.pointer("/data/path").and_then(|v| v.as_str()).unwrap_or("?");
    println!("model     {model}");
    println!("data      {data}");
    println!("\nattempts");
    let mut rows = vec![
        ["#", "WORKER", "DEVICE", "LEASED", "ENDED", "OUTCOME", "RESUMED", "LOGS", "ERROR"].map(String::from).to_vec(),
    ];
    for a in &resp.attempts {
        rows.push(vec![
            a.attempt.to_string(),
            if a.worker_name.is_empty() { a.worker_id.clone() } else { a.worker_name.clone() },
            output::device(&a.device, &a.gpu_name, &a.visible_devices),
            output::time_ms(a.leased_at_ms),
            if a.ended_at_ms == 0 { "-".into() } else { output::time_ms(a.ended_at_ms) },
            if a.error_kind.is_empty() { a.outcome.clone() } else { format!("{} ({})", a.outcome, a.error_kind) },
            a.resumed_from_step.map_or("-".into(), |s| format!("step {s}")),
            if a.logs_dropped > 0 {
                format!("{} (+{} dropped)", a.log_records, a.logs_dropped)
            } else {
                a.log_records.to_string()
            },
            a.error.clone(),
        ]);
    }
    print!("{}", output::table(&rows));
    if resp.attempts.is_empty() {
        println!("(never leased)");
    }
    println!("\nartifacts");
    if stored.is_empty() {
        println!("(none)");
    } else {
        let mut rows = vec![["KIND", "STEP", "ATTEMPT", "BYTES", "SHA256"].map(String::from).to_vec()];
        for a in &stored {
            rows.push(vec![
                output::artifact_kind(a.kind).to_string(),
                a.step.to_string(),
                a.attempt.to_string(),
                a.size.to_string(),
                a.sha256.chars().take(16).collect(),
            ]);
        }
        print!("{}", output::table(&rows));
    }
    Ok(())
}

/// Prints a job's loss curves.
pub(crate) async fn curve(url: &str, args: CurveArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let curve = client::curve(&mut client, &args.job).await?;
    if args.json {
        println!("{}", output::curve_json_text(&curve));
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
    let workers = client::all_workers(&mut client).await?;
    if args.json {
        let value: Vec<_> = workers.iter().map(output::worker_json).collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut rows = vec![
        ["WORKER", "NAME", "DEVICE", "GPU", "VISIBLE GPUS", "THREADS", "TRAINER", "ALIVE", "JOB"]
            .map(String::from)
            .to_vec(),
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

/// Prints a sweep's or a job's events, oldest first; with `--follow`, new ones as they happen.
pub(crate) async fn events(url: &str, args: EventsArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let what = || format!("events of {}", args.id);
    let req = pb::ListEventsRequest { id: args.id.clone(), page_size: 0, page_token: String::new() };
    let print = |events: &[pb::Event]| -> anyhow::Result<()> {
        for e in events {
            if args.json {
                println!("{}", serde_json::to_string(&output::event_json(e))?);
            } else {
                println!("{}", output::event_line(e));
            }
        }
        Ok(())
    };
    if args.follow {
        let mut stream = client.follow_events(req).await.map_err(|s| client::call_error(&what(), s))?.into_inner();
        while let Some(page) = stream.message().await.map_err(|s| client::call_error(&what(), s))? {
            print(&page.events)?;
        }
        return Ok(());
    }
    let mut req = req;
    loop {
        let page = client.list_events(req.clone()).await.map_err(|s| client::call_error(&what(), s))?.into_inner();
        print(&page.events)?;
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        req.page_token = page.next_page_token;
    }
}

/// Prints a job's shipped log records; with `--follow`, new ones as they arrive.
pub(crate) async fn logs(url: &str, args: LogsArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let what = || format!("logs of job {}", args.job);
    let req = pb::ListLogsRequest {
        job_id: args.job.clone(),
        attempt: args.attempt.unwrap_or(0),
        page_size: 0,
        page_token: String::new(),
    };
    let print = |records: &[pb::LogRecord]| -> anyhow::Result<()> {
        for r in records {
            if args.json {
                println!("{}", serde_json::to_string(&output::log_json(r))?);
            } else {
                println!("{}", output::log_line(r));
            }
        }
        Ok(())
    };
    if args.follow {
        let mut stream = client.follow_logs(req).await.map_err(|s| client::call_error(&what(), s))?.into_inner();
        while let Some(page) = stream.message().await.map_err(|s| client::call_error(&what(), s))? {
            print(&page.records)?;
        }
        return Ok(());
    }
    let mut req = req;
    let mut any = false;
    loop {
        let page = client.list_logs(req.clone()).await.map_err(|s| client::call_error(&what(), s))?.into_inner();
        any |= !page.records.is_empty();
        print(&page.records)?;
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    if !any && !args.json {
        eprintln!("no log records stored for job {} (workers ship INFO and above while they run it)", args.job);
    }
    Ok(())
}
