//! `lorasweep bench checkpoint`: size and transfer times of one training checkpoint at a model
//! shape (default Qwen2.5-1.5B, r=8 on q/k/v/o), through the worker's own upload and download
//! paths ([`ArtifactTransfer`]) to a real coordinator served in this process.
//!
//! A separate command rather than a phase of `bench coordinator`: that bench simulates workers
//! without a trainer, while this one needs the trainer's adapters, AdamW moments and checkpoint
//! format to get the real payload, and it is worth running alone (seconds, not minutes).
//!
//! Per round: capture + serialise ([`Checkpoint::capture`], [`Checkpoint::to_bytes`]), upload
//! (1 MiB chunks with size and SHA-256; the coordinator hashes, fsyncs and records it), list +
//! download (the resume path: `ListArtifacts`, then the newest checkpoint, SHA-256 checked),
//! parse and check ([`Checkpoint::from_bytes`], [`Checkpoint::check`]). Client and coordinator
//! share the machine's cores and talk over loopback, so the MB/s are an upper bound for a
//! network and a lower bound for a dedicated coordinator host.

use std::time::Instant;

use anyhow::Context;
use lorasweep_common::{JobSpec, LoraInit, job::LoraSpec};
use lorasweep_proto::pb;
use lorasweep_train::{
    bench::shape,
    checkpoint::{Checkpoint, LoopState},
    local::parse_device,
    lora::Adapters,
    optim::{AdamW, AdamWConfig},
};
use lorasweep_worker::{ArtifactTransfer, Remote, artifacts::sha256_hex};
use serde::Serialize;

use crate::bench_coordinator::InProcess;

/// Arguments of `lorasweep bench checkpoint`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchCheckpointArgs {
    /// Model shape: tiny, 0.5b or 1.5b.
    #[arg(long, default_value = "1.5b")]
    shape: String,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    r: usize,
    /// Comma-separated LoRA targets.
    #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj")]
    targets: Vec<String>,
    /// Rounds (each a new checkpoint step); medians are printed.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One round's seconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Round {
    pub(crate) serialise_s: f64,
    pub(crate) upload_s: f64,
    pub(crate) download_s: f64,
    pub(crate) parse_s: f64,
}

/// What `bench checkpoint` measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CheckpointReport {
    pub(crate) shape: String,
    pub(crate) r: usize,
    pub(crate) targets: Vec<String>,
    pub(crate) lora_params: usize,
    /// The checkpoint's size in bytes.
    pub(crate) bytes: usize,
    /// SHA-256 of the last round's uploaded bytes.
    pub(crate) uploaded_sha256: String,
    /// SHA-256 of the last round's downloaded bytes.
    pub(crate) downloaded_sha256: String,
    /// Checkpoint steps the coordinator listed in the last round, newest first.
    pub(crate) listed_steps: Vec<u64>,
    pub(crate) rounds: Vec<Round>,
    /// Medians over the rounds.
    pub(crate) serialise_s: f64,
    pub(crate) upload_s: f64,
    pub(crate) upload_mb_s: f64,
    pub(crate) download_s: f64,
    pub(crate) download_mb_s: f64,
    pub(crate) parse_s: f64,
}

/// Runs the benchmark and prints its figures.
pub(crate) async fn run(args: BenchCheckpointArgs) -> anyhow::Result<()> {
    let r = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "checkpoint: shape {}, r={} on {} ({} LoRA params; adapters + 2 AdamW moments, f32)",
        r.shape,
        r.r,
        r.targets.join(","),
        r.lora_params
    );
    println!("size {} bytes ({:.1} MB), sha256 {}", r.bytes, r.bytes as f64 / 1e6, r.uploaded_sha256);
    for (i, x) in r.rounds.iter().enumerate() {
        println!(
            "  round {}: serialise {:.1} ms, upload {:.1} ms, list+download {:.1} ms, parse {:.1} ms",
            i + 1,
            1e3 * x.serialise_s,
            1e3 * x.upload_s,
            1e3 * x.download_s,
            1e3 * x.parse_s
        );
    }
    println!("median of {} rounds:", r.rounds.len());
    println!("  capture + serialise   {:>8.1} ms", 1e3 * r.serialise_s);
    println!(
        "  upload                {:>8.1} ms  {:>7.1} MB/s (chunked, hashed and fsynced)",
        1e3 * r.upload_s,
        r.upload_mb_s
    );
    println!("  list + download       {:>8.1} ms  {:>7.1} MB/s (sha256 checked)", 1e3 * r.download_s, r.download_mb_s);
    println!("  parse + check         {:>8.1} ms", 1e3 * r.parse_s);
    println!("downloaded bytes hash to the uploaded sha256: {}", r.uploaded_sha256 == r.downloaded_sha256);
    Ok(())
}

