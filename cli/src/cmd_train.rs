//! `lorasweep train` (placeholder until the trainer lands).

/// Arguments of `lorasweep train`.
#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {}

/// Runs one job locally.
pub(crate) fn run(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("train is not implemented yet")
}
