//! `lorasweep adapter JOB --out DIR`: a finished job's final adapter, fetched from the
//! coordinator's artifact store and written as a PEFT directory (`adapter_config.json`,
//! `adapter_model.safetensors`) that `PeftModel.from_pretrained` loads.

use std::path::PathBuf;

use anyhow::{Context, bail};
use lorasweep_proto::pb::{self, artifacts_client::ArtifactsClient};
use lorasweep_worker::artifacts::{DownloadError, download_verified};

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
    let bytes = download_verified(&mut artifacts, &args.job, pb::ArtifactKind::Adapter, meta.step).await.map_err(
        |e| match e {
            DownloadError::Rpc(status) => client::call_error(&what, status),
            corrupt => anyhow::anyhow!("{what}: {corrupt}; try again"),
        },
    )?;
    lorasweep_train::checkpoint::write_adapter_dir(&bytes, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", args.out.display());
    Ok(())
}
