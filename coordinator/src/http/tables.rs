//! The dashboard's tables as HTML: the study's two result tables (with each number's full value
//! in `data-` attributes), the jobs table (sorted and filtered from the query) and the events.
//! Everything a user wrote is escaped here.

use std::{collections::HashMap, fmt::Write as _};

use lorasweep_common::JobState;
use lorasweep_report::{Results, fmt_lr};

use super::{
    html::{self, esc},
    pages::{PageQuery, state_class},
};
use crate::store::{events::EventRow, jobs::JobRow};

/// The two tables of `lorasweep results`, with each number's full value in `data-` attributes
/// (the browser test compares them with `lorasweep results --format json`).
pub(crate) fn results_tables(r: &Results) -> String {
    let mut out = String::from("<h2>Final eval loss (mean ± std over seeds)</h2><table id=loss><tr><th>lr</th>");
    for init in &r.inits {
        let _ = write!(out, "<th>{}</th>", esc(init.title()));
    }
    out.push_str("</tr>");
    for (row, lr) in r.lrs.iter().enumerate() {
        let _ = write!(out, "<tr><th>{}</th>", fmt_lr(*lr));
        for (col, init) in r.inits.iter().enumerate() {
            let c = r.at(row, col);
            let mark = if c.complete() { "" } else { "*" };
            let text = match (c.mean, c.std) {
                (Some(m), Some(s)) => format!("{m:.4} ± {s:.4} (n={}){mark}", c.n),
                _ => format!("—{mark}"),
            };
            let data = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:?}"));
            let _ = write!(
                out,
                "<td data-init=\"{}\" data-lr=\"{lr:?}\" data-mean=\"{}\" data-std=\"{}\" data-n=\"{}\" \
                 data-diverged=\"{}\">{text}</td>",
                init.name(),
                data(c.mean),
                data(c.std),
                c.n,
                c.diverged
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table><h2>Relative to Standard</h2><table id=relative><tr><th>lr</th>");
    for init in &r.inits {
        let _ = write!(out, "<th>{}</th>", esc(init.title()));
    }
    out.push_str("</tr>");
    for (row, lr) in r.lrs.iter().enumerate() {
        let _ = write!(out, "<tr><th>{}</th>", fmt_lr(*lr));
        for (col, init) in r.inits.iter().enumerate() {
            let c = r.at(row, col);
            let text = c.vs_standard_pct.map_or("—".into(), |p| format!("{p:+.2}%"));
            let data = c.vs_standard_pct.map_or(String::new(), |p| format!("{p:?}"));
            let _ = write!(out, "<td data-init=\"{}\" data-lr=\"{lr:?}\" data-pct=\"{data}\">{text}</td>", init.name());
        }
        out.push_str("</tr>");
    }
    out.push_str("</table><p>Best lr per init: ");
    let best: Vec<String> =
        r.best_lr.iter().map(|(init, lr)| format!("{} {}", esc(init.title()), lr.map_or("—".into(), fmt_lr))).collect();
    out.push_str(&best.join(" · "));
    out.push_str(". <span class=muted>* a seed has no value yet (queued, running, failed or cancelled).</span></p>");
    out
}

/// Sort keys of the jobs table.
const SORTS: [&str; 10] = ["grid", "state", "init", "lr", "seed", "attempt", "step", "train", "eval", "worker"];

fn sort_jobs(jobs: &mut [JobRow], names: &HashMap<String, String>, sort: &str, desc: bool) {
    let name = |j: &JobRow| j.worker_id.as_deref().and_then(|w| names.get(w)).cloned().unwrap_or_default();
    let f = |a: &JobRow, b: &JobRow| -> std::cmp::Ordering {
        let loss = |v: Option<f64>| v.unwrap_or(f64::INFINITY);
        match sort {
            "state" => a.state.cmp(&b.state),
            "init" => a.init.cmp(&b.init),
            "lr" => a.lr.total_cmp(&b.lr),
            "seed" => a.seed.cmp(&b.seed),
            "attempt" => a.attempt.cmp(&b.attempt),
            "step" => a.step.cmp(&b.step),
            "train" => loss(a.last_train_loss).total_cmp(&loss(b.last_train_loss)),
            "eval" => loss(a.final_eval_loss).total_cmp(&loss(b.final_eval_loss)),
            "worker" => name(a).cmp(&name(b)),
            _ => a.ord.cmp(&b.ord),
        }
        .then(a.ord.cmp(&b.ord))
    };
    jobs.sort_by(|a, b| if desc { f(b, a) } else { f(a, b) });
}

pub(crate) fn jobs_table(sweep_id: &str, jobs: &[JobRow], names: &HashMap<String, String>, q: &PageQuery) -> String {
    let sort = q.sort.as_deref().filter(|s| SORTS.contains(s)).unwrap_or("grid");
    let desc = q.desc.as_deref() == Some("1");
    let state = q.state.as_deref().and_then(|s| s.parse::<JobState>().ok());
    let mut shown: Vec<JobRow> = jobs.iter().filter(|j| state.is_none_or(|s| j.state == s.name())).cloned().collect();
    sort_jobs(&mut shown, names, sort, desc);
    let base = format!("/sweeps/{}", esc(sweep_id));
    let keep = |extra: &str| {
        let mut parts = Vec::new();
        if let Some(lr) = q.lr {
            parts.push(format!("lr={lr:?}"));
        }
        if let Some(s) = state {
            parts.push(format!("state={}", s.name()));
        }
        parts.push(extra.to_string());
        parts.retain(|p| !p.is_empty());
        parts.join("&amp;")
    };
    let mut out = format!("<h2 id=jobs-heading>Jobs</h2><p>Show: <a href=\"{base}?{}#jobs-heading\">all</a>", keep(""));
    for s in JobState::ALL {
        let n = jobs.iter().filter(|j| j.state == s.name()).count();
        if n > 0 {
            let mut params = vec![format!("state={}", s.name())];
            if let Some(lr) = q.lr {
                params.push(format!("lr={lr:?}"));
            }
            let _ = write!(out, " · <a href=\"{base}?{}#jobs-heading\">{} ({n})</a>", params.join("&amp;"), s.name());
        }
    }
    out.push_str("</p><table id=jobs><tr>");
    for (col, label) in [
        ("state", "state"),
        ("init", "init"),
        ("lr", "lr"),
        ("seed", "seed"),
        ("attempt", "attempt"),
        ("worker", "worker"),
        ("step", "step"),
        ("train", "train loss"),
        ("eval", "eval loss"),
    ] {
        let flip = if sort == col && !desc { "&amp;desc=1" } else { "" };
        let arrow = if sort == col { if desc { " ▼" } else { " ▲" } } else { "" };
        let _ = write!(
            out,
            "<th><a href=\"{base}?{}{flip}#jobs-heading\">{label}</a>{arrow}</th>",
            keep(&format!("sort={col}"))
        );
    }
    out.push_str("<th class=l>error</th></tr>");
    for j in &shown {
        let worker = j.worker_id.as_deref().map(|w| names.get(w).map_or(w, String::as_str)).unwrap_or("");
        let step = if j.total_steps > 0 { format!("{}/{}", j.step, j.total_steps) } else { j.step.to_string() };
        let error: String = j.error.chars().take(200).collect();
        let _ = write!(
            out,
            "<tr data-job=\"{id}\" data-state=\"{state}\"><td class=\"l {cls}\"><a href=\"/jobs/{id}\">{state}</a></td>\
             <td class=l>{init}</td><td>{lr}</td><td>{seed}</td><td>{attempt}</td><td class=l>{worker}</td>\
             <td>{step}</td><td>{train}</td><td>{eval}</td><td class=err>{error}</td></tr>",
            id = esc(&j.id),
            state = esc(&j.state),
            cls = state_class(&j.state),
            init = esc(&j.init),
            lr = fmt_lr(j.lr),
            seed = j.seed,
            attempt = j.attempt,
            worker = esc(worker),
            train = html::num(j.last_train_loss, 4),
            eval = html::num(j.final_eval_loss, 4),
            error = esc(&error),
        );
    }
    out.push_str("</table>");
    out
}

pub(crate) fn events_table(events: &[EventRow], with_job: bool) -> String {
    let mut out = String::from("<table class=events><tr><th>at</th>");
    if with_job {
        out.push_str("<th class=l>job</th>");
    }
    out.push_str("<th class=l>event</th><th>attempt</th><th class=l>worker</th><th class=l>detail</th></tr>");
    for e in events {
        let _ = write!(out, "<tr><td>{}</td>", html::time(e.at));
        if with_job {
            let job = e.job_id.as_deref().map_or(String::new(), |j| format!("<a href=\"/jobs/{0}\">{0}</a>", esc(j)));
            let _ = write!(out, "<td class=l>{job}</td>");
        }
        let worker = e.worker_name.as_deref().unwrap_or(&e.worker_id);
        let attempt = if e.attempt > 0 { e.attempt.to_string() } else { String::new() };
        let _ = write!(
            out,
            "<td class=l>{}</td><td>{attempt}</td><td class=l>{}</td><td class=err>{}</td></tr>",
            esc(&e.kind),
            esc(worker),
            esc(&e.detail)
        );
    }
    out.push_str("</table>");
    out
}
