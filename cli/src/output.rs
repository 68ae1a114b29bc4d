//! How client commands render coordinator answers: the documented JSON shapes (field names are a
//! contract for scripts; fields may be added, never renamed) and plain-text tables.

use std::collections::BTreeMap;

use lorasweep_common::JobState;
use lorasweep_proto::pb;
use serde_json::{Value, json};

/// A wire state as its lowercase name (`queued`, `running`, ...); `unknown` for a value this
/// client does not know, so a newer coordinator does not break the display.
pub(crate) fn state_name(wire: i32) -> &'static str {
    match JobState::from_wire(wire, "state") {
        Ok(Some(s)) => s.name(),
        _ => "unknown",
    }
}

/// A sweep's counts as `{state: n}`, with every state present (0 when absent on the wire).
pub(crate) fn counts(sweep: &pb::Sweep) -> BTreeMap<&'static str, u32> {
    let mut map: BTreeMap<&'static str, u32> = JobState::ALL.iter().map(|s| (s.name(), 0)).collect();
    for c in &sweep.counts {
        *map.entry(state_name(c.state)).or_default() += c.count;
    }
    map
}

/// True once no job of the sweep is queued or running.
pub(crate) fn is_finished(sweep: &pb::Sweep) -> bool {
    let c = counts(sweep);
    c["queued"] + c["running"] == 0
}

/// `status --json` for one sweep: `{"sweep", "counts", "total"}` plus `name`, `created_at_ms`, `finished`.
pub(crate) fn sweep_json(sweep: &pb::Sweep) -> Value {
    json!({
        "sweep": sweep.id,
        "name": sweep.name,
        "created_at_ms": sweep.created_at_ms,
        "counts": counts(sweep),
        "total": sweep.total,
        "finished": is_finished(sweep),
        "priority": sweep.priority,
        "unschedulable": sweep.unschedulable,
        "paused": sweep.paused,
        "paused_at_ms": sweep.paused_at_ms,
        "fail_fast": sweep.fail_fast,
    })
}

/// One element of `jobs --json`: `{"id","init","lr","seed","state","attempt","worker","step",
/// "final_eval_loss"}` plus `total_steps`, `last_train_loss`, `failures`, `error`, `error_kind`.
pub(crate) fn job_json(job: &pb::Job) -> Value {
    json!({
        "id": job.id,
        "init": job.init,
        "lr": job.lr,
        "seed": job.seed,
        "state": state_name(job.state),
        "attempt": job.attempt,
        "worker": job.worker,
        "step": job.step,
        "total_steps": job.total_steps,
        "last_train_loss": job.last_train_loss,
        "final_eval_loss": job.final_eval_loss,
        "failures": job.failures,
        "error": job.error,
        "error_kind": job.error_kind,
    })
}

/// One attempt of `job --json`.
pub(crate) fn attempt_json(a: &pb::Attempt) -> Value {
    json!({
        "attempt": a.attempt,
        "worker_id": a.worker_id,
        "worker_name": a.worker_name,
        "device": a.device,
        "gpu_name": a.gpu_name,
        "visible_devices": a.visible_devices,
        "leased_at_ms": a.leased_at_ms,
        "ended_at_ms": a.ended_at_ms,
        "outcome": a.outcome,
        "error": a.error,
        "error_kind": a.error_kind,
        "resumed_from_step": a.resumed_from_step,
        "log_records": a.log_records,
        "logs_dropped": a.logs_dropped,
    })
}

/// `checkpoint` or `adapter`.
pub(crate) fn artifact_kind(wire: i32) -> &'static str {
    match pb::ArtifactKind::try_from(wire) {
        Ok(pb::ArtifactKind::Checkpoint) => "checkpoint",
        Ok(pb::ArtifactKind::Adapter) => "adapter",
        _ => "unknown",
    }
}

/// One artifact of `job --json`.
pub(crate) fn artifact_json(a: &pb::Artifact) -> Value {
    json!({
        "kind": artifact_kind(a.kind),
        "step": a.step,
        "attempt": a.attempt,
        "size": a.size,
        "sha256": a.sha256,
        "created_at_ms": a.created_at_ms,
    })
}

