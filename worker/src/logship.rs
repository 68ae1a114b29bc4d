//! Log shipping: the job-scoped records a worker logs (INFO and above, inside an attempt's
//! `run_job` span, the trainer thread's included) go to the coordinator, which stores them per
//! attempt for `lorasweep logs`.
//!
//! Shipping must never slow or stop training. The [`LogLayer`] formats a record and
//! `try_send`s it into a bounded queue; a full queue or a record over the rate limit is counted
//! as dropped, never waited for. Each daemon's [`Shipper`] drains its queue twice a second into
//! `ShipLogs` calls and gives a batch up after one failed retry: a coordinator that cannot take
//! logs costs the worker a counter, nothing more.
//!
//! The layer is installed by the binaries (`lorasweep-worker`, `lorasweep worker`, `lorasweep
//! demo`). It routes each record by the worker id in its span to that daemon's queue, so several
//! daemons in one process (the demo, tests) each ship to their own coordinator; a process whose
//! subscriber has no layer ships nothing.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Mutex, OnceLock, PoisonError, RwLock},
    time::{Duration, Instant},
};

use lorasweep_proto::pb::{self, workers_client::WorkersClient};
use tokio::sync::mpsc;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

use crate::connect::Authed;

/// Records waiting for the shipper; more are dropped (and counted).
const QUEUE: usize = 4096;

/// Sustained records per second the layer accepts, and the burst above it.
const RATE_PER_S: f64 = 200.0;
const BURST: f64 = 1000.0;

/// Longest message shipped; the coordinator refuses longer ones (its MAX_LOG_MESSAGE_LEN).
const MAX_MESSAGE: usize = 4096;

/// Most records per ShipLogs (the coordinator's MAX_LOG_RECORDS_PER_CALL).
const MAX_PER_CALL: usize = 1000;

/// How often the shipper flushes.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// How long one ShipLogs may take before the batch is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The span whose fields name the attempt (`job::run_job`'s `#[instrument]`).
const JOB_SPAN: &str = "run_job";

/// One attempt's identity, as the coordinator keys logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Scope {
    worker_id: String,
    job_id: String,
    attempt: u32,
}

/// A formatted record on its way to the shipper.
#[derive(Debug)]
struct Record {
    scope: Scope,
    record: pb::LogRecord,
}

/// One daemon's queue: the layer routes records to it by the worker id in their span.
struct Route {
    tx: mpsc::Sender<Record>,
    /// Token bucket (tokens, last refill) and the records dropped per attempt since the last
    /// flush.
    limit: Mutex<(f64, Instant, HashMap<Scope, u64>)>,
}

type Routes = RwLock<HashMap<String, Arc<Route>>>;

/// The daemons of this process that ship, by worker id. Process-global because the tracing
/// subscriber is; several daemons in one process (the demo, tests) each get their own route.
static ROUTES: OnceLock<Routes> = OnceLock::new();

fn routes() -> &'static Routes {
    ROUTES.get_or_init(Routes::default)
}

/// The tracing layer that captures job-scoped records. Give it an INFO filter
/// (`layer().with_filter(LevelFilter::INFO)`); it ignores records outside an attempt's span
/// and records of workers that do not ship.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogLayer;

/// The layer for a binary's subscriber.
pub fn layer() -> LogLayer {
    LogLayer
}

/// Reads `job_id`, `attempt` and `worker_id` off the job span.
#[derive(Default)]
struct ScopeVisitor {
    job_id: Option<String>,
    attempt: Option<u32>,
    worker_id: Option<String>,
}

