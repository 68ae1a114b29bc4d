//! Connecting to the coordinator's `Sweeps` service, with errors that name the URL, and turning
//! gRPC statuses into messages a person can act on.

use std::time::Duration;

use anyhow::{Context, anyhow};
use lorasweep_proto::pb::sweeps_client::SweepsClient;
use tonic::{Code, Status, transport::Channel};

/// How long to wait for the coordinator to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected `Sweeps` client.
pub(crate) type Client = SweepsClient<Channel>;

/// Connects to the coordinator at `url`.
///
/// # Errors
/// When `url` is not a URL or nothing answers there; the message names the URL.
pub(crate) async fn connect(url: &str) -> anyhow::Result<Client> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| {
            format!("--coordinator {url:?} is not a valid URL (expected http://host:port)")
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_else(|| e.to_string());
        anyhow!("cannot connect to the coordinator at {url}: {cause} (is `lorasweep-coordinator` running there? set --coordinator or LORASWEEP_COORDINATOR)")
    })?;
    Ok(SweepsClient::new(channel))
}

/// Turns a failed call into an error saying what was attempted and what the coordinator said.
pub(crate) fn call_error(what: &str, status: Status) -> anyhow::Error {
    match status.code() {
        Code::NotFound => anyhow!("{what}: not found: {}", status.message()),
        Code::InvalidArgument => anyhow!("{what}: {}", status.message()),
        Code::Unavailable => anyhow!("{what}: coordinator unavailable: {}", status.message()),
        code => anyhow!("{what}: {code:?}: {}", status.message()),
    }
}
