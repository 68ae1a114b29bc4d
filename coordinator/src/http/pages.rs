//! The dashboard's pages, rendered from the store: `/` (every sweep), `/sweeps/{id}` (the
//! study's tables, figures, jobs, workers, recent events) and `/jobs/{id}` (curves, attempts,
//! events, logs). With `?fragment=1` a page answers only its `<main>` content, which is what
//! the live script fetches.

use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{Html, IntoResponse, Response},
};
use lorasweep_common::{LoraInit, Series};
use lorasweep_report::{JobResult, Results, fmt_lr, plot, same_lr};
use serde::Deserialize;

use super::{
    App, error_page,
    figures::Figures,
    html,
    html::esc,
    login,
    tables::{events_table, jobs_table, results_tables},
};
use crate::{
    error::Result,
    store::{
        Store,
        events::{EventRow, Scope},
        jobs::JobRow,
        sweeps::SweepSummary,
    },
};

/// Figures' size in pixels (drawn as SVG; the browser scales them to the column).
const FIGURE: (u32, u32) = (900, 560);

/// Points read per curve query (the store's piece size).
const PIECE: u32 = 65_536;

/// At most this many sweeps on `/`, events and log records on a page: the pages are for
/// looking, `lorasweep events`/`logs` page through everything.
const MAX_SWEEPS: u32 = 500;
const MAX_EVENTS: u32 = 200;
const MAX_LOGS: u32 = 500;

/// The query parameters the pages understand.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageQuery {
    /// Only `<main>`'s content (the live script's fetch).
    fragment: Option<String>,
    /// The lr of the eval-curves figure on a sweep page.
    pub(crate) lr: Option<f64>,
    /// Jobs table: sort column and direction, state filter.
    pub(crate) sort: Option<String>,
    pub(crate) desc: Option<String>,
    pub(crate) state: Option<String>,
}

impl PageQuery {
    fn fragment(&self) -> bool {
        self.fragment.as_deref().is_some_and(|f| f == "1")
    }
}

/// A cache key for `path` with `q` (everything that changes what is rendered).
fn key(path: &str, q: &PageQuery) -> String {
    format!("{path}?lr={:?}&sort={:?}&desc={:?}&state={:?}", q.lr, q.sort, q.desc, q.state)
}

/// Serves a page or its fragment from the render cache.
async fn respond<F>(
    app: &App,
    headers: &HeaderMap,
    cache_key: String,
    title: String,
    q: &PageQuery,
    render: F,
) -> Response
where
    F: Future<Output = Result<String>>,
{
    let version = *app.store.changes().borrow();
    match app.cache.get_or_render(cache_key, version, render).await {
        Ok(body) if q.fragment() => Html(body.as_str().to_string()).into_response(),
        Ok(body) => Html(html::page(&title, &body, true, login::has_session(headers))).into_response(),
        Err(e) => error_page(&e),
    }
}

/// `GET /`.
pub(crate) async fn index(State(app): State<App>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let store = app.store.clone();
    respond(&app, &headers, key("/", &q), "Sweeps".into(), &q, render_index(store)).await
}

/// `GET /sweeps/{id}`.
pub(crate) async fn sweep(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    // The title needs the name; a fragment (the live script's fetch) has no title.
    let title = if q.fragment() {
        String::new()
    } else {
        match app.store.get_sweep(&id).await {
            Ok(s) => format!("Sweep {}", s.sweep.name),
            Err(e) => return error_page(&e),
        }
    };
    let cache_key = key(&format!("/sweeps/{id}"), &q);
    let render = render_sweep(app.store.clone(), app.figures.clone(), id, &q);
    respond(&app, &headers, cache_key, title, &q, render).await
}

/// `GET /jobs/{id}`.
pub(crate) async fn job(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let cache_key = key(&format!("/jobs/{id}"), &q);
    let render = render_job(app.store.clone(), app.figures.clone(), id.clone());
    respond(&app, &headers, cache_key, format!("Job {id}"), &q, render).await
}

pub(crate) fn state_class(state: &str) -> String {
    format!("s-{}", esc(state))
}

fn counts_text(s: &SweepSummary) -> String {
    s.counts.iter().map(|(state, n)| format!("{n} {}", state.name())).collect::<Vec<_>>().join(", ")
}

fn finished(s: &SweepSummary) -> u32 {
    s.counts.iter().filter(|(state, _)| !state.is_active()).map(|(_, n)| n).sum()
}

