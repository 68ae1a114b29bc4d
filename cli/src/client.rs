//! Connecting to the coordinator's `Sweeps` service, with errors that name the URL, and turning
//! gRPC statuses into messages a person can act on.

use std::{sync::OnceLock, time::Duration};

use anyhow::{Context, anyhow};
use lorasweep_proto::pb::{self, sweeps_client::SweepsClient};
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

/// Every job of a sweep (in grid order), optionally only those in `state` (a wire state, 0 for
/// all): ListJobs page after page.
///
/// # Errors
/// The first failed call, as [`call_error`] words it.
pub(crate) async fn all_jobs(client: &mut Client, sweep: &str, state: i32) -> anyhow::Result<Vec<pb::Job>> {
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest { sweep_id: sweep.to_string(), state, page_size: 0, page_token })
            .await
            .map_err(|s| call_error(&format!("jobs of sweep {sweep}"), s))?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        page_token = page.next_page_token;
    }
}

/// Every sweep, newest first: ListSweeps page after page.
///
/// # Errors
/// As [`all_jobs`].
pub(crate) async fn all_sweeps(client: &mut Client) -> anyhow::Result<Vec<pb::Sweep>> {
    let mut sweeps = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_sweeps(pb::ListSweepsRequest { page_size: 0, page_token })
            .await
            .map_err(|s| call_error("listing sweeps", s))?
            .into_inner();
        sweeps.extend(page.sweeps);
        if page.next_page_token.is_empty() {
            return Ok(sweeps);
        }
        page_token = page.next_page_token;
    }
}

/// Every registered worker: ListWorkers page after page.
///
/// # Errors
/// As [`all_jobs`].
pub(crate) async fn all_workers(client: &mut Client) -> anyhow::Result<Vec<pb::WorkerInfo>> {
    let mut workers = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_workers(pb::ListWorkersRequest { page_size: 0, page_token })
            .await
            .map_err(|s| call_error("listing workers", s))?
            .into_inner();
        workers.extend(page.workers);
        if page.next_page_token.is_empty() {
            return Ok(workers);
        }
        page_token = page.next_page_token;
    }
}

/// A job's whole curves: GetCurve's pieces concatenated.
///
/// # Errors
/// As [`all_jobs`]; also a stream that breaks off.
pub(crate) async fn curve(client: &mut Client, job: &str) -> anyhow::Result<pb::GetCurveResponse> {
    let what = || format!("curve of job {job}");
    let mut stream = client
        .get_curve(pb::GetCurveRequest { job_id: job.to_string() })
        .await
        .map_err(|s| call_error(&what(), s))?
        .into_inner();
    let mut curve = pb::GetCurveResponse::default();
    while let Some(piece) = stream.message().await.map_err(|s| call_error(&what(), s))? {
        lorasweep_common::convert::append_curve(&mut curve, piece);
    }
    Ok(curve)
}
