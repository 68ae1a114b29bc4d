//! The read side of what happened: one job whole (GetJob), events and logs as pages, and the
//! follow streams that keep sending new ones as they are stored.

use lorasweep_proto::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{job_to_pb, paging};
use crate::{
    error::Result,
    store::{
        Store,
        attempts::JobDetail,
        events::{EventRow, Scope},
        logs::LogRow,
        workers::WorkerRow,
    },
};

/// Event and log pages: default and largest sizes.
const PAGE: (u32, u32) = (1000, 5000);

/// The wire form of a worker.
pub(crate) fn worker_to_pb(w: WorkerRow, alive: bool) -> pb::WorkerInfo {
    pb::WorkerInfo {
        id: w.id,
        name: w.name,
        device: w.device,
        trainer: w.trainer,
        visible_devices: w.visible_devices,
        cpu_threads: u32::try_from(w.cpu_threads).unwrap_or(0),
        gpu_memory_bytes: u64::try_from(w.gpu_memory_bytes).unwrap_or(0),
        gpu_name: w.gpu_name,
        last_seen_ms: w.last_seen,
        job_id: w.job_id.unwrap_or_default(),
        alive,
    }
}

/// The wire form of a job with its attempts.
pub(crate) fn job_detail(d: JobDetail) -> pb::GetJobResponse {
    pb::GetJobResponse {
        job: Some(job_to_pb(d.job)),
        spec_json: d.spec_json,
        sweep_name: d.sweep_name,
        attempts: d
            .attempts
            .into_iter()
            .map(|a| pb::Attempt {
                attempt: a.attempt as u32,
                worker_id: a.worker_id,
                worker_name: a.worker_name.unwrap_or_default(),
                device: a.device.unwrap_or_default(),
                gpu_name: a.gpu_name.unwrap_or_default(),
                visible_devices: a.visible_devices.unwrap_or_default(),
                leased_at_ms: a.leased_at,
                ended_at_ms: a.ended_at,
                outcome: a.outcome,
                error: a.error,
                error_kind: a.error_kind,
                resumed_from_step: a.resumed_from_step.map(|s| s as u64),
                log_records: a.log_records as u64,
                logs_dropped: a.logs_dropped as u64,
            })
            .collect(),
    }
}

fn event_to_pb(e: EventRow) -> pb::Event {
    pb::Event {
        id: e.id as u64,
        at_ms: e.at,
        sweep_id: e.sweep_id,
        job_id: e.job_id.unwrap_or_default(),
        kind: e.kind,
        detail: e.detail,
        attempt: e.attempt as u32,
        worker_id: e.worker_id,
        worker_name: e.worker_name.unwrap_or_default(),
    }
}

fn log_to_pb(r: LogRow) -> pb::LogRecord {
    pb::LogRecord {
        seq: r.seq as u64,
        attempt: r.attempt as u32,
        at_ms: r.at,
        level: r.level,
        target: r.target,
        message: r.message,
    }
}

/// Page size and starting event id of a ListEvents/FollowEvents.
pub(crate) fn events_page_args(req: &pb::ListEventsRequest) -> Result<(u32, i64)> {
    Ok((paging::page_size(req.page_size, PAGE.0, PAGE.1), paging::position(&req.page_token, "e")?.unwrap_or(0)))
}

/// Attempt filter, page size and starting seq of a ListLogs/FollowLogs.
pub(crate) fn logs_page_args(req: &pb::ListLogsRequest) -> Result<(Option<u32>, u32, i64)> {
    let attempt = (req.attempt > 0).then_some(req.attempt);
    Ok((
        attempt,
        paging::page_size(req.page_size, PAGE.0, PAGE.1),
        paging::position(&req.page_token, "l")?.unwrap_or(0),
    ))
}