/// Remaining time from the pace so far: elapsed since submission × remaining / finished.
fn eta(s: &SweepSummary, now_ms: i64) -> String {
    let (done, total) = (finished(s), s.total());
    if done == total {
        return "done".into();
    }
    if done == 0 || s.sweep.paused_at > 0 {
        return "—".into();
    }
    let elapsed = (now_ms - s.sweep.created_at).max(0) as f64 / 1000.0;
    html::duration(elapsed / f64::from(done) * f64::from(total - done))
}

fn progress_bar(done: u32, total: u32) -> String {
    let pct = if total == 0 { 0.0 } else { f64::from(done) / f64::from(total) * 100.0 };
    format!("<span class=bar><span style=\"width:{pct:.1}%\"></span></span> {done}/{total}")
}

async fn render_index(store: Store) -> Result<String> {
    let sweeps = store.list_sweeps(None, MAX_SWEEPS).await?;
    let now = store.now();
    let mut out = String::from("<h1>Sweeps</h1>");
    if sweeps.is_empty() {
        out.push_str("<p>No sweep yet: <code>lorasweep submit SWEEP.toml</code>.</p>");
        return Ok(out);
    }
    out.push_str(
        "<table id=sweeps><tr><th class=l>name</th><th class=l>id</th><th class=l>progress</th>\
         <th class=l>jobs by state</th><th>started</th><th>ETA</th></tr>",
    );
    for s in &sweeps {
        let paused = if s.sweep.paused_at > 0 { " <b>paused</b>" } else { "" };
        let _ = write!(
            out,
            "<tr data-sweep=\"{id}\"><td class=l><a href=\"/sweeps/{id}\">{name}</a>{paused}</td><td class=l>{id}</td>\
             <td class=l>{bar}</td><td class=l>{counts}</td><td>{started}</td><td>{eta}</td></tr>",
            id = esc(&s.sweep.id),
            name = esc(&s.sweep.name),
            bar = progress_bar(finished(s), s.total()),
            counts = esc(&counts_text(s)),
            started = html::time(s.sweep.created_at),
            eta = eta(s, now),
        );
    }
    out.push_str("</table>");
    Ok(out)
}

/// Every job of a sweep, in grid order.
async fn all_jobs(store: &Store, sweep_id: &str) -> Result<Vec<JobRow>> {
    let mut jobs = Vec::new();
    loop {
        let after = jobs.last().map(|j: &JobRow| j.ord);
        let page = store.list_jobs(sweep_id, None, after, 10_000).await?;
        let done = page.len() < 10_000;
        jobs.extend(page);
        if done {
            return Ok(jobs);
        }
    }
}

/// A whole series of a job's curve.
async fn series(store: &Store, pk: i64, job_id: &str, series: Series) -> Result<Vec<(u64, f64)>> {
    let mut out: Vec<(u64, f64)> = Vec::new();
    loop {
        let piece = store.curve_piece(pk, job_id, series, out.last().map(|p| p.0), PIECE).await?;
        let n = piece.steps.len();
        out.extend(piece.steps.into_iter().zip(piece.losses));
        if n < PIECE as usize {
            return Ok(out);
        }
    }
}

fn job_result(j: &JobRow) -> Option<JobResult> {
    Some(JobResult {
        init: j.init.parse().ok()?,
        lr: j.lr,
        seed: j.seed as u64,
        state: j.state.parse().ok()?,
        final_eval_loss: j.final_eval_loss,
    })
}

