//! `lorasweep health`: the probe the container images' HEALTHCHECK runs (the images carry no
//! curl or grpc_health_probe). Asks a coordinator through the standard gRPC health protocol, or
//! a worker's `--metrics-listen` endpoint over HTTP, and exits 0 only if the answer is "serving".

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::client;

/// Arguments of `lorasweep health`.
#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// Probe this HTTP URL (a worker's `http://HOST:PORT/healthz`) instead of the coordinator's
    /// gRPC health (`--coordinator`, e.g. its --health-listen address).
    #[arg(long)]
    http: Option<String>,
    /// The gRPC service to ask about; empty means the coordinator as a whole.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up (and fail) after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

/// Runs the probe; an error (exit status 1) says what was not healthy.
pub(crate) async fn run(url: &str, args: HealthArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let probe = async {
        match &args.http {
            Some(http) => http_probe(http).await,
            None => grpc_probe(url, &args.service).await,
        }
    };
    let line = tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| anyhow!("no answer within {timeout:?} from {}", args.http.as_deref().unwrap_or(url)))??;
    println!("{line}");
    Ok(())
}

async fn grpc_probe(url: &str, service: &str) -> anyhow::Result<String> {
    let mut health = HealthClient::new(client::authed(url).await?);
    let answer = health
        .check(HealthCheckRequest { service: service.to_string() })
        .await
        .map_err(|s| client::call_error(&format!("health check of {url}"), s))?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    let name = if service.is_empty() { "coordinator" } else { service };
    match status {
        ServingStatus::Serving => Ok(format!("{name} at {url}: SERVING")),
        other => bail!("{name} at {url}: {}", other.as_str_name()),
    }
}

/// A plain HTTP/1.1 GET; 200 is healthy, anything else is reported with the body.
async fn http_probe(url: &str) -> anyhow::Result<String> {
    let rest =
        url.strip_prefix("http://").with_context(|| format!("--http {url:?}: expected http://HOST:PORT/PATH"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority} (is the worker running with --metrics-listen?)"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.with_context(|| format!("sending to {url}"))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.with_context(|| format!("reading from {url}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(200) => Ok(body.trim().to_string()),
        Some(code) => bail!("{url}: HTTP {code}: {}", body.trim()),
        None => bail!("{url}: not an HTTP answer: {:?}", head.chars().take(80).collect::<String>()),
    }
}
