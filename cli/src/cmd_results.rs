//! `lorasweep results SWEEP` and `lorasweep plot SWEEP`: the study's tables and figures from a
//! sweep's stored jobs and curves. Both work on a running sweep (incomplete cells are marked).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use lorasweep_common::{JobState, LoraInit};
use lorasweep_proto::pb;
use lorasweep_report::{
    JobResult, Results,
    plot::{self, Curve},
};

use crate::{
    client::{self, Client},
    results_render::{self, Format},
};

/// Arguments of `lorasweep results`.
#[derive(Debug, clap::Args)]
pub(crate) struct ResultsArgs {
    /// The sweep.
    pub(crate) sweep: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

/// Arguments of `lorasweep plot`.
#[derive(Debug, clap::Args)]
pub(crate) struct PlotArgs {
    /// The sweep.
    pub(crate) sweep: String,
    /// Directory to write the PNG and SVG files into (created if missing).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The lr whose eval curves are drawn (default: Standard's best lr).
    #[arg(long)]
    pub(crate) lr: Option<f64>,
}

/// A sweep's name and its jobs' results, fetched over gRPC.
pub(crate) struct Fetched {
    pub(crate) name: String,
    pub(crate) jobs: Vec<(pb::Job, JobResult)>,
}

/// Fetches a sweep's jobs.
///
/// # Errors
/// On a failed call, or a job whose init or state the coordinator should never have stored.
pub(crate) async fn fetch(client: &mut Client, sweep: &str) -> anyhow::Result<Fetched> {
    let name = client
        .get_sweep(pb::GetSweepRequest { sweep_id: sweep.to_string() })
        .await
        .map_err(|s| client::call_error(&format!("reading sweep {sweep}"), s))?
        .into_inner()
        .sweep
        .map(|s| s.name)
        .unwrap_or_default();
    let jobs = client::all_jobs(client, sweep, 0).await?;
    let jobs = jobs
        .into_iter()
        .map(|j| {
            let init: LoraInit = j.init.parse()?;
            let state =
                JobState::from_wire(j.state, "job.state")?.ok_or_else(|| anyhow!("job {} has no state", j.id))?;
            let r = JobResult { init, lr: j.lr, seed: j.seed, state, final_eval_loss: j.final_eval_loss };
            Ok((j, r))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Fetched { name, jobs })
}

/// Computes the tables of a fetched sweep.
pub(crate) fn tables(fetched: &Fetched) -> Results {
    let results: Vec<JobResult> = fetched.jobs.iter().map(|(_, r)| r.clone()).collect();
    Results::compute(&results)
}

/// `lorasweep results`.
pub(crate) async fn results(url: &str, args: ResultsArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let fetched = fetch(&mut client, &args.sweep).await?;
    if fetched.jobs.is_empty() {
        anyhow::bail!("sweep {} has no jobs", args.sweep);
    }
    print!("{}", results_render::render(&tables(&fetched), args.format, &fetched.name));
    Ok(())
}

/// `lorasweep plot`.
pub(crate) async fn plot(url: &str, args: PlotArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let fetched = fetch(&mut client, &args.sweep).await?;
    for path in write_plots(&mut client, &fetched, args.lr, &args.out).await? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes every figure of a fetched sweep into `out`; the curves figure is drawn at `lr`, or at
/// Standard's best lr (else the first init's, else the lowest lr).
pub(crate) async fn write_plots(
    client: &mut Client,
    fetched: &Fetched,
    lr: Option<f64>,
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let results = tables(fetched);
    let lr = lr
        .or_else(|| results.best_lr.iter().find_map(|(_, lr)| *lr))
        .or_else(|| results.lrs.first().copied())
        .ok_or_else(|| anyhow!("sweep has no jobs to plot"))?;
    let mut curves: Vec<(LoraInit, Vec<Curve>)> = Vec::new();
    for &init in &results.inits {
        let mut seeds = Vec::new();
        for (job, r) in &fetched.jobs {
            if r.init != init || (r.lr - lr).abs() > 1e-12 * lr.abs() {
                continue;
            }
            let c = client::curve(client, &job.id).await?;
            seeds.push(c.eval_steps.into_iter().zip(c.eval_losses).collect());
        }
        if !seeds.is_empty() {
            curves.push((init, seeds));
        }
    }
    plot::write_all(&results, &curves, lr, &fetched.name, out)
        .with_context(|| format!("plotting into {}", out.display()))
}
