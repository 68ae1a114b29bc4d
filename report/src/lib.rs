//! The study's tables and figures, computed from a sweep's jobs and curves: what `lorasweep
//! results`, `lorasweep plot` and the coordinator's dashboard show, so the terminal, the PNG
//! files and the browser read the same numbers off the same drawing code.
//!
//! - [`results`]: final eval loss per lr × init (mean ± std over seeds), relative to Standard,
//!   best lr per init;
//! - [`plot`]: the figures (loss vs lr, zoomed, eval curves per init) as PNG/SVG files or SVG
//!   text;
//! - [`downsample`]: min/max per pixel bucket, so a million-point curve draws fast and its
//!   spikes stay visible.
//!
//! Pure functions over plain data: no I/O but the files `plot::write_all` is asked to write.

pub mod downsample;
pub mod plot;
pub mod results;

pub use results::{Cell, JobResult, Results, fmt_lr, same_lr};

/// What drawing a figure can fail on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded font could not be registered with plotters.
    #[error("the embedded DejaVu Sans font did not load")]
    Font,
    /// plotters could not draw (a backend error: for files, usually the file).
    #[error("drawing {what} failed: {cause}")]
    Draw { what: String, cause: String },
    /// A file or directory could not be written.
    #[error("writing {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}
