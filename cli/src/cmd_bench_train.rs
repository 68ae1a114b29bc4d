//! `lorasweep bench train` (placeholder until the trainer lands).

/// Arguments of `lorasweep bench train`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchTrainArgs {}

/// Runs the benchmark.
pub(crate) fn run(_args: BenchTrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench train is not implemented yet")
}
