//! Connecting to the coordinator's `Sweeps` service, with errors that name the URL, and turning
//! gRPC statuses into messages a person can act on.

use std::{sync::OnceLock, time::Duration};

use anyhow::{Context, anyhow};
use lorasweep_proto::pb::sweeps_client::SweepsClient;
use lorasweep_worker::connect::{Authed, ConnectArgs, Remote};
use tonic::{Code, Status};

/// How long to wait for the coordinator to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected `Sweeps` client whose calls carry the configured token.
pub(crate) type Client = SweepsClient<Authed>;

/// The token and TLS flags, set once by `main` before any command connects.
static CONNECT: OnceLock<ConnectArgs> = OnceLock::new();

/// Records the global `--token-file`/`--tls-ca` flags for every later [`connect`].
pub(crate) fn configure(args: ConnectArgs) {
    // A second call would be a bug in main; the first settings stay.
    let _ = CONNECT.set(args);
}

/// Connects to the coordinator at `url`.
///
/// # Errors
/// When `url` is not a URL, the token or CA cannot be read, or nothing answers there; the
/// message names the URL or the flag.
pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    Ok(SweepsClient::new(authed(url).await?))
}

/// The channel [`connect`] uses, for clients of the other services.
///
/// # Errors
/// As [`connect`].
pub(crate) async fn authed(url: &str) -> anyhow::Result<Authed> {
    let remote = Remote::new(url, CONNECT.get_or_init(ConnectArgs::default))?;
    let endpoint = remote
        .endpoint()
        .with_context(|| format!("--coordinator {url:?} is not a valid URL (expected http://host:port)"))?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_else(|| e.to_string());
        anyhow!(
            "cannot connect to the coordinator at {url}: {cause} (is `lorasweep-coordinator` running there? set --coordinator or LORASWEEP_COORDINATOR)"
        )
    })?;
    Ok(remote.authed(channel))
}

/// Turns a failed call into an error saying what was attempted and what the coordinator said.
pub(crate) fn call_error(what: &str, status: Status) -> anyhow::Error {
    match status.code() {
        Code::NotFound => anyhow!("{what}: not found: {}", status.message()),
        Code::InvalidArgument => anyhow!("{what}: {}", status.message()),
        Code::Unavailable => anyhow!("{what}: coordinator unavailable: {}", status.message()),
        Code::Unauthenticated | Code::PermissionDenied => {
            anyhow!(
                "{what}: refused: {} (give the coordinator's token with --token-file or LORASWEEP_TOKEN)",
                status.message()
            )
        }
        code => anyhow!("{what}: {code:?}: {}", status.message()),
    }
}
