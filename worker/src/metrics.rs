//! The worker's HTTP endpoint (`--metrics-listen`): Prometheus `GET /metrics` in the text
//! exposition format, and `GET /healthz` for container and Kubernetes probes.
//!
//! `/healthz` answers 200 while the daemon's loop runs — registering, idle or training — and 503
//! once it is stopping. An unreachable coordinator does not make the worker unhealthy: restarting
//! the worker would not bring the coordinator back, and the worker reconnects by itself; the body
//! says how long ago the coordinator last answered. Like the coordinator's metrics, the endpoint
//! has no auth and exposes only counts and ids; bind it to a private address.

use std::{fmt::Write as _, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::status::{State, WorkerStatus};

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, status: Arc<WorkerStatus>, shutdown: CancellationToken) {
    info!(addr = ?listener.local_addr().ok(), "worker metrics serving at /metrics and /healthz");
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
        let (status, stop) = (status.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let status = status.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &status)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => if let Err(e) = result { debug!(cause = %e, "metrics connection ended") },
                () = stop.cancelled() => {}
            }
        });
    }
}

fn respond(req: &Request<hyper::body::Incoming>, status: &WorkerStatus) -> Response<Full<Bytes>> {
    let reply = |code: u16, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        response
    };
    if req.method() != hyper::Method::GET {
        return reply(405, "text/plain; charset=utf-8", "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => reply(200, "text/plain; version=0.0.4; charset=utf-8", render(status)),
        "/healthz" => {
            let (code, body) = healthz(status);
            reply(code, "text/plain; charset=utf-8", body)
        }
        _ => reply(404, "text/plain; charset=utf-8", "not found; try /metrics or /healthz\n".into()),
    }
}

/// The probe's answer: 200 unless stopping, and a line saying what the worker does.
pub(crate) fn healthz(status: &WorkerStatus) -> (u16, String) {
    let state = status.state();
    let code = if state == State::Stopping { 503 } else { 200 };
    let mut body = format!("{} state={}", if code == 200 { "ok" } else { "stopping" }, state.name());
    if let Some(id) = status.worker_id() {
        let _ = write!(body, " worker_id={id}");
    }
    if let Some(c) = status.current() {
        let _ = write!(body, " job={} attempt={} step={}/{}", c.job_id, c.attempt, c.step, c.total_steps);
    }
    match status.since_contact() {
        Some(s) => {
            let _ = write!(body, " coordinator_answered={s:.1}s_ago");
        }
        None => body.push_str(" coordinator_answered=never"),
    }
    body.push('\n');
    (code, body)
}

/// Every series, read now.
pub(crate) fn render(status: &WorkerStatus) -> String {
    let mut out = String::new();
    let label = escape;
    header(
        &mut out,
        "lorasweep_worker_info",
        "gauge",
        "Constant 1, labelled with the worker's name, device and trainer.",
    );
    let _ = writeln!(
        out,
        "lorasweep_worker_info{{name=\"{}\",device=\"{}\",trainer=\"{}\",version=\"{}\"}} 1",
        label(&status.name),
        label(&status.device),
        status.trainer,
        env!("CARGO_PKG_VERSION")
    );
    header(&mut out, "lorasweep_worker_state", "gauge", "1 for the daemon's current state, 0 for the others.");
    let now = status.state();
    for state in State::ALL {
        let _ = writeln!(out, "lorasweep_worker_state{{state=\"{}\"}} {}", state.name(), u8::from(state == now));
    }
    let current = status.current();
    header(
        &mut out,
        "lorasweep_worker_job",
        "gauge",
        "Constant 1, labelled with the job and attempt being run (absent when idle).",
    );
    if let Some(c) = &current {
        let _ = writeln!(out, "lorasweep_worker_job{{job_id=\"{}\",attempt=\"{}\"}} 1", label(&c.job_id), c.attempt);
    }
    let (step, total, pending, tps) =
        current.as_ref().map_or((0, 0, 0, 0.0), |c| (c.step, c.total_steps, c.points_pending, c.tokens_per_second));
    header(&mut out, "lorasweep_worker_step", "gauge", "Optimizer step of the attempt being run.");
    let _ = writeln!(out, "lorasweep_worker_step {step}");
    header(&mut out, "lorasweep_worker_total_steps", "gauge", "Optimizer steps the attempt being run will take.");
    let _ = writeln!(out, "lorasweep_worker_total_steps {total}");
    header(
        &mut out,
        "lorasweep_worker_points_pending",
        "gauge",
        "Loss points sent by the trainer and not yet acknowledged by the coordinator.",
    );
    let _ = writeln!(out, "lorasweep_worker_points_pending {pending}");
    header(
        &mut out,
        "lorasweep_worker_tokens_per_second",
        "gauge",
        "Training tokens per second of the attempt being run, since it started.",
    );
    let _ = writeln!(out, "lorasweep_worker_tokens_per_second {tps}");
    header(&mut out, "lorasweep_worker_tokens_total", "counter", "Training tokens through forward and backward.");
    let _ = writeln!(out, "lorasweep_worker_tokens_total {}", status.tokens_total());
    header(&mut out, "lorasweep_worker_attempts_total", "counter", "Attempts started.");
    let _ = writeln!(out, "lorasweep_worker_attempts_total {}", status.attempts());
    header(
        &mut out,
        "lorasweep_worker_heartbeat_failures_total",
        "counter",
        "Heartbeats that failed for a transient reason (coordinator unreachable or erroring).",
    );
    let _ = writeln!(out, "lorasweep_worker_heartbeat_failures_total {}", status.heartbeat_failures());
    header(
        &mut out,
        "lorasweep_worker_leases_lost_total",
        "counter",
        "Attempts dropped because the coordinator refused their lease.",
    );
    let _ = writeln!(out, "lorasweep_worker_leases_lost_total {}", status.leases_lost());
    header(
        &mut out,
        "lorasweep_worker_coordinator_last_answer_seconds",
        "gauge",
        "Seconds since the coordinator last answered a call (-1: never).",
    );
    let _ =
        writeln!(out, "lorasweep_worker_coordinator_last_answer_seconds {}", status.since_contact().unwrap_or(-1.0));
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value in the exposition format: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_name_every_series_and_escape_labels() {
        let status = WorkerStatus::new("node \"7\"\\gpu", "cuda:0", "candle");
        let text = render(&status);
        assert!(
            text.contains(r#"lorasweep_worker_info{name="node \"7\"\\gpu",device="cuda:0",trainer="candle""#),
            "{text}"
        );
        assert!(text.contains("lorasweep_worker_state{state=\"registering\"} 1"));
        assert!(text.contains("lorasweep_worker_state{state=\"training\"} 0"));
        assert!(text.contains("lorasweep_worker_coordinator_last_answer_seconds -1"));
        assert!(!text.contains("lorasweep_worker_job{"), "no job while registering");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
        }
    }

    #[test]
    fn healthz_is_ok_until_stopping() {
        let status = WorkerStatus::new("w", "cpu", "synthetic");
        let (code, body) = healthz(&status);
        assert_eq!(code, 200);
        assert!(body.starts_with("ok state=registering") && body.contains("coordinator_answered=never"), "{body}");
        status.registered("w-9");
        status.set_state(State::Stopping);
        let (code, body) = healthz(&status);
        assert_eq!(code, 503);
        assert!(body.contains("worker_id=w-9"), "{body}");
    }
}
