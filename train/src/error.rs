//! The one error type of the trainer library: why a run failed.

/// Why a run failed. Messages name the cause (file, tensor, shape) so the job's error is useful.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model directory, config, weights or tokenizer is missing or wrong.
    #[error("model: {0}")]
    Model(String),
    /// The data directory or a data file is missing or does not parse.
    #[error("data: {0}")]
    Data(String),
    /// The job's settings cannot be run (e.g. odd rank for an orthogonal init).
    #[error("invalid job: {0}")]
    Invalid(String),
    /// A tensor operation failed (shape mismatch, out of memory, ...).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// An I/O error, with the path it concerned.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// [`crate::Progress::cancelled`] turned true; the run stopped early.
    #[error("cancelled")]
    Cancelled,
}

impl TrainError {
    /// [`TrainError::Io`] for `path`.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.display().to_string(), source }
    }
}
