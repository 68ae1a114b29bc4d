//! Prometheus metrics: counters kept in atomics by the handlers, gauges read from the database
//! at scrape time, and a plain HTTP/1.1 `GET /metrics` endpoint in the text exposition format.
//!
//! Hand-written rather than through a metrics crate: a dozen series do not justify another
//! dependency tree, and hyper (already under tonic) serves the endpoint. The endpoint is not
//! behind the gRPC tokens or TLS, so it exposes only counts; bind it to a private address.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use lorasweep_common::JobState;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use crate::store::Store;

/// Upper bounds (seconds) of the lease-latency histogram: a LeaseJob is one indexed UPDATE plus a
/// commit, so milliseconds normally; the upper buckets catch a writer stuck behind big batches.
const LATENCY_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The coordinator's counters. Shared by the handlers and the metrics endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    leases_granted: AtomicU64,
    lease_polls_empty: AtomicU64,
    leases_expired: AtomicU64,
    points_ingested: AtomicU64,
    unauthenticated: AtomicU64,
    permission_denied: AtomicU64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], plus +Inf last.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    /// A LeaseJob call that took `took`; `granted` if it handed out a job.
    pub(crate) fn lease_call(&self, granted: bool, took: Duration) {
        if granted { &self.leases_granted } else { &self.lease_polls_empty }.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let first = LATENCY_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BUCKETS.len());
        for bucket in &self.latency_buckets[first..] {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Leases the reaper found expired.
    pub(crate) fn leases_expired(&self, n: usize) {
        self.leases_expired.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Points committed by ReportPoints.
    pub(crate) fn points_ingested(&self, n: u64) {
        self.points_ingested.fetch_add(n, Ordering::Relaxed);
    }

    /// A call refused by auth.
    pub(crate) fn auth_refused(&self, code: tonic::Code) {
        match code {
            tonic::Code::PermissionDenied => &self.permission_denied,
            _ => &self.unauthenticated,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition of every series; gauges are read from `store` now.
    pub(crate) async fn render(&self, store: &Store) -> crate::error::Result<String> {
        let by_state = store.job_state_counts().await?;
        let workers = store.list_workers().await?;
        let alive = workers.iter().filter(|(_, alive)| *alive).count();
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        header(&mut out, "lorasweep_jobs", "gauge", "Jobs by state.");
        for state in JobState::ALL {
            let n = by_state.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "lorasweep_jobs{{state=\"{}\"}} {n}", state.name());
        }
        header(&mut out, "lorasweep_leases_granted_total", "counter", "LeaseJob calls that handed out a job.");
        let _ = writeln!(out, "lorasweep_leases_granted_total {}", get(&self.leases_granted));
        header(&mut out, "lorasweep_lease_polls_empty_total", "counter", "LeaseJob calls that found no queued job.");
        let _ = writeln!(out, "lorasweep_lease_polls_empty_total {}", get(&self.lease_polls_empty));
        header(
            &mut out,
            "lorasweep_leases_expired_total",
            "counter",
            "Leases the reaper found expired (job requeued or failed).",
        );
        let _ = writeln!(out, "lorasweep_leases_expired_total {}", get(&self.leases_expired));
        header(&mut out, "lorasweep_lease_latency_seconds", "histogram", "Time to answer a LeaseJob call.");
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "lorasweep_lease_latency_seconds_bucket{{le=\"{bound}\"}} {}",
                get(&self.latency_buckets[i])
            );
        }
        let count = get(&self.latency_buckets[LATENCY_BUCKETS.len()]);
        let _ = writeln!(out, "lorasweep_lease_latency_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "lorasweep_lease_latency_seconds_sum {}", get(&self.latency_sum_micros) as f64 / 1e6);
        let _ = writeln!(out, "lorasweep_lease_latency_seconds_count {count}");
        header(&mut out, "lorasweep_points_ingested_total", "counter", "Loss points committed by ReportPoints.");
        let _ = writeln!(out, "lorasweep_points_ingested_total {}", get(&self.points_ingested));
        header(&mut out, "lorasweep_workers_alive", "gauge", "Workers seen within the lease TTL.");
        let _ = writeln!(out, "lorasweep_workers_alive {alive}");
        header(&mut out, "lorasweep_workers_registered", "gauge", "Workers ever registered.");
        let _ = writeln!(out, "lorasweep_workers_registered {}", workers.len());
        let (artifacts, artifact_bytes) = store.artifact_totals().await?;
        header(&mut out, "lorasweep_artifact_bytes", "gauge", "Bytes of stored artifacts (checkpoints and adapters).");
        let _ = writeln!(out, "lorasweep_artifact_bytes {artifact_bytes}");
        header(&mut out, "lorasweep_artifacts", "gauge", "Stored artifacts.");
        let _ = writeln!(out, "lorasweep_artifacts {artifacts}");
        header(
            &mut out,
            "lorasweep_auth_refused_total",
            "counter",
            "Calls refused for a missing, wrong or weak token.",
        );
        let _ =
            writeln!(out, "lorasweep_auth_refused_total{{code=\"unauthenticated\"}} {}", get(&self.unauthenticated));
        let _ = writeln!(
            out,
            "lorasweep_auth_refused_total{{code=\"permission_denied\"}} {}",
            get(&self.permission_denied)
        );
        Ok(out)
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Serves `GET /metrics` on `listener` until `shutdown`; each connection runs on `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    store: Store,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    info!(addr = ?listener.local_addr().ok(), "metrics serving at /metrics");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(cause = %e, "metrics accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let (metrics, store, stop) = (metrics.clone(), store.clone(), shutdown.clone());
        tracker.spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, store) = (metrics.clone(), store.clone());
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics, &store).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => if let Err(e) = result { debug!(cause = %e, "metrics connection ended") },
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn respond(req: &Request<hyper::body::Incoming>, metrics: &Metrics, store: &Store) -> Response<Full<Bytes>> {
    let plain = |status: u16, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        response
    };
    if req.uri().path() != "/metrics" {
        return plain(404, "not found; metrics are at /metrics\n".into());
    }
    if req.method() != hyper::Method::GET {
        return plain(405, "only GET\n".into());
    }
    match metrics.render(store).await {
        Ok(text) => {
            let mut response = plain(200, text);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        Err(e) => plain(500, format!("reading the database failed: {e}\n")),
    }
}
