//! `lorasweep bench coordinator` (placeholder until the backbone lands).

/// Arguments of `lorasweep bench coordinator`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchCoordinatorArgs {}

/// Runs the benchmark.
pub(crate) async fn run(_coordinator: &str, _args: BenchCoordinatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench coordinator is not implemented yet")
}