/// The newest `limit` events of `scope`, oldest first.
async fn recent_events(store: &Store, scope: &Scope, limit: u32) -> Result<Vec<EventRow>> {
    let mut all: Vec<EventRow> = Vec::new();
    let mut after = 0;
    loop {
        let page = store.list_events(scope, after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let n = page.len();
        all.extend(page);
        if all.len() > 2 * limit as usize {
            all.drain(..all.len() - limit as usize);
        }
        if n < 10_000 {
            break;
        }
    }
    let skip = all.len().saturating_sub(limit as usize);
    Ok(all.split_off(skip))
}

async fn render_sweep(store: Store, figures: Arc<Figures>, id: String, q: &PageQuery) -> Result<String> {
    let summary = store.get_sweep(&id).await?;
    let jobs = all_jobs(&store, &id).await?;
    let workers = store.list_workers().await?;
    let names: HashMap<String, String> = workers.iter().map(|(w, _)| (w.id.clone(), w.name.clone())).collect();
    let results = Results::compute(&jobs.iter().filter_map(job_result).collect::<Vec<_>>());
    let s = &summary.sweep;

    let mut out = format!("<h1>{}</h1><p><span class=muted>{}</span> · ", esc(&s.name), esc(&s.id));
    let _ = write!(
        out,
        "{} · {} · started {} · ETA {}</p>",
        progress_bar(finished(&summary), summary.total()),
        esc(&counts_text(&summary)),
        html::time(s.created_at),
        eta(&summary, store.now())
    );
    if s.paused_at > 0 {
        let _ = write!(
            out,
            "<p class=pause id=paused>Paused at {}: {}. Resume with <code>lorasweep resume {}</code>.</p>",
            html::time(s.paused_at),
            esc(&s.pause_reason),
            esc(&s.id)
        );
    }
    if let Some(why) = &summary.unschedulable {
        let _ = write!(out, "<p class=pause id=unschedulable>{}</p>", esc(why));
    }
    if !results.lrs.is_empty() {
        out.push_str(&results_tables(&results));
        out.push_str("<h2>Figures</h2><div class=figs>");
        for zoomed in [false, true] {
            let svg = plot::svg_loss_vs_lr(&results, &s.name, zoomed, FIGURE).map_err(figure_error)?;
            let alt = if zoomed { "final eval loss vs lr, zoomed" } else { "final eval loss vs lr" };
            out.push_str(&figures.img(svg, alt));
        }
        out.push_str("</div>");
        // The eval curves at one lr: the one asked for, else Standard's best, else the first.
        let lr =
            q.lr.or_else(|| results.best_lr.iter().find_map(|(_, lr)| *lr))
                .or_else(|| results.lrs.first().copied())
                .unwrap_or(1e-3);
        let _ = write!(out, "<p>Eval curves at lr: ");
        let links: Vec<String> = results
            .lrs
            .iter()
            .map(|l| {
                let label = fmt_lr(*l);
                if same_lr(*l, lr) {
                    format!("<b>{label}</b>")
                } else {
                    format!("<a href=\"/sweeps/{}?lr={l:?}\">{label}</a>", esc(&s.id))
                }
            })
            .collect();
        out.push_str(&links.join(" · "));
        out.push_str("</p><div class=figs>");
        let mut curves: Vec<(LoraInit, Vec<plot::Curve>)> = Vec::new();
        for init in &results.inits {
            let mut seeds = Vec::new();
            for j in jobs.iter().filter(|j| j.init == init.name() && same_lr(j.lr, lr)) {
                let pk = store.job_pk(&j.id).await?;
                seeds.push(series(&store, pk, &j.id, Series::Eval).await?);
            }
            if !seeds.is_empty() {
                curves.push((*init, seeds));
            }
        }
        let svg = plot::svg_eval_curves(&curves, lr, &s.name, FIGURE).map_err(figure_error)?;
        out.push_str(&figures.img(svg, "eval loss during training per init"));
        out.push_str("</div>");
    }
    out.push_str(&jobs_table(&id, &jobs, &names, q));
    out.push_str("<h2>Workers</h2><table id=workers><tr><th class=l>name</th><th class=l>device</th>\
                  <th class=l>GPU</th><th>CPU threads</th><th class=l>job</th><th>last seen</th><th class=l>alive</th></tr>");
    for (w, alive) in &workers {
        let gpu = if w.gpu_name.is_empty() {
            String::new()
        } else {
            format!(
                "{} ({:.0} GB) CUDA_VISIBLE_DEVICES={}",
                w.gpu_name,
                w.gpu_memory_bytes as f64 / 1e9,
                w.visible_devices
            )
        };
        let job = w.job_id.as_deref().map_or(String::new(), |j| format!("<a href=\"/jobs/{0}\">{0}</a>", esc(j)));
        let _ = write!(
            out,
            "<tr><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td>{}</td><td class=l>{job}</td><td>{}</td>\
             <td class=l>{}</td></tr>",
            esc(&w.name),
            esc(&w.device),
            esc(&gpu),
            w.cpu_threads,
            html::time(w.last_seen),
            if *alive { "yes" } else { "no" }
        );
    }
    out.push_str("</table><h2>Recent events</h2>");
    let events = recent_events(&store, &Scope::Sweep(id.clone()), 30).await?;
    out.push_str(&events_table(&events, true));
    Ok(out)
}

fn figure_error(e: lorasweep_report::Error) -> crate::Error {
    crate::Error::Corrupt(format!("a figure could not be drawn: {e}"))
}

async fn render_job(store: Store, figures: Arc<Figures>, id: String) -> Result<String> {
    let detail = store.get_job(&id).await?;
    let j = &detail.job;
    let pk = store.job_pk(&id).await?;
    let train = series(&store, pk, &id, Series::Train).await?;
    let eval = series(&store, pk, &id, Series::Eval).await?;
    let mut out = format!(
        "<h1>{} lr {} seed {}</h1><p>Sweep <a href=\"/sweeps/{sid}\">{}</a> · job <span class=muted>{}</span></p>",
        esc(&j.init),
        fmt_lr(j.lr),
        j.seed,
        esc(&detail.sweep_name),
        esc(&j.id),
        sid = esc(&j.sweep_id),
    );
    let step = if j.total_steps > 0 { format!("{}/{}", j.step, j.total_steps) } else { j.step.to_string() };
    let _ = write!(
        out,
        "<table id=job><tr><th class=l>state</th><td class=\"l {cls}\" id=state>{state}</td></tr>\
         <tr><th class=l>attempt</th><td class=l>{}</td></tr><tr><th class=l>step</th><td class=l>{step}</td></tr>\
         <tr><th class=l>last train loss</th><td class=l>{}</td></tr><tr><th class=l>final eval loss</th><td class=l>{}</td></tr>\
         <tr><th class=l>error</th><td class=err id=error>{}</td></tr></table>",
        j.attempt,
        html::num(j.last_train_loss, 6),
        html::num(j.final_eval_loss, 6),
        esc(&j.error),
        cls = state_class(&j.state),
        state = esc(&j.state),
    );
    let (svg, drawn) = plot::svg_job_curves(&train, &eval, "train and eval loss", FIGURE).map_err(figure_error)?;
    let _ = write!(
        out,
        "<h2>Curves</h2><p class=muted id=points>{} train and {} eval points stored; {drawn} drawn (min and max per \
         pixel column, so spikes stay visible)</p><div class=figs>{}</div>",
        train.len(),
        eval.len(),
        figures.img(svg, "train and eval loss"),
    );
    out.push_str(
        "<h2>Attempts</h2><table id=attempts><tr><th>attempt</th><th class=l>worker</th><th class=l>device</th>\
         <th>leased</th><th>ended</th><th class=l>outcome</th><th>resumed from</th><th>log records</th>\
         <th class=l>error</th></tr>",
    );
    for a in &detail.attempts {
        let device = match (&a.device, &a.gpu_name) {
            (Some(d), Some(g)) if !g.is_empty() => format!("{d} {g}"),
            (Some(d), _) => d.clone(),
            _ => String::new(),
        };
        let kind = if a.error_kind.is_empty() { String::new() } else { format!(" ({})", a.error_kind) };
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=l>{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td class=\"l {}\">{}{}</td>\
             <td>{}</td><td>{}{}</td><td class=err>{}</td></tr>",
            a.attempt,
            esc(a.worker_name.as_deref().unwrap_or(&a.worker_id)),
            esc(&device),
            html::time(a.leased_at),
            html::time(a.ended_at),
            state_class(&a.outcome),
            esc(&a.outcome),
            esc(&kind),
            a.resumed_from_step.map_or("—".into(), |s| format!("step {s}")),
            a.log_records,
            if a.logs_dropped > 0 { format!(" ({} dropped)", a.logs_dropped) } else { String::new() },
            esc(&a.error),
        );
    }
    out.push_str("</table><h2>Events</h2>");
    let events = recent_events(&store, &Scope::Job(id.clone()), MAX_EVENTS).await?;
    out.push_str(&events_table(&events, false));
    let logs = store.list_logs(&id, None, 0, MAX_LOGS).await?;
    let _ = write!(
        out,
        "<h2>Logs</h2><p class=muted>the first {MAX_LOGS} records; all of them: <code>lorasweep logs {}</code></p><pre id=logs>",
        esc(&id)
    );
    for l in &logs {
        let _ = writeln!(
            out,
            "{} #{} {:5} {}: {}",
            html::time(l.at),
            l.attempt,
            esc(&l.level),
            esc(&l.target),
            esc(&l.message)
        );
    }
    out.push_str("</pre>");
    Ok(out)
}
