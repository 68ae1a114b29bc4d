//! A new user's broken sweep, end to end through the CLI: a model path that does not exist on
//! the worker. Every job fails within milliseconds with the same non-retryable error; fail-fast
//! pauses the sweep after three, and the cause is visible in `status`, `watch`, `jobs`, `job`,
//! `events` and `logs`. `resume` continues it.

use std::time::Duration;

use crate::helpers::{self, Proc, await_condition, cli, cli_ok, clients, spawn_coordinator};

fn broken_sweep() -> String {
    "name = \"typo\"\n[model]\npath = \"/nonexistent/qwen2.5-1.5b\"\n\
     [grid]\ninits = [\"standard\", \"reversed\"]\nlrs = [1e-4, 1e-3]\nseeds = [1, 2, 3]\n"
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_with_a_wrong_model_path_pauses_and_says_why_everywhere() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = spawn_coordinator(dir.path(), Duration::from_secs(5)).await?;
    let url = coordinator.url.clone();
    let (mut sweeps, _) = clients(&url).await?;
    let sweep = helpers::submit(&mut sweeps, &broken_sweep()).await?;
    let mut worker = Proc::start(
        &["--coordinator", &url, "worker", "--name", "gpu-node-7", "--trainer", "candle"],
        dir.path().join("worker.log"),
    )?;

    let status: serde_json::Value = await_condition("the sweep to pause", Duration::from_secs(60), || async {
        let v: serde_json::Value = serde_json::from_str(&cli_ok(&url, &["status", &sweep, "--json"]).await?)?;
        Ok((!v["paused"].as_str().unwrap_or("").is_empty()).then_some(v))
    })
    .await?;
    let reason = status["paused"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("3 jobs failed with a non-retryable error"), "{reason}");
    assert!(reason.contains("/nonexistent/qwen2.5-1.5b") && reason.contains("lorasweep resume"), "{reason}");
    assert_eq!((status["counts"]["failed"].as_u64(), status["counts"]["queued"].as_u64()), (Some(3), Some(9)));
    assert_eq!(status["fail_fast"], 3, "on by default");

    let text = cli_ok(&url, &["status", &sweep]).await?;
    assert!(text.contains("PAUSED") && text.contains("is paused: 3 jobs failed"), "{text}");
    let watch = cli(&url, &["watch", &sweep]).await?;
    let watch_err = String::from_utf8_lossy(&watch.stderr);
    assert!(!watch.status.success() && watch_err.contains("is paused"), "{watch_err}");

    // The jobs table names the error; `job` shows the attempt, its worker and the whole error.
    let table = cli_ok(&url, &["jobs", &sweep]).await?;
    assert!(table.lines().next().is_some_and(|h| h.trim_end().ends_with("ERROR")), "{table}");
    let failed_row = table.lines().find(|l| l.contains("failed")).expect("a failed row");
    assert!(failed_row.contains("/nonexistent/qwen2.5-1.5b"), "{failed_row}");
    let jobs: serde_json::Value = serde_json::from_str(&cli_ok(&url, &["jobs", &sweep, "--json"]).await?)?;
    let failed = jobs.as_array().expect("array").iter().find(|j| j["state"] == "failed").expect("a failed job");
    let job_id = failed["id"].as_str().expect("id").to_string();
    assert_eq!(failed["error_kind"], "fatal");
    let detail = cli_ok(&url, &["job", &job_id]).await?;
    assert!(detail.contains("gpu-node-7") && detail.contains("failed (fatal)"), "{detail}");
    assert!(detail.contains("/nonexistent/qwen2.5-1.5b") && detail.contains("model     /nonexistent"), "{detail}");

    // Events: three leases and failures, then the pause.
    let events = cli_ok(&url, &["events", &sweep]).await?;
    let kinds: Vec<&str> = events.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(kinds.first(), Some(&"submitted"), "{events}");
    assert_eq!(kinds.iter().filter(|k| **k == "failed").count(), 3, "{events}");
    assert_eq!(kinds.last(), Some(&"paused"), "{events}");
    assert!(events.contains("on gpu-node-7"), "{events}");

    // Logs: what the worker logged about it, shipped from its process.
    let logs = await_condition("the worker's records of the failure", Duration::from_secs(20), || async {
        let out = cli_ok(&url, &["logs", &job_id]).await?;
        Ok(out.contains("job failed").then_some(out))
    })
    .await?;
    assert!(
        logs.contains("WARN") && logs.contains("/nonexistent/qwen2.5-1.5b") && logs.contains("retryable=false"),
        "{logs}"
    );
    assert!(logs.contains("leased job"), "{logs}");
    // `--follow` of a finished job prints what is stored and ends (the stream closes with the job).
    let followed =
        tokio::time::timeout(Duration::from_secs(20), cli_ok(&url, &["events", &job_id, "--follow", "--json"]))
            .await??;
    let kinds: Vec<String> = followed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["kind"].as_str().unwrap_or("").to_string()))
        .collect::<Result<_, _>>()?;
    assert_eq!(kinds, vec!["leased", "failed"], "{followed}");
    let followed =
        tokio::time::timeout(Duration::from_secs(20), cli_ok(&url, &["logs", &job_id, "--follow"])).await??;
    assert!(followed.contains("job failed"), "{followed}");

    // Bad input changes nothing.
    let not_paused = cli(&url, &["resume", "no-such-sweep"]).await?;
    assert!(!not_paused.status.success() && String::from_utf8_lossy(&not_paused.stderr).contains("no sweep"));
    let ghost = cli(&url, &["events", "no-such-id"]).await?;
    assert!(String::from_utf8_lossy(&ghost.stderr).contains("no sweep or job"));
    let ghost = cli(&url, &["job", "no-such-job"]).await?;
    assert!(String::from_utf8_lossy(&ghost.stderr).contains("no job"));

    // After "fixing the cause" (here: not fixed), `resume` requeues the failed jobs and leasing
    // continues; the same error pauses the sweep again after three more failures.
    let out = cli_ok(&url, &["resume", &sweep]).await?;
    assert!(out.contains("requeued 3 failed jobs"), "{out}");
    await_condition("the second pause", Duration::from_secs(60), || async {
        let v: serde_json::Value = serde_json::from_str(&cli_ok(&url, &["status", &sweep, "--json"]).await?)?;
        Ok((!v["paused"].as_str().unwrap_or("").is_empty()).then_some(()))
    })
    .await?;
    let again = cli(&url, &["resume", &sweep]).await?;
    assert!(again.status.success());
    worker.kill9().await?;
    coordinator.stop().await?;
    Ok(())
}
