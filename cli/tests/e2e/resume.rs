//! A real (candle, tiny model) job whose worker is SIGKILLed after two checkpoints were uploaded,
//! and whose newest checkpoint is then corrupted on the coordinator's disk: the job is requeued,
//! a second worker finds the corrupt one by its SHA-256, warns, resumes from the older one, and
//! the stored curve, final eval loss and final adapter are bit-identical to a fault-free run.
//! Also `lorasweep adapter` and `lorasweep generate` on the result.

use std::path::PathBuf;
use std::time::Duration;

use lorasweep_common::{LossPoint, Series, SweepSpec};
use lorasweep_proto::pb::{self, artifacts_client::ArtifactsClient};
use lorasweep_train::Progress;

use crate::helpers::{self, Proc, await_condition, await_sweep_done, clients, fixture, spawn_coordinator};

/// One cell on the tiny fixture, long enough (10 epochs, 220 steps) to be killed mid-run.
fn sweep_toml() -> String {
    format!(
        "[model]\npath = {:?}\ndtype = \"f32\"\n[data]\npath = {:?}\nmax_length = 64\nshuffle = true\n\
         [lora]\nr = 4\nalpha = 8.0\ndropout = 0.1\ntargets = [\"q_proj\", \"v_proj\"]\n\
         [train]\nmicro_batch = 2\ngrad_accum = 2\nepochs = 10\neval_every = 16\ncheckpoint_every = 10\n\
         divergence_threshold = 100.0\n[grid]\ninits = [\"ortho-qr-const\"]\nlrs = [5e-3]\nseeds = [3]\n",
        fixture("tiny-qwen2"),
        fixture("tiny-data")
    )
}

/// Collects a local run's points and final adapter.
#[derive(Default)]
struct Local {
    points: Vec<LossPoint>,
    adapter: Vec<u8>,
}

impl Progress for Local {
    fn total_steps(&mut self, _: u64) {}
    fn point(&mut self, p: LossPoint) {
        self.points.push(p);
    }
    fn cancelled(&self) -> bool {
        false
    }
    fn final_adapter(&mut self, bytes: Vec<u8>) {
        self.adapter = bytes;
    }
}