/// One line of `events --json`.
pub(crate) fn event_json(e: &pb::Event) -> Value {
    json!({
        "id": e.id,
        "at_ms": e.at_ms,
        "sweep_id": e.sweep_id,
        "job_id": e.job_id,
        "kind": e.kind,
        "detail": e.detail,
        "attempt": e.attempt,
        "worker_id": e.worker_id,
        "worker_name": e.worker_name,
    })
}

/// `TIME  KIND  [job J attempt N on W]  detail`.
pub(crate) fn event_line(e: &pb::Event) -> String {
    let mut line = format!("{}  {:<14}", time_ms(e.at_ms), e.kind);
    if !e.job_id.is_empty() {
        line.push_str(&format!("  job {}", e.job_id));
    }
    if e.attempt > 0 {
        line.push_str(&format!(" attempt {}", e.attempt));
    }
    if !e.worker_id.is_empty() {
        let who = if e.worker_name.is_empty() { &e.worker_id } else { &e.worker_name };
        line.push_str(&format!(" on {who}"));
    }
    if !e.detail.is_empty() {
        line.push_str(&format!(": {}", e.detail));
    }
    line
}

/// One line of `logs --json`.
pub(crate) fn log_json(r: &pb::LogRecord) -> Value {
    json!({
        "seq": r.seq,
        "attempt": r.attempt,
        "at_ms": r.at_ms,
        "level": r.level,
        "target": r.target,
        "message": r.message,
    })
}

/// `TIME  LEVEL  [attempt N]  target: message`.
pub(crate) fn log_line(r: &pb::LogRecord) -> String {
    format!("{}  {:<5}  [attempt {}]  {}: {}", time_ms(r.at_ms), r.level, r.attempt, r.target, r.message)
}

/// A Unix-ms time as RFC 3339 UTC with milliseconds; `-` for 0.
pub(crate) fn time_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A worker's device with its GPU and bound GPUs, e.g. `cuda:0 (H100 80GB, CUDA_VISIBLE_DEVICES=2)`.
pub(crate) fn device(device: &str, gpu_name: &str, visible: &str) -> String {
    let mut parts = Vec::new();
    if !gpu_name.is_empty() {
        parts.push(gpu_name.to_string());
    }
    if !visible.is_empty() {
        parts.push(format!("CUDA_VISIBLE_DEVICES={visible}"));
    }
    let device = if device.is_empty() { "?" } else { device };
    if parts.is_empty() { device.to_string() } else { format!("{device} ({})", parts.join(", ")) }
}

/// `text` on one line, at most `max` characters (an ellipsis marks a cut).
pub(crate) fn short(text: &str, max: usize) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `curve --json`: `{"train": [[step, loss], ...], "eval": [[step, loss], ...]}`. NaN/inf losses
/// become `null` (JSON has no NaN). The reference form of [`curve_json_text`].
#[cfg(test)]
pub(crate) fn curve_json(curve: &pb::GetCurveResponse) -> Value {
    let pairs = |steps: &[u64], losses: &[f64]| -> Vec<Value> {
        steps.iter().zip(losses).map(|(s, l)| json!([s, l])).collect()
    };
    json!({
        "train": pairs(&curve.train_steps, &curve.train_losses),
        "eval": pairs(&curve.eval_steps, &curve.eval_losses),
    })
}

/// [`curve_json`] written straight to text, for long curves: a 1M-point curve through
/// `serde_json::Value` costs ~0.3 s of allocation, this a fraction of it. Same JSON value.
pub(crate) fn curve_json_text(curve: &pb::GetCurveResponse) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(28 * (curve.train_steps.len() + curve.eval_steps.len()) + 32);
    let series = |out: &mut String, steps: &[u64], losses: &[f64]| {
        out.push('[');
        for (i, (s, l)) in steps.iter().zip(losses).enumerate() {
            if i > 0 {
                out.push(',');
            }
            // `{:?}` is the shortest text that parses back to the same f64 (exponent form for
            // tiny and huge values); JSON has no NaN or infinity, so those are null.
            let _ = if l.is_finite() { write!(out, "[{s},{l:?}]") } else { write!(out, "[{s},null]") };
        }
        out.push(']');
    };
    out.push_str("{\"eval\":");
    series(&mut out, &curve.eval_steps, &curve.eval_losses);
    out.push_str(",\"train\":");
    series(&mut out, &curve.train_steps, &curve.train_losses);
    out.push('}');
    out
}

