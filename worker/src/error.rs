//! The one error type of the worker library: what can stop the daemon itself.
//!
//! Per-job failures are not daemon errors: they are reported to the coordinator with `FailJob`
//! and the daemon leases the next job.

/// Why the worker daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A command-line flag or environment variable has a value the worker cannot use.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The selected trainer cannot be constructed in this build or on this machine.
    #[error("trainer unavailable: {0}")]
    TrainerUnavailable(String),
    /// The `--metrics-listen` address could not be bound.
    #[error("--metrics-listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The coordinator URL does not parse as a gRPC endpoint.
    #[error("coordinator URL {url:?}: {source}")]
    Endpoint {
        /// The URL as given.
        url: String,
        /// What tonic said about it.
        source: tonic::transport::Error,
    },
}

impl WorkerError {
    /// True for errors no retry of the same command can fix (flags, build, addresses): the
    /// binaries exit with `daemon::EXIT_CONFIG` for them.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            WorkerError::Config(_)
                | WorkerError::TrainerUnavailable(_)
                | WorkerError::Bind { .. }
                | WorkerError::Endpoint { .. }
        )
    }
}
