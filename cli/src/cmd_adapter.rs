//! `lorasweep adapter JOB --out DIR`: a finished job's final adapter, fetched from the
//! coordinator's artifact store and written as a PEFT directory (`adapter_config.json`,
//! `adapter_model.safetensors`) that `PeftModel.from_pretrained` loads.

use std::path::PathBuf;

use anyhow::{Context, bail};
use lorasweep_proto::pb::{self, artifacts_client::ArtifactsClient};
use sha2::{Digest, Sha256};

use crate::client;

/// Arguments of `lorasweep adapter`.
#[derive(Debug, clap::Args)]
pub(crate) struct AdapterArgs {
    /// The job.
    job: String,
    /// The directory to write (created if needed; existing adapter files are replaced).
    #[arg(long)]
    out: PathBuf,
}

/// Downloads the job's adapter, checks its SHA-256 and writes the directory.
pub(crate) async fn run(url: &str, args: AdapterArgs) -> anyhow::Result<()> {
    let mut artifacts = ArtifactsClient::new(client::authed(url).await?);
    let what = format!("adapter of job {}", args.job);
    let listed = artifacts
        .list_artifacts(pb::ListArtifactsRequest { job_id: args.job.clone(), kind: pb::ArtifactKind::Adapter as i32 })
        .await
        .map_err(|s| client::call_error(&what, s))?
        .into_inner()
        .artifacts;
    let Some(meta) = listed.first() else {
        bail!("job {} has no stored adapter: it has not finished (see `lorasweep jobs`), or it failed", args.job);
    };
    let req = pb::DownloadArtifactRequest {
        job_id: args.job.clone(),
        kind: pb::ArtifactKind::Adapter as i32,
        step: meta.step,
    };
    let mut stream = artifacts.download_artifact(req).await.map_err(|s| client::call_error(&what, s))?.into_inner();
    let mut bytes = Vec::with_capacity(meta.size as usize);
    while let Some(msg) = stream.message().await.map_err(|s| client::call_error(&what, s))? {
        if let Some(pb::download_artifact_response::Part::Chunk(c)) = msg.part {
            bytes.extend_from_slice(&c);
        }
    }
    let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    if sha != meta.sha256 || bytes.len() as u64 != meta.size {
        bail!(
            "{what}: the download is corrupt ({} bytes, sha256 {sha}; stored {} bytes, sha256 {}); try again",
            bytes.len(),
            meta.size,
            meta.sha256
        );
    }
    lorasweep_worker::train::checkpoint::write_adapter_dir(&bytes, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", args.out.display());
    Ok(())
}