/// `curve --csv`: a `series,step,loss` header, then train rows, then eval rows.
pub(crate) fn curve_csv(curve: &pb::GetCurveResponse) -> String {
    let mut out = String::from("series,step,loss\n");
    for (s, l) in curve.train_steps.iter().zip(&curve.train_losses) {
        out.push_str(&format!("train,{s},{l}\n"));
    }
    for (s, l) in curve.eval_steps.iter().zip(&curve.eval_losses) {
        out.push_str(&format!("eval,{s},{l}\n"));
    }
    out
}

/// One element of `workers --json`.
pub(crate) fn worker_json(w: &pb::WorkerInfo) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "device": w.device,
        "trainer": w.trainer,
        "visible_devices": w.visible_devices,
        "cpu_threads": w.cpu_threads,
        "gpu_name": w.gpu_name,
        "gpu_memory_bytes": w.gpu_memory_bytes,
        "last_seen_ms": w.last_seen_ms,
        "job_id": w.job_id,
        "alive": w.alive,
    })
}

/// Left-aligned columns separated by two spaces; the first row is the header.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().enumerate().map(|(c, cell)| format!("{cell:<w$}", w = widths[c])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A loss for tables: 4 decimals, `-` when absent.
pub(crate) fn loss(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

/// Counts as `succeeded=3 running=1 ...`, skipping zeros.
pub(crate) fn counts_line(sweep: &pb::Sweep) -> String {
    let parts: Vec<String> =
        counts(sweep).into_iter().filter(|(_, n)| *n > 0).map(|(s, n)| format!("{s}={n}")).collect();
    if parts.is_empty() { "no jobs".into() } else { parts.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep() -> pb::Sweep {
        pb::Sweep {
            id: "s1".into(),
            name: "demo".into(),
            total: 3,
            counts: vec![
                pb::StateCount { state: pb::JobState::Succeeded as i32, count: 2 },
                pb::StateCount { state: pb::JobState::Running as i32, count: 1 },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn status_json_has_the_documented_keys() {
        let v = sweep_json(&sweep());
        assert_eq!(v["sweep"], "s1");
        assert_eq!(v["total"], 3);
        assert_eq!(v["counts"]["succeeded"], 2);
        assert_eq!(v["counts"]["queued"], 0);
        assert_eq!(v["finished"], false);
        assert_eq!(counts_line(&sweep()), "running=1 succeeded=2");
    }

    #[test]
    fn curve_json_text_is_the_same_json_value() {
        let curve = pb::GetCurveResponse {
            train_steps: vec![1, 2, 3, 4, 5],
            train_losses: vec![2.5, f64::NAN, 1e-300, -0.0, 0.1 + 0.2],
            eval_steps: vec![0],
            eval_losses: vec![f64::INFINITY],
        };
        let text = curve_json_text(&curve);
        let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed, curve_json(&curve), "{text}");
        assert_eq!(parsed["train"][4][1].as_f64(), Some(0.1 + 0.2), "round-trips exactly");
        let empty = curve_json_text(&pb::GetCurveResponse::default());
        assert_eq!(serde_json::from_str::<Value>(&empty).expect("valid"), curve_json(&pb::GetCurveResponse::default()));
    }

    #[test]
    fn curve_shapes() {
        let c = pb::GetCurveResponse {
            train_steps: vec![1, 2],
            train_losses: vec![2.5, f64::NAN],
            eval_steps: vec![0],
            eval_losses: vec![2.381],
        };
        let v = curve_json(&c);
        assert_eq!(v["train"][0], json!([1, 2.5]));
        assert!(v["train"][1][1].is_null(), "NaN becomes null");
        assert_eq!(v["eval"], json!([[0, 2.381]]));
        assert_eq!(curve_csv(&c), "series,step,loss\ntrain,1,2.5\ntrain,2,NaN\neval,0,2.381\n");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&[vec!["a".into(), "bb".into()], vec!["ccc".into(), "d".into()]]);
        assert_eq!(t, "a    bb\nccc  d\n");
    }
}
