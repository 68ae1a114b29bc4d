//! `lorasweep demo` end to end on a small grid with the real candle trainer, then the tables it
//! printed checked against the curves the coordinator stored (read back by restarting a
//! coordinator on the demo's database).

use std::collections::HashMap;

use anyhow::Context as _;
use serde_json::Value;
use tokio::process::Command;

use crate::helpers::{BIN, cli_ok, start_coordinator_process};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_grid_tables_match_the_stored_curves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("demo");
    let run = Command::new(BIN)
        .args(["demo", "--out"])
        .arg(&out)
        .args(["--inits", "standard,reversed", "--lrs", "1e-3,5e-3", "--seeds", "2", "--train-rows", "48"])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .context("running lorasweep demo")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Final eval loss") && stdout.contains("Relative to Standard"), "{stdout}");
    for f in ["results.md", "results.json", "sweep.toml", "loss_vs_lr.png", "loss_vs_lr.svg", "loss_vs_lr_zoom.png"] {
        assert!(out.join(f).is_file(), "demo did not write {f}");
    }
    let md = std::fs::read_to_string(out.join("results.md"))?;
    assert!(md.contains("| lr   | Standard") && md.contains("| 1e-3 |"), "{md}");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json"))?)?;
    let cells = results["cells"].as_array().context("cells")?;
    assert_eq!(cells.len(), 4, "2 lrs × 2 inits");

    // Re-open the demo's database with a fresh coordinator and recompute every cell from the
    // stored curves: the final eval loss of a job is the last point of its eval curve.
    let (proc, url) =
        start_coordinator_process(&out.join("coordinator"), "127.0.0.1:0", "30s", dir.path().join("coord.log")).await?;
    let sweeps: Value = serde_json::from_str(&cli_ok(&url, &["status", "--json"]).await?)?;
    let sweep_id = sweeps
        .as_array()
        .and_then(|a| a.first())
        .and_then(|s| s["sweep"].as_str())
        .with_context(|| format!("no sweep in {sweeps}"))?
        .to_string();
    let jobs: Value = serde_json::from_str(&cli_ok(&url, &["jobs", &sweep_id, "--json"]).await?)?;
    let jobs = jobs.as_array().context("jobs array")?;
    assert_eq!(jobs.len(), 8);
    let mut by_cell: HashMap<(String, String), Vec<f64>> = HashMap::new();
    for job in jobs {
        let id = job["id"].as_str().context("job id")?;
        assert!(["succeeded", "diverged"].contains(&job["state"].as_str().unwrap_or("")), "{job}");
        let curve: Value = serde_json::from_str(&cli_ok(&url, &["curve", id, "--json"]).await?)?;
        let eval = curve["eval"].as_array().context("eval curve")?;
        assert!(eval.len() >= 2, "an eval before training and one at the end: {curve}");
        assert_eq!(eval[0][0].as_u64(), Some(0), "first eval at micro-batch 0");
        let last = eval.last().and_then(|p| p[1].as_f64()).context("last eval loss")?;
        assert_eq!(job["final_eval_loss"].as_f64(), Some(last), "final eval loss is the curve's last eval");
        let key = (job["init"].as_str().unwrap_or("").to_string(), format!("{:e}", job["lr"].as_f64().unwrap_or(0.0)));
        by_cell.entry(key).or_default().push(last);
    }
    for cell in cells {
        let key =
            (cell["init"].as_str().unwrap_or("").to_string(), format!("{:e}", cell["lr"].as_f64().unwrap_or(0.0)));
        let values = by_cell.get(&key).with_context(|| format!("no jobs for cell {key:?}"))?;
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert_eq!(cell["n"].as_u64(), Some(2), "{cell}");
        let got = cell["mean"].as_f64().context("mean")?;
        assert!((got - mean).abs() <= 1e-12 * mean.abs(), "cell {key:?}: table {got} vs curves {mean}");
    }
    drop(proc);
    Ok(())
}