fn worker(url: &str, name: &str, log: PathBuf) -> anyhow::Result<Proc> {
    Proc::start(&["--coordinator", url, "worker", "--name", name, "--trainer", "candle"], log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_candle_worker_resumes_from_its_checkpoint_bit_for_bit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = spawn_coordinator(dir.path(), Duration::from_secs(2)).await?;
    let (mut sweeps, _) = clients(&coordinator.url).await?;
    let toml = sweep_toml();
    let sweep = helpers::submit(&mut sweeps, &toml).await?;
    let job_id = helpers::jobs(&mut sweeps, &sweep).await?[0].id.clone();
    let channel = tonic::transport::Channel::from_shared(coordinator.url.clone())?.connect().await?;
    let artifacts = ArtifactsClient::new(channel);

    // The fault-free reference, in this process, while the first worker runs.
    let spec = SweepSpec::parse(&toml, "t.toml")?.jobs().remove(0);
    let reference = tokio::task::spawn_blocking(move || -> anyhow::Result<Local> {
        let mut local = Local::default();
        lorasweep_train::train_local(&spec, &Default::default(), &mut local)?;
        Ok(local)
    });

    let mut first = worker(&coordinator.url, "doomed", dir.path().join("doomed.log"))?;
    let list = |kind: pb::ArtifactKind| {
        let (mut a, job_id) = (artifacts.clone(), job_id.clone());
        async move {
            let req = pb::ListArtifactsRequest { job_id, kind: kind as i32 };
            anyhow::Ok(a.list_artifacts(req).await?.into_inner().artifacts)
        }
    };
    // Two checkpoints stored, then the kill.
    let killed_at = await_condition("two checkpoint uploads", Duration::from_secs(60), || async {
        let steps: Vec<u64> = list(pb::ArtifactKind::Checkpoint).await?.iter().map(|a| a.step).collect();
        Ok((steps.len() >= 2).then_some(steps))
    })
    .await?;
    first.kill9().await?;
    let log1 = first.log_text();
    assert!(!log1.contains("resuming from checkpoint"), "{log1}");
    // Corrupt the newest checkpoint on the coordinator's disk: the next attempt must notice (sha256),
    // warn, and resume from an older one.
    let stored_then = list(pb::ArtifactKind::Checkpoint).await?;
    let (newest, older) = (stored_then[0].step, stored_then[1].step);
    let job_dir = dir.path().join("artifacts").join(&job_id);
    let prefix = format!("checkpoint-{newest:012}-");
    let file = std::fs::read_dir(&job_dir)?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .expect("the newest checkpoint's file");
    let mut bytes = std::fs::read(&file)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, bytes)?;
    let killed_at = killed_at[0];

    let mut second = worker(&coordinator.url, "rescuer", dir.path().join("rescuer.log"))?;
    let jobs = await_sweep_done(&sweeps, &sweep, Duration::from_secs(120)).await?;
    let log2 = second.log_text();
    second.kill9().await?;
    let job = &jobs[0];
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}\n{log2}");
    assert_eq!(job.attempt, 2, "the job was re-leased once");
    assert!(log2.contains("resuming from checkpoint"), "{log2}");
    assert!(log2.contains(&format!("checkpoint at step {newest} not usable (sha256 mismatch")), "{log2}");

    // The story as `lorasweep events` tells it: lost heartbeat, requeue, the corrupt checkpoint
    // skipped, resumed from the older one, succeeded.
    let text = helpers::cli_ok(&coordinator.url, &["events", &job_id, "--json"]).await?;
    let events: Vec<serde_json::Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let kinds: Vec<(&str, u64)> =
        events.iter().map(|e| (e["kind"].as_str().unwrap_or(""), e["attempt"].as_u64().unwrap_or(0))).collect();
    assert_eq!(
        kinds,
        vec![
            ("leased", 1),
            ("heartbeat-lost", 1),
            ("requeued", 1),
            ("leased", 2),
            ("warning", 2),
            ("resumed", 2),
            ("succeeded", 2)
        ],
        "{text}"
    );
    assert_eq!(events[0]["worker_name"], "doomed");
    assert_eq!(events[3]["worker_name"], "rescuer");
    assert_eq!(events[5]["detail"], format!("resumed from the checkpoint at step {older}"));
    let human = helpers::cli_ok(&coordinator.url, &["events", &job_id]).await?;
    assert!(human.contains("heartbeat-lost") && human.contains("on rescuer"), "{human}");
    // `lorasweep job` shows both attempts; the resumed one names its checkpoint.
    let detail: serde_json::Value =
        serde_json::from_str(&helpers::cli_ok(&coordinator.url, &["job", &job_id, "--json"]).await?)?;
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!((attempts[0]["outcome"].as_str(), attempts[1]["outcome"].as_str()), (Some("lost"), Some("succeeded")));
    assert_eq!(attempts[1]["resumed_from_step"].as_u64(), Some(older));
    // Both workers shipped their job's log records; the killed one's up to its last flush.
    let logs = helpers::cli_ok(&coordinator.url, &["logs", &job_id, "--attempt", "2"]).await?;
    assert!(logs.contains("[attempt 2]") && logs.contains("resuming from checkpoint"), "{logs}");

    let reference = reference.await??;
    // Final eval loss and the whole stored curve equal the fault-free run's, bit for bit.
    let want_final = reference.points.iter().rev().find(|p| p.series == Series::Eval).map(|p| p.loss.to_bits());
    assert_eq!(job.final_eval_loss.map(f64::to_bits), want_final);
    let curve = crate::curve::read_curve(&mut sweeps, &job.id.clone()).await?;
    let series = |s: Series| -> Vec<(u64, u64)> {
        reference.points.iter().filter(|p| p.series == s).map(|p| (p.step, p.loss.to_bits())).collect()
    };
    let got_train: Vec<(u64, u64)> =
        curve.train_steps.iter().zip(&curve.train_losses).map(|(s, l)| (*s, l.to_bits())).collect();
    let got_eval: Vec<(u64, u64)> =
        curve.eval_steps.iter().zip(&curve.eval_losses).map(|(s, l)| (*s, l.to_bits())).collect();
    assert_eq!(got_train, series(Series::Train));
    assert_eq!(got_eval, series(Series::Eval));

    // The final adapter is stored (intact) and holds exactly the fault-free run's tensors.
    let stored = list(pb::ArtifactKind::Adapter).await?;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let req = pb::DownloadArtifactRequest { job_id: job.id.clone(), kind: pb::ArtifactKind::Adapter as i32, step: 0 };
    let mut stream = artifacts.clone().download_artifact(req).await?.into_inner();
    let mut adapter = Vec::new();
    while let Some(msg) = stream.message().await? {
        if let Some(pb::download_artifact_response::Part::Chunk(c)) = msg.part {
            adapter.extend(c);
        }
    }
    let sha = lorasweep_worker::artifacts::sha256_hex(&adapter);
    assert_eq!(sha, stored[0].sha256);
    let (got, want) =
        (safetensors::SafeTensors::deserialize(&adapter)?, safetensors::SafeTensors::deserialize(&reference.adapter)?);
    let mut names = want.names();
    names.sort();
    let mut got_names = got.names();
    got_names.sort();
    assert_eq!(got_names, names);
    for name in names {
        assert_eq!(got.tensor(name)?.data(), want.tensor(name)?.data(), "{name}");
    }
    // `lorasweep adapter` writes it as a PEFT directory.
    let out = dir.path().join("adapter");
    helpers::cli_ok(&coordinator.url, &["adapter", &job.id, "--out", out.to_str().expect("utf-8")]).await?;
    assert_eq!(std::fs::read(out.join("adapter_model.safetensors"))?, adapter);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json"))?)?;
    assert_eq!((config["r"].as_u64(), config["peft_type"].as_str()), (Some(4), Some("LORA")));
    // ... which `lorasweep generate` merges and samples from.
    let model = fixture("tiny-qwen2");
    let args = ["generate", "--model", &model, "--adapter", out.to_str().expect("utf-8"), "--max-new-tokens", "8"];
    let text = helpers::cli_ok(&coordinator.url, &[&args[..], &["hello there"]].concat()).await?;
    let again = helpers::cli_ok(&coordinator.url, &[&args[..], &["hello there"]].concat()).await?;
    assert_eq!(text, again, "greedy generation is deterministic");
    let err = helpers::cli(&coordinator.url, &["adapter", "no-such-job", "--out", "x"]).await?;
    assert!(!err.status.success());
    let checkpoints = list(pb::ArtifactKind::Checkpoint).await?;
    assert!(checkpoints.iter().all(|c| c.step > killed_at || c.attempt == 1), "{checkpoints:?}");
    assert!(checkpoints.iter().any(|c| c.attempt == 2), "the resumed attempt checkpoints too");
    coordinator.stop().await?;
    Ok(())
}
