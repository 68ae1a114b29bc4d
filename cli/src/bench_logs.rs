//! `lorasweep bench log-shipping`: what shipping a job's log records costs its training.
//!
//! It runs a real tiny training job (the demo's generated model and data, the demo's settings)
//! inside an attempt's span with the log layer installed and a [`Shipper`] to a coordinator
//! started in process, so the records a job really logs are really shipped; then it times the
//! layer's cost per record on both of its paths (accepted: formatted and queued; over the rate
//! limit: counted and dropped). The cost to training is records per step × cost per record ÷
//! the step's time.

use std::time::{Duration, Instant};

use anyhow::Context;
use lorasweep_common::{LossPoint, Series, SweepSpec};
use lorasweep_proto::pb;
use lorasweep_train::{
    Progress,
    tiny::{self, TinyModelConfig},
};
use lorasweep_worker::logship::Shipper;

use crate::{
    bench_coordinator::{InProcess, submit_and_lease},
    client,
};

/// Arguments of `lorasweep bench log-shipping`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchLogsArgs {
    /// Optimizer steps of the tiny training job.
    #[arg(long, default_value_t = 60)]
    steps: u64,
    /// Records logged in the per-record timing (most go over the rate limit).
    #[arg(long, default_value_t = 20_000)]
    records: usize,
}

/// Counts optimizer steps and times them.
struct Steps {
    first: Option<Instant>,
    last: Option<Instant>,
    steps: u64,
}

impl Progress for Steps {
    fn total_steps(&mut self, _: u64) {}
    fn point(&mut self, p: LossPoint) {
        if p.series == Series::Train {
            let now = Instant::now();
            self.first.get_or_insert(now);
            self.last = Some(now);
            self.steps += 1;
        }
    }
    fn cancelled(&self) -> bool {
        false
    }
}

/// Runs the benchmark and prints its figures.
pub(crate) async fn run(args: BenchLogsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.steps >= 2 && args.records >= 2000, "--steps must be ≥ 2 and --records ≥ 2000");
    let scratch = tempfile::tempdir().context("a scratch directory")?;
    let (model, data) = (scratch.path().join("model"), scratch.path().join("data"));
    tiny::write_model(&model, &TinyModelConfig::default())?;
    tiny::write_data(&data, 7, 2000, 64)?;
    let toml = format!(
        "[model]\npath = {:?}\ndtype = \"f32\"\n[data]\npath = {:?}\nmax_length = 128\n[lora]\nr = 8\nalpha = 16.0\n\
         [train]\nmicro_batch = 4\ngrad_accum = 2\neval_every = 8\nmax_steps = {}\n",
        model.display().to_string(),
        data.display().to_string(),
        args.steps
    );
    let spec = SweepSpec::parse(&toml, "bench.toml")?.jobs().remove(0);

    // A real attempt to ship to: an in-process coordinator, a registered worker, a lease.
    let (coordinator, _) = InProcess::start(|_| {}).await?;
    let url = coordinator.url.clone();
    let mut sweeps = client::connect(&url).await?;
    let (workers, worker_id, lease) = submit_and_lease(&url, &toml, "bench-log-shipping").await?;
    let shipper = Shipper::start(&worker_id, workers.clone());
    // The daemon's span (job::run_job): what the layer keys records by.
    let span = tracing::info_span!("run_job", job_id = %lease.job_id, attempt = lease.attempt, worker_id = %worker_id);

    let job_span = span.clone();
    let steps = tokio::task::spawn_blocking(move || -> anyhow::Result<Steps> {
        let _in_job = job_span.enter();
        let mut steps = Steps { first: None, last: None, steps: 0 };
        tracing::info!(init = %spec.init, lr = spec.lr, seed = spec.seed, "leased job");
        lorasweep_train::train_local(&spec, &Default::default(), &mut steps)?;
        tracing::info!("job finished");
        Ok(steps)
    })
    .await??;
    let step_s = match (steps.first, steps.last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64() / (steps.steps - 1) as f64,
        _ => anyhow::bail!("the job reported no steps"),
    };
    // What the job logged, as shipped and stored (the shipper flushes twice a second).
    let count = |mut s: client::Client, job: String| async move {
        let page = s
            .list_logs(pb::ListLogsRequest { job_id: job, attempt: 0, page_size: 5000, page_token: String::new() })
            .await?
            .into_inner();
        anyhow::Ok(page.records.len())
    };
    let mut job_records = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        job_records = count(sweeps.clone(), lease.job_id.clone()).await?;
        if job_records > 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            job_records = count(sweeps.clone(), lease.job_id.clone()).await?;
            break;
        }
    }
    anyhow::ensure!(job_records > 0, "no record of the job was shipped");

    // The layer's cost per record: the burst it accepts, then records over the rate limit.
    let timing_span = span.clone();
    let records = args.records;
    let (accepted_s, dropped_s, accepted_n) = tokio::task::spawn_blocking(move || {
        let _in_job = timing_span.enter();
        let accepted_n = 800usize;
        let t = Instant::now();
        for i in 0..accepted_n {
            tracing::info!(step = i, loss = 2.5, "a record like the trainer's");
        }
        let accepted = t.elapsed().as_secs_f64() / accepted_n as f64;
        let t = Instant::now();
        for i in accepted_n..records {
            tracing::info!(step = i, loss = 2.5, "a record like the trainer's");
        }
        (accepted, t.elapsed().as_secs_f64() / (records - accepted_n) as f64, accepted_n)
    })
    .await?;
    shipper.finish(Duration::from_secs(5)).await;
    let stored = count(sweeps.clone(), lease.job_id.clone()).await?;
    let detail = sweeps.get_job(pb::GetJobRequest { job_id: lease.job_id.clone() }).await?.into_inner();
    let dropped = detail.attempts.first().map_or(0, |a| a.logs_dropped);
    coordinator.stop().await?;

    let per_step = job_records as f64 / steps.steps as f64;
    let overhead = per_step * accepted_s / step_s;
    println!("tiny training step (demo model and settings)   {:>10.2} ms   ({} steps)", step_s * 1e3, steps.steps);
    println!("job-scoped records the job shipped             {job_records:>10}      ({per_step:.3} per step)");
    println!("layer cost per record, accepted (format+queue) {:>10.2} µs", accepted_s * 1e6);
    println!("layer cost per record, over the rate limit     {:>10.2} µs", dropped_s * 1e6);
    println!(
        "timing records stored / counted as dropped     {:>10} / {dropped}   (of {records} logged; {accepted_n} timed as accepted)",
        stored - job_records
    );
    println!(
        "cost of shipping to training                   {:>10.4} %   target < 1%  {}",
        overhead * 100.0,
        if overhead < 0.01 { "OK" } else { "MISSED" }
    );
    println!("worst case (every step logs a record)          {:>10.4} %", accepted_s.max(dropped_s) / step_s * 100.0);
    Ok(())
}
