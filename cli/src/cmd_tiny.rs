//! `lorasweep make-tiny-model` / `make-tiny-data` (placeholders until the trainer lands).

/// Arguments of `lorasweep make-tiny-model`.
#[derive(Debug, clap::Args)]
pub(crate) struct MakeTinyModelArgs {}

/// Arguments of `lorasweep make-tiny-data`.
#[derive(Debug, clap::Args)]
pub(crate) struct MakeTinyDataArgs {}

/// Writes a tiny model.
pub(crate) fn run_model(_args: MakeTinyModelArgs) -> anyhow::Result<()> {
    anyhow::bail!("make-tiny-model is not implemented yet")
}

/// Writes tiny data.
pub(crate) fn run_data(_args: MakeTinyDataArgs) -> anyhow::Result<()> {
    anyhow::bail!("make-tiny-data is not implemented yet")
}