impl Visit for ScopeVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "attempt" {
            self.attempt = u32::try_from(value).ok();
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "attempt" {
            self.attempt = u32::try_from(value).ok();
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "job_id" => self.job_id = Some(value.to_string()),
            "worker_id" => self.worker_id = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%x` fields arrive here as Display wrapped in Debug: no quotes.
        match field.name() {
            "job_id" => self.job_id = Some(format!("{value:?}")),
            "worker_id" => self.worker_id = Some(format!("{value:?}")),
            "attempt" => self.attempt = format!("{value:?}").parse().ok(),
            _ => {}
        }
    }
}

/// Formats an event as `message key=value …`.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl<S> Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != JOB_SPAN {
            return;
        }
        let mut v = ScopeVisitor::default();
        attrs.record(&mut v);
        if let (Some(job_id), Some(attempt), Some(worker_id)) = (v.job_id, v.attempt, v.worker_id)
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(Scope { worker_id, job_id, attempt });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let Some(scope) = ctx
            .event_scope(event)
            .and_then(|mut spans| spans.find_map(|span| span.extensions().get::<Scope>().cloned()))
        else {
            return;
        };
        let Some(route) = routes().read().unwrap_or_else(PoisonError::into_inner).get(&scope.worker_id).cloned() else {
            return;
        };
        {
            let mut limit = route.limit.lock().unwrap_or_else(PoisonError::into_inner);
            let (tokens, last, dropped) = &mut *limit;
            let now = Instant::now();
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * RATE_PER_S).min(BURST);
            *last = now;
            if *tokens < 1.0 {
                *dropped.entry(scope).or_default() += 1;
                return;
            }
            *tokens -= 1.0;
        }
        let mut v = MessageVisitor::default();
        event.record(&mut v);
        v.message.push_str(&v.fields);
        let record = pb::LogRecord {
            seq: 0,
            attempt: scope.attempt,
            at_ms: now_ms(),
            level: level.as_str().to_string(),
            target: cut(event.metadata().target().to_string(), 256),
            message: cut(v.message, MAX_MESSAGE),
        };
        if let Err(mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) =
            route.tx.try_send(Record { scope, record })
        {
            *route.limit.lock().unwrap_or_else(PoisonError::into_inner).2.entry(r.scope).or_default() += 1;
        }
    }
}

/// A daemon's shipper: its route in the layer and the task that drains it. Public for
/// `lorasweep bench log-shipping`.
#[derive(Debug)]
pub struct Shipper {
    worker_id: String,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Shipper {
    /// Starts shipping `worker_id`'s job records to `client`.
    pub fn start(worker_id: &str, client: WorkersClient<Authed>) -> Shipper {
        let (tx, rx) = mpsc::channel(QUEUE);
        let route = Arc::new(Route { tx, limit: Mutex::new((BURST, Instant::now(), HashMap::new())) });
        routes().write().unwrap_or_else(PoisonError::into_inner).insert(worker_id.to_string(), route.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(ship(rx, route, client, stop.clone()));
        Shipper { worker_id: worker_id.to_string(), stop, task }
    }

    /// Stops routing records here, ships what is queued (waiting at most `within`) and ends.
    pub async fn finish(self, within: Duration) {
        routes().write().unwrap_or_else(PoisonError::into_inner).remove(&self.worker_id);
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(within, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Drains `rx` every [`FLUSH_EVERY`] until `stop`, then flushes once more.
async fn ship(
    mut rx: mpsc::Receiver<Record>,
    route: Arc<Route>,
    client: WorkersClient<Authed>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            () = stop.cancelled() => true,
        };
        let mut pending = Vec::new();
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        let dropped = std::mem::take(&mut route.limit.lock().unwrap_or_else(PoisonError::into_inner).2);
        flush(&client, pending, dropped).await;
        if last {
            return;
        }
    }
}

/// Ships `records` grouped by attempt, with each attempt's dropped count.
async fn flush(client: &WorkersClient<Authed>, records: Vec<Record>, dropped: HashMap<Scope, u64>) {
    let mut groups: HashMap<Scope, Vec<pb::LogRecord>> = HashMap::new();
    for r in records {
        groups.entry(r.scope).or_default().push(r.record);
    }
    for scope in dropped.keys() {
        groups.entry(scope.clone()).or_default();
    }
    for (scope, records) in groups {
        let mut first = true;
        for chunk in records.chunks(MAX_PER_CALL).map(<[_]>::to_vec).chain(records.is_empty().then(Vec::new)) {
            let req = pb::ShipLogsRequest {
                worker_id: scope.worker_id.clone(),
                job_id: scope.job_id.clone(),
                attempt: scope.attempt,
                records: chunk,
                dropped: if first { dropped.get(&scope).copied().unwrap_or(0) } else { 0 },
            };
            first = false;
            // One retry, then the batch is given up: logs never hold the worker back.
            for _ in 0..2 {
                let mut c = client.clone();
                match tokio::time::timeout(CALL_TIMEOUT, c.ship_logs(req.clone())).await {
                    Ok(Ok(_)) => break,
                    // Refused (not our attempt, say): retrying cannot help.
                    Ok(Err(s)) if !crate::rpc::is_transient(&s) => break,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short".into(), 10), "short");
        let long = "é".repeat(3000);
        let c = cut(long, 4096);
        assert!(c.len() <= 4096 && c.ends_with('…'), "{}", c.len());
    }
}
