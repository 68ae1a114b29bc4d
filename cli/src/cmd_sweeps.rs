//! Sweep-level client commands: `submit`, `status`, `cancel`, `retry`, `resume`.

use std::path::PathBuf;

use anyhow::Context;
use lorasweep_common::SweepSpec;
use lorasweep_proto::pb;

use crate::{client, output};

/// Arguments of `lorasweep submit`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// The sweep file (TOML). An empty file is the study's 140-job grid.
    file: PathBuf,
}

/// Arguments of `lorasweep status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The sweep; without it, every sweep is listed.
    sweep: Option<String>,
    /// Print JSON (`{"sweep","counts","total"}`, or a list of them) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `lorasweep cancel` and `lorasweep retry`.
#[derive(Debug, clap::Args)]
pub(crate) struct SweepArg {
    /// The sweep.
    sweep: String,
}

/// Validates the file locally (so a typo is reported without a round trip, naming the file and
/// key), then submits it and prints the new sweep's id.
pub(crate) async fn submit(url: &str, args: SubmitArgs) -> anyhow::Result<()> {
    let source = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read sweep file {source}"))?;
    let spec = SweepSpec::parse(&text, &source)?;
    let mut client = client::connect(url).await?;
    let resp = client
        .submit_sweep(pb::SubmitSweepRequest { sweep_toml: text, source: source.clone() })
        .await
        .map_err(|s| client::call_error(&format!("submitting {source}"), s))?
        .into_inner();
    eprintln!("submitted sweep {:?} from {source}: {} jobs", spec.name, resp.jobs);
    println!("{}", resp.sweep_id);
    Ok(())
}

/// Prints one sweep's counts, or lists every sweep.
pub(crate) async fn status(url: &str, args: StatusArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let sweeps = match &args.sweep {
        Some(id) => {
            let resp = client
                .get_sweep(pb::GetSweepRequest { sweep_id: id.clone() })
                .await
                .map_err(|s| client::call_error(&format!("sweep {id}"), s))?
                .into_inner();
            vec![resp.sweep.with_context(|| format!("sweep {id}: the coordinator sent no sweep"))?]
        }
        None => client::all_sweeps(&mut client).await?,
    };
    if args.json {
        let value = match (&args.sweep, sweeps.as_slice()) {
            (Some(_), [one]) => output::sweep_json(one),
            _ => serde_json::Value::Array(sweeps.iter().map(output::sweep_json).collect()),
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if sweeps.is_empty() {
        println!("no sweeps");
        return Ok(());
    }
    let mut rows = vec![["SWEEP", "NAME", "TOTAL", "DONE", "STATES"].map(String::from).to_vec()];
    for s in &sweeps {
        let c = output::counts(s);
        let done = c["succeeded"] + c["diverged"] + c["failed"] + c["cancelled"];
        let mut states = output::counts_line(s);
        if !s.paused.is_empty() {
            states.push_str("  PAUSED");
        }
        rows.push(vec![s.id.clone(), s.name.clone(), s.total.to_string(), done.to_string(), states]);
    }
    print!("{}", output::table(&rows));
    for s in sweeps.iter().filter(|s| !s.paused.is_empty()) {
        println!("sweep {} ({}) is paused: {}", s.id, s.name, s.paused);
    }
    for s in sweeps.iter().filter(|s| !s.unschedulable.is_empty()) {
        println!("sweep {} ({}) cannot run: {}", s.id, s.name, s.unschedulable);
    }
    Ok(())
}

/// Cancels every queued or running job of a sweep.
pub(crate) async fn cancel(url: &str, args: SweepArg) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let resp = client
        .cancel_sweep(pb::CancelSweepRequest { sweep_id: args.sweep.clone() })
        .await
        .map_err(|s| client::call_error(&format!("cancelling sweep {}", args.sweep), s))?
        .into_inner();
    println!("cancelled {} jobs of sweep {}", resp.cancelled, args.sweep);
    Ok(())
}

/// Requeues every failed or cancelled job of a sweep.
pub(crate) async fn retry(url: &str, args: SweepArg) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let resp = client
        .retry_sweep(pb::RetrySweepRequest { sweep_id: args.sweep.clone() })
        .await
        .map_err(|s| client::call_error(&format!("retrying sweep {}", args.sweep), s))?
        .into_inner();
    println!("requeued {} jobs of sweep {}", resp.requeued, args.sweep);
    Ok(())
}

/// Lifts a fail-fast pause: requeues the jobs that failed with a non-retryable error.
pub(crate) async fn resume(url: &str, args: SweepArg) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let resp = client
        .resume_sweep(pb::ResumeSweepRequest { sweep_id: args.sweep.clone() })
        .await
        .map_err(|s| client::call_error(&format!("resuming sweep {}", args.sweep), s))?
        .into_inner();
    println!("resumed sweep {}: requeued {} failed jobs", args.sweep, resp.requeued);
    Ok(())
}
