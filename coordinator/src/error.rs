//! The one error type of the coordinator. `grpc::status` maps it onto gRPC codes in one place.

/// What a coordinator operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request or sweep file is malformed; the message names the field and what is allowed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A sweep file failed validation.
    #[error(transparent)]
    Spec(#[from] lorasweep_common::Error),
    /// An id names nothing stored.
    #[error("{0}")]
    NotFound(String),
    /// The call carries an attempt that is not the job's live lease (requeued, expired, finished
    /// or cancelled meanwhile): the caller must drop the job.
    #[error("{0}")]
    StaleLease(String),
    /// The job or sweep is in a state that does not allow the call.
    #[error("{0}")]
    WrongState(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database's write transaction failed to commit, so nothing of the call was stored.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--data-dir` names something that is not a directory.
    #[error("data directory {}: not a directory (it exists as a file); give a directory path", .0.display())]
    NotADirectory(std::path::PathBuf),
    /// The data directory is on a network filesystem, where SQLite's WAL is unsafe.
    #[error(
        "data directory {}: on a {} filesystem ({} mounted at {}); SQLite's WAL needs the shared memory and \
         locks of one host, which network filesystems do not provide (https://sqlite.org/wal.html). Keep the data \
         dir on the coordinator's local disk (share only the HF cache), or pass --allow-network-fs to start anyway",
        path.display(), mount.fs_type, mount.source, mount.mount_point.display()
    )]
    NetworkFilesystem {
        /// The directory.
        path: std::path::PathBuf,
        /// What it is mounted on.
        mount: crate::data_dir::Mount,
    },
    /// Another coordinator holds the data directory's lock.
    #[error(
        "data directory {}: another coordinator is using it ({holder}); one coordinator per data dir — stop \
         that one, or give this one its own --data-dir",
        path.display()
    )]
    DataDirLocked {
        /// The directory.
        path: std::path::PathBuf,
        /// Who holds it, as its lock file says (`pid N on host H since T`).
        holder: String,
    },
    /// An address could not be bound (in use, not local, no permission).
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving gRPC failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The store's writer task is gone (the coordinator is shutting down).
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// The configuration would expose the coordinator unsafely (no tokens on a non-loopback
    /// address without `--insecure`), or its TLS identity is unusable.
    #[error("refusing to start: {0}")]
    Unsafe(String),
    /// Stored data could not be decoded (edited by hand, or from a newer version).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl Error {
    /// True for a refused call (bad input, unknown id, stale lease, wrong state), as opposed to
    /// a failure of the machinery. Store operations refuse before they write anything, so a
    /// refusal needs no rollback (see `store::writer`).
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::InvalidArgument(_)
                | Error::Spec(_)
                | Error::NotFound(_)
                | Error::StaleLease(_)
                | Error::WrongState(_)
        )
    }
}

/// Shorthand for coordinator results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
