//! `lorasweep bench job-switch` and `bench checkpoint` as a user runs them: the binary at the
//! tiny shape with `--json`, the printed report parsed and checked.

use std::process::Command;

use serde_json::Value;

use crate::helpers::BIN;

fn bench_json(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(BIN).arg("bench").args(args).arg("--json").output()?;
    anyhow::ensure!(out.status.success(), "{args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Every repetition in its own child process: a reload pays the tokenizer, weights and data,
/// the next job reuses all three and only initialises adapters.
#[test]
fn job_switch_reloads_in_a_new_process_and_reuses_when_resident() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().to_str().expect("utf-8 path");
    let r =
        bench_json(&["job-switch", "--shape=tiny", "--rows=60", "--max-length=64", "--reps=3", "--work-dir", work])?;
    assert_eq!(r["fresh_process"], true);
    assert_eq!((r["layers"].as_u64(), r["vocab"].as_u64()), (Some(2), Some(512)));
    let (cold, resident) = (r["cold"].as_array().expect("cold"), r["resident"].as_array().expect("resident"));
    assert_eq!((cold.len(), resident.len()), (3, 3));
    for c in cold {
        assert_eq!(
            (&c["timing"]["base_reused"], &c["timing"]["data_reused"]),
            (&Value::Bool(false), &Value::Bool(false))
        );
        assert!(c["timing"]["weights_s"].as_f64() > Some(0.0), "{c}");
    }
    for h in resident {
        assert_eq!(
            (&h["timing"]["base_reused"], &h["timing"]["data_reused"]),
            (&Value::Bool(true), &Value::Bool(true))
        );
        assert_eq!(h["timing"]["weights_s"].as_f64(), Some(0.0));
    }
    let (c, h) = (r["cold_median_s"].as_f64().expect("cold"), r["resident_median_s"].as_f64().expect("resident"));
    assert!(h < c, "resident {h} s, reload {c} s");
    assert!(r["weights_bytes"].as_u64() > Some(4 * 512 * 64));
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0, "the generated model and data are removed");
    Ok(())
}

/// The checkpoint comes back byte-identical (same SHA-256) through the real upload and download
/// paths, and its size is that of adapters plus two AdamW moments in f32 plus the header.
#[test]
fn checkpoint_bench_round_trips_the_bytes() -> anyhow::Result<()> {
    let r = bench_json(&["checkpoint", "--shape=tiny", "--rounds=3"])?;
    let params = r["lora_params"].as_u64().expect("params");
    assert_eq!(params, 2 * 8 * (2 * (64 + 64) + 2 * (64 + 32)));
    let bytes = r["bytes"].as_u64().expect("bytes");
    assert!(bytes > 12 * params && bytes < 12 * params + 64 * 1024, "{bytes}");
    assert_eq!(r["uploaded_sha256"], r["downloaded_sha256"]);
    assert_eq!(r["listed_steps"], serde_json::json!([3, 2, 1]));
    let upload_s = r["upload_s"].as_f64().expect("upload_s");
    assert!((r["upload_mb_s"].as_f64().expect("rate") - bytes as f64 / 1e6 / upload_s).abs() < 1e-6);
    Ok(())
}

/// `--threads` reaches candle: the bench reports the thread count its matmuls ran on, and the
/// step trains (finite, falling loss) at one thread and at two.
#[test]
fn bench_train_runs_on_the_threads_asked_for() -> anyhow::Result<()> {
    for threads in ["1", "2"] {
        let out = Command::new(BIN)
            .args(["--threads", threads, "bench", "train", "--shape=tiny", "--layers=1", "--seq=32", "--steps=3"])
            .args(["--dtype=f32", "--json"])
            .env_remove("RAYON_NUM_THREADS")
            .output()?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(r["threads"].as_u64(), threads.parse().ok(), "{r}");
        let losses: Vec<f64> = r["losses"].as_array().expect("losses").iter().filter_map(Value::as_f64).collect();
        assert_eq!(losses.len(), 4);
        assert!(losses.iter().all(|l| l.is_finite()) && losses[3] < losses[0], "{losses:?}");
    }
    Ok(())
}