/// Starts a coordinator, leases its one job and moves `rounds` checkpoints through it.
pub(crate) async fn measure(args: &BenchCheckpointArgs) -> anyhow::Result<CheckpointReport> {
    anyhow::ensure!(args.rounds >= 1, "--rounds must be ≥ 1");
    let cfg = shape(&args.shape)?;
    let spec = LoraSpec { r: args.r, alpha: 2.0 * args.r as f64, dropout: 0.05, targets: args.targets.clone() };
    let dev = parse_device("cpu")?;
    let ads = Adapters::init(&spec, LoraInit::OrthoQrMatch, 0, cfg.num_hidden_layers, &|m| cfg.proj_dims(m), &dev)?;
    // One AdamW step with unit gradients: moments that are not all zero, as in a real run.
    let mut opt = AdamW::new(ads.vars(), AdamWConfig::default())?;
    let grads = ads.vars().iter().map(|v| v.ones_like()).collect::<Result<Vec<_>, _>>()?;
    opt.step(&grads, 1e-4)?;
    let job = JobSpec {
        lora: spec,
        init: LoraInit::OrthoQrMatch,
        lr: 1e-4,
        seed: 0,
        model: Default::default(),
        data: Default::default(),
        train: Default::default(),
    };

    // Lease a long time: a slow round must not lose the lease (nothing heartbeats here).
    let (coordinator, _) = InProcess::start(|config| config.lease_ttl = std::time::Duration::from_secs(3600)).await?;
    let result = rounds(&coordinator.url, args, &job, &ads, &opt).await;
    coordinator.stop().await?;
    let (rounds, bytes, uploaded_sha256, downloaded_sha256, listed_steps) = result?;
    let median = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (upload_s, download_s) = (median(|r| r.upload_s), median(|r| r.download_s));
    Ok(CheckpointReport {
        shape: args.shape.clone(),
        r: args.r,
        targets: args.targets.clone(),
        lora_params: ads.num_params(),
        bytes,
        uploaded_sha256,
        downloaded_sha256,
        listed_steps,
        serialise_s: median(|r| r.serialise_s),
        upload_s,
        upload_mb_s: bytes as f64 / 1e6 / upload_s,
        download_s,
        download_mb_s: bytes as f64 / 1e6 / download_s,
        parse_s: median(|r| r.parse_s),
        rounds,
    })
}

type Rounds = (Vec<Round>, usize, String, String, Vec<u64>);

async fn rounds(
    url: &str,
    args: &BenchCheckpointArgs,
    job: &JobSpec,
    ads: &Adapters,
    opt: &AdamW,
) -> anyhow::Result<Rounds> {
    let toml = "name = \"bench-checkpoint\"\n[grid]\ninits = [\"standard\"]\nlrs = [1e-4]\nseeds = [0]\n";
    let (_, worker_id, lease) = crate::bench_coordinator::submit_and_lease(url, toml, "bench-checkpoint").await?;
    let client = ArtifactTransfer::new(&Remote::plain(url), &worker_id, &lease.job_id, lease.attempt)?;
    let mut out = Vec::new();
    let (mut bytes_len, mut up_sha, mut down_sha, mut listed) = (0, String::new(), String::new(), Vec::new());
    for step in 1..=args.rounds as u64 {
        let state = LoopState {
            opt_step: step,
            adam_step: step,
            epoch: 0,
            micro: 4 * step as usize,
            global: 4 * step,
            tokens: 4096 * step,
            last_eval: None,
            diverged: false,
        };
        let t0 = Instant::now();
        let bytes = Checkpoint::capture(job, state, ads, opt)?.to_bytes()?;
        let serialise_s = t0.elapsed().as_secs_f64();
        up_sha = sha256_hex(&bytes);
        bytes_len = bytes.len();
        let t0 = Instant::now();
        client.upload(pb::ArtifactKind::Checkpoint, step, bytes).await?;
        let upload_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        listed = client.checkpoint_steps().await?;
        let newest = *listed.first().context("the coordinator listed no checkpoint")?;
        let down = client.download(pb::ArtifactKind::Checkpoint, newest).await?;
        let download_s = t0.elapsed().as_secs_f64();
        anyhow::ensure!(newest == step, "the newest listed checkpoint is step {newest}, uploaded {step}");
        down_sha = sha256_hex(&down);
        let t0 = Instant::now();
        let back = Checkpoint::from_bytes(&down)?;
        back.check(job, ads)?;
        let parse_s = t0.elapsed().as_secs_f64();
        anyhow::ensure!(back.state.opt_step == step, "parsed step {} from round {step}", back.state.opt_step);
        out.push(Round { serialise_s, upload_s, download_s, parse_s });
    }
    Ok((out, bytes_len, up_sha, down_sha, listed))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchCheckpointArgs,
    }

    #[tokio::test]
    async fn tiny_checkpoint_round_trips_through_the_coordinator() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["checkpoint", "--shape=tiny", "--rounds=4"])?;
        let r = measure(&cli.args).await?;
        let json: serde_json::Value = serde_json::to_value(&r)?;
        assert_eq!(json["shape"], "tiny");
        assert_eq!(r.rounds.len(), 4);
        // tiny: 2 layers × r·(d_in + d_out), q/o 64→64, k/v 64→32.
        assert_eq!(r.lora_params, 2 * 8 * (2 * (64 + 64) + 2 * (64 + 32)));
        // Adapters and both moments in f32, plus the safetensors header with the job JSON.
        assert!(r.bytes > 12 * r.lora_params && r.bytes < 12 * r.lora_params + 64 * 1024, "{}", r.bytes);
        assert_eq!(r.uploaded_sha256.len(), 64);
        assert_eq!(r.uploaded_sha256, r.downloaded_sha256);
        // The coordinator keeps the newest three checkpoints.
        assert_eq!(r.listed_steps, vec![4, 3, 2]);
        assert!(r.upload_mb_s > 0.0 && r.download_mb_s > 0.0 && r.upload_mb_s.is_finite());
        assert!(r.rounds.iter().all(|x| x.serialise_s > 0.0 && x.upload_s > 0.0 && x.parse_s > 0.0));
        Ok(())
    }
}
