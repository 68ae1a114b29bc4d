//! The CLI's client commands against a live coordinator: the documented JSON/CSV shapes, a bad
//! sweep file refused with a message naming the file and key (and nothing stored), and a clear
//! error when no coordinator answers.

use std::time::Duration;

use lorasweep_proto::pb;
use serde_json::Value;

use crate::helpers::{await_sweep_done, cli, cli_ok, clients, spawn_coordinator, spawn_worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_print_the_documented_shapes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = spawn_coordinator(&dir.path().join("data"), Duration::from_secs(5)).await?;
    let url = coordinator.url.clone();
    let file = dir.path().join("small.toml");
    std::fs::write(
        &file,
        "name = \"small\"\n[train]\nmax_steps = 12\n[grid]\ninits = [\"standard\", \"ortho-eye\"]\nlrs = [2e-4]\nseeds = [42, 43]\n",
    )?;
    let sweep = cli_ok(&url, &["submit", file.to_str().expect("utf-8 path")]).await?.trim().to_string();
    assert!(!sweep.is_empty());
    let worker = spawn_worker(&url, "solo", 1)?;
    let (sweeps, _) = clients(&url).await?;
    await_sweep_done(&sweeps, &sweep, Duration::from_secs(30)).await?;

    let status: Value = serde_json::from_str(&cli_ok(&url, &["status", &sweep, "--json"]).await?)?;
    assert_eq!(status["sweep"], sweep.as_str());
    assert_eq!(status["total"], 4);
    assert_eq!(status["counts"]["succeeded"], 4);
    assert_eq!(status["counts"]["queued"], 0);

    let all: Value = serde_json::from_str(&cli_ok(&url, &["status", "--json"]).await?)?;
    assert_eq!(all.as_array().map(Vec::len), Some(1));
    assert_eq!(all[0]["sweep"], sweep.as_str());
    let table = cli_ok(&url, &["status"]).await?;
    assert!(table.contains(&sweep) && table.contains("small"), "{table}");

    let jobs: Value = serde_json::from_str(&cli_ok(&url, &["jobs", &sweep, "--json"]).await?)?;
    let jobs = jobs.as_array().expect("jobs --json is an array");
    assert_eq!(jobs.len(), 4);
    for key in ["id", "init", "lr", "seed", "state", "attempt", "worker", "step", "final_eval_loss"] {
        assert!(jobs.iter().all(|j| j.get(key).is_some()), "every job has {key:?}: {jobs:?}");
    }
    assert_eq!(jobs[0]["init"], "standard");
    assert_eq!(jobs[0]["state"], "succeeded");
    assert_eq!(jobs[0]["step"], 12);
    let filtered: Value =
        serde_json::from_str(&cli_ok(&url, &["jobs", &sweep, "--state", "running", "--json"]).await?)?;
    assert_eq!(filtered.as_array().map(Vec::len), Some(0));
    let bad_state = cli(&url, &["jobs", &sweep, "--state", "done"]).await?;
    assert!(!bad_state.status.success());
    assert!(String::from_utf8_lossy(&bad_state.stderr).contains("succeeded"), "lists the allowed states");

    let job = jobs[0]["id"].as_str().expect("id is a string");
    let curve: Value = serde_json::from_str(&cli_ok(&url, &["curve", job, "--json"]).await?)?;
    let train = curve["train"].as_array().expect("train is an array");
    assert_eq!(train.len(), 12);
    assert_eq!(train[0][0], 1);
    assert!(train[0][1].as_f64().is_some());
    assert_eq!(curve["eval"].as_array().map(Vec::len), Some(3), "evals at 0, 40 and 48");
    assert_eq!(curve["eval"][2][1].as_f64(), jobs[0]["final_eval_loss"].as_f64());
    let csv = cli_ok(&url, &["curve", job, "--csv"]).await?;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "series,step,loss");
    assert_eq!(lines.len(), 1 + 12 + 3);
    assert!(lines[1].starts_with("train,1,") && lines[13].starts_with("eval,0,"), "{csv}");

    let workers: Value = serde_json::from_str(&cli_ok(&url, &["workers", "--json"]).await?)?;
    assert_eq!(workers[0]["name"], "solo");
    assert_eq!(workers[0]["trainer"], "synthetic");

    // A finished sweep: watch prints its end and exits 0 (stdout is a pipe, so plain lines).
    let watched = cli_ok(&url, &["watch", &sweep]).await?;
    assert!(watched.contains("finished") && watched.contains("succeeded=4"), "{watched}");

    // Cancel and retry on a finished sweep touch nothing.
    assert!(cli_ok(&url, &["cancel", &sweep]).await?.contains("cancelled 0 jobs"));
    assert!(cli_ok(&url, &["retry", &sweep]).await?.contains("requeued 0 jobs"));

    worker.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sweep_file_is_refused_naming_file_and_key_and_nothing_is_stored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = spawn_coordinator(&dir.path().join("data"), Duration::from_secs(5)).await?;
    let url = coordinator.url.clone();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[grid]\ninits = [\"kaiming\"]\n")?;
    let out = cli(&url, &["submit", file.to_str().expect("utf-8 path")]).await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("typo.toml") && err.contains("inits") && err.contains("kaiming"), "{err}");

    let missing = cli(&url, &["submit", dir.path().join("nope.toml").to_str().expect("utf-8")]).await?;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml"));

    let (mut sweeps, _) = clients(&url).await?;
    let listed = sweeps.list_sweeps(pb::ListSweepsRequest::default()).await?.into_inner().sweeps;
    assert!(listed.is_empty(), "nothing stored: {listed:?}");
    coordinator.stop().await
}

#[tokio::test]
async fn unreachable_coordinator_error_names_the_url() -> anyhow::Result<()> {
    // Bind and drop: a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let out = cli(&url, &["status"]).await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url) && err.contains("cannot connect"), "{err}");
    Ok(())
}
