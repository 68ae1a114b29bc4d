//! What the worker is doing now, for its `/metrics` and `/healthz` endpoint ([`crate::metrics`]):
//! the daemon's state, the attempt it runs (step, tokens, points awaiting acknowledgement) and
//! counters of what went wrong. Written by the daemon and the attempt's tasks, read at scrape
//! time; nothing here influences what the worker does.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Instant,
};

use crate::control::JobControl;

/// The daemon's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// Registering with the coordinator (at start, or after it forgot this worker).
    Registering = 0,
    /// Registered, polling for a job.
    Idle = 1,
    /// Running an attempt.
    Training = 2,
    /// Shutting down: finishing the attempt's last reports.
    Stopping = 3,
}

impl State {
    /// Every state, in the order of their numbers.
    pub(crate) const ALL: [State; 4] = [State::Registering, State::Idle, State::Training, State::Stopping];

    /// The state's name in metrics and `/healthz`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Registering => "registering",
            State::Idle => "idle",
            State::Training => "training",
            State::Stopping => "stopping",
        }
    }
}

/// The attempt being run.
#[derive(Debug)]
struct Current {
    job_id: String,
    attempt: u32,
    control: Arc<JobControl>,
    started: Instant,
    tokens_at_start: u64,
}

/// The worker's live status; one per daemon, shared behind an `Arc`.
#[derive(Debug)]
pub(crate) struct WorkerStatus {
    pub(crate) name: String,
    pub(crate) device: String,
    pub(crate) trainer: &'static str,
    state: AtomicU8,
    worker_id: Mutex<Option<String>>,
    current: Mutex<Option<Current>>,
    tokens: AtomicU64,
    heartbeat_failures: AtomicU64,
    leases_lost: AtomicU64,
    attempts: AtomicU64,
    /// When the coordinator last answered a call (register, lease, heartbeat).
    last_contact: Mutex<Option<Instant>>,
}

/// A snapshot of the attempt being run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CurrentView {
    pub(crate) job_id: String,
    pub(crate) attempt: u32,
    pub(crate) step: u64,
    pub(crate) total_steps: u64,
    pub(crate) points_pending: u64,
    pub(crate) tokens_per_second: f64,
}

impl WorkerStatus {
    /// A worker that has not registered yet.
    pub(crate) fn new(name: &str, device: &str, trainer: &'static str) -> Self {
        Self {
            name: name.to_string(),
            device: device.to_string(),
            trainer,
            state: AtomicU8::new(State::Registering as u8),
            worker_id: Mutex::new(None),
            current: Mutex::new(None),
            tokens: AtomicU64::new(0),
            heartbeat_failures: AtomicU64::new(0),
            leases_lost: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            last_contact: Mutex::new(None),
        }
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// The daemon's state.
    pub(crate) fn state(&self) -> State {
        State::ALL[usize::from(self.state.load(Ordering::Relaxed)).min(State::ALL.len() - 1)]
    }

    pub(crate) fn registered(&self, worker_id: &str) {
        *lock(&self.worker_id) = Some(worker_id.to_string());
        self.contact();
    }

    pub(crate) fn worker_id(&self) -> Option<String> {
        lock(&self.worker_id).clone()
    }

    /// The coordinator answered a call.
    pub(crate) fn contact(&self) {
        *lock(&self.last_contact) = Some(Instant::now());
    }

    /// Seconds since the coordinator last answered, `None` before it ever did.
    pub(crate) fn since_contact(&self) -> Option<f64> {
        lock(&self.last_contact).map(|t| t.elapsed().as_secs_f64())
    }

    /// An attempt starts; `control` is its shared state (step, point ledger).
    pub(crate) fn begin(&self, job_id: &str, attempt: u32, control: Arc<JobControl>) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        *lock(&self.current) = Some(Current {
            job_id: job_id.to_string(),
            attempt,
            control,
            started: Instant::now(),
            tokens_at_start: self.tokens.load(Ordering::Relaxed),
        });
        self.set_state(State::Training);
    }

    /// The attempt ended (any way).
    pub(crate) fn end(&self) {
        *lock(&self.current) = None;
        if self.state() == State::Training {
            self.set_state(State::Idle);
        }
    }

    pub(crate) fn add_tokens(&self, n: u64) {
        self.tokens.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn heartbeat_failed(&self) {
        self.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn lease_lost(&self) {
        self.leases_lost.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tokens_total(&self) -> u64 {
        self.tokens.load(Ordering::Relaxed)
    }

    pub(crate) fn heartbeat_failures(&self) -> u64 {
        self.heartbeat_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn leases_lost(&self) -> u64 {
        self.leases_lost.load(Ordering::Relaxed)
    }

    pub(crate) fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The attempt being run, if any.
    pub(crate) fn current(&self) -> Option<CurrentView> {
        let current = lock(&self.current);
        let c = current.as_ref()?;
        let secs = c.started.elapsed().as_secs_f64();
        let tokens = self.tokens.load(Ordering::Relaxed).saturating_sub(c.tokens_at_start);
        Some(CurrentView {
            job_id: c.job_id.clone(),
            attempt: c.attempt,
            step: c.control.step(),
            total_steps: c.control.total(),
            points_pending: c.control.points.pending(),
            tokens_per_second: if secs > 0.0 { tokens as f64 / secs } else { 0.0 },
        })
    }
}

/// A poisoned lock only means a panic elsewhere while holding it; the data is still a snapshot.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::control::Shutdown;

    #[test]
    fn an_attempt_shows_its_step_pending_points_and_throughput_until_it_ends() {
        let status = WorkerStatus::new("w", "cpu", "synthetic");
        assert_eq!((status.state(), status.current()), (State::Registering, None));
        status.registered("w-1");
        status.set_state(State::Idle);
        let control = Arc::new(JobControl::new(Shutdown::new(
            CancellationToken::new(),
            CancellationToken::new(),
            std::time::Duration::from_secs(25),
        )));
        status.begin("job-a", 2, control.clone());
        control.set_total(10);
        control.record_step(3);
        for _ in 0..5 {
            control.points.record_sent();
        }
        control.points.record_done(2);
        status.add_tokens(4096);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let view = status.current().expect("an attempt runs");
        assert_eq!((view.job_id.as_str(), view.attempt, view.step, view.total_steps), ("job-a", 2, 3, 10));
        assert_eq!(view.points_pending, 3);
        assert!(view.tokens_per_second > 0.0 && view.tokens_per_second <= 4096.0 / 0.005, "{view:?}");
        assert_eq!(status.state(), State::Training);
        status.end();
        assert_eq!((status.state(), status.current(), status.attempts()), (State::Idle, None, 1));
    }
}