/// One page of events after `after`, its next token (empty when this was the last page) and
/// the position after it (for a follower, also when this was the last page).
pub(crate) async fn events_page(
    store: &Store,
    scope: &Scope,
    after: i64,
    size: u32,
) -> Result<(pb::ListEventsResponse, i64)> {
    let mut rows = store.list_events(scope, after, size + 1).await?;
    let mut more = rows.len() > size as usize;
    rows.truncate(size as usize);
    let keys: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut events: Vec<pb::Event> = rows.into_iter().map(event_to_pb).collect();
    more |= !paging::fit(&mut events).is_empty();
    let last = events.len().checked_sub(1).map_or(after, |i| keys[i]);
    let next_page_token = if more { paging::token("e", last) } else { String::new() };
    Ok((pb::ListEventsResponse { events, next_page_token }, last))
}

/// One page of a job's log records; as [`events_page`].
pub(crate) async fn logs_page(
    store: &Store,
    job_id: &str,
    attempt: Option<u32>,
    after: i64,
    size: u32,
) -> Result<(pb::ListLogsResponse, i64)> {
    let mut rows = store.list_logs(job_id, attempt, after, size + 1).await?;
    let mut more = rows.len() > size as usize;
    rows.truncate(size as usize);
    let keys: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let mut records: Vec<pb::LogRecord> = rows.into_iter().map(log_to_pb).collect();
    more |= !paging::fit(&mut records).is_empty();
    let last = records.len().checked_sub(1).map_or(after, |i| keys[i]);
    let next_page_token = if more { paging::token("l", last) } else { String::new() };
    Ok((pb::ListLogsResponse { records, next_page_token }, last))
}

/// What a follow stream reads: pages after a position, and whether more can come.
pub(crate) trait Pager: Send + Sync + 'static {
    /// The message a page is.
    type Msg: Send + 'static;
    /// The page after `after`, the position after it, and whether it is empty.
    fn page(&self, store: &Store, after: i64) -> impl Future<Output = Result<(Self::Msg, i64, bool)>> + Send;
    /// Whether the followed scope can still produce rows of its own accord.
    fn active(&self, store: &Store) -> impl Future<Output = Result<bool>> + Send;
}

/// FollowEvents' pages.
pub(crate) struct EventPages {
    pub(crate) scope: Scope,
    pub(crate) size: u32,
}

impl Pager for EventPages {
    type Msg = pb::ListEventsResponse;

    async fn page(&self, store: &Store, after: i64) -> Result<(Self::Msg, i64, bool)> {
        let (mut msg, last) = events_page(store, &self.scope, after, self.size).await?;
        let empty = msg.events.is_empty();
        // A follower's token always says where the stream is, so a client can reconnect there.
        msg.next_page_token = paging::token("e", last);
        Ok((msg, last, empty))
    }

    async fn active(&self, store: &Store) -> Result<bool> {
        store.scope_active(&self.scope).await
    }
}

/// FollowLogs' pages.
pub(crate) struct LogPages {
    pub(crate) job_id: String,
    pub(crate) attempt: Option<u32>,
    pub(crate) size: u32,
}

impl Pager for LogPages {
    type Msg = pb::ListLogsResponse;

    async fn page(&self, store: &Store, after: i64) -> Result<(Self::Msg, i64, bool)> {
        let (mut msg, last) = logs_page(store, &self.job_id, self.attempt, after, self.size).await?;
        let empty = msg.records.is_empty();
        msg.next_page_token = paging::token("l", last);
        Ok((msg, last, empty))
    }

    async fn active(&self, store: &Store) -> Result<bool> {
        store.scope_active(&Scope::Job(self.job_id.clone())).await
    }
}

/// Sends `pager`'s pages from `after` as rows are stored, until the scope is finished and read
/// to its end, the client goes away or the coordinator shuts down.
pub(crate) async fn follow<P: Pager>(
    store: Store,
    shutdown: CancellationToken,
    tx: mpsc::Sender<std::result::Result<P::Msg, tonic::Status>>,
    pager: P,
    mut after: i64,
) {
    let mut changes = store.changes();
    loop {
        changes.borrow_and_update();
        // "Active" is read before the pages: a scope that finishes between the two still has
        // its last rows read before the stream ends.
        let live = match pager.active(&store).await {
            Ok(live) => live,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        loop {
            match pager.page(&store, after).await {
                Ok((_, _, true)) => break,
                Ok((msg, last, false)) => {
                    after = last;
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
        }
        if !live {
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        }
    }
}
