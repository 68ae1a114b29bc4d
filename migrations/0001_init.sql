-- lorasweep coordinator schema. Times are Unix milliseconds from the coordinator's Clock (never
-- SQLite's own `now`, so tests control lease expiry). String literals are single-quoted.

-- One submitted sweep file.
CREATE TABLE sweeps (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    -- The file as submitted, for `status` and reproducibility.
    sweep_toml  TEXT NOT NULL,
    -- Where the text came from (a path), as the submitter named it.
    source      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- One grid cell. `pk` orders the queue (submission order, then grid order) and keys loss_points
-- compactly; `id` is the opaque id on the wire.
CREATE TABLE jobs (
    pk               INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    sweep_id         TEXT NOT NULL REFERENCES sweeps(id),
    -- Position in the sweep's grid (init, lr, seed).
    ord              INTEGER NOT NULL,
    init             TEXT NOT NULL,
    lr               REAL NOT NULL,
    seed             INTEGER NOT NULL,
    -- The full lorasweep_common::JobSpec as JSON, handed to the worker with the lease.
    spec_json        TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'diverged', 'cancelled')),
    -- Incremented on every lease and never reset: it is the lease's fencing token.
    attempt          INTEGER NOT NULL DEFAULT 0,
    -- Failed or expired attempts since submission/retry. Separate from `attempt` so a worker that
    -- gracefully releases a job on shutdown does not burn one of the job's attempts.
    failures         INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT,
    -- 0 when not running.
    lease_expires_at INTEGER NOT NULL DEFAULT 0,
    -- When the current (or last) attempt was leased; 0 before the first lease.
    leased_at        INTEGER NOT NULL DEFAULT 0,
    step             INTEGER NOT NULL DEFAULT 0,
    total_steps      INTEGER NOT NULL DEFAULT 0,
    last_train_loss  REAL,
    final_eval_loss  REAL,
    tokens           INTEGER NOT NULL DEFAULT 0,
    seconds          REAL NOT NULL DEFAULT 0,
    error            TEXT NOT NULL DEFAULT '',
    updated_at       INTEGER NOT NULL,
    UNIQUE (sweep_id, ord)
);

-- The lease query reads the oldest queued job; the reaper reads expired running ones.
CREATE INDEX jobs_queued ON jobs (pk) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (lease_expires_at) WHERE state = 'running';

-- Registered worker daemons.
CREATE TABLE workers (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    device     TEXT NOT NULL,
    trainer    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
);

-- Loss curves. One row per (job, series, step): reports are idempotent on that key. WITHOUT
-- ROWID clusters a job's curve by the key, so reading a 100k-point curve is one range scan.
CREATE TABLE loss_points (
    job_pk INTEGER NOT NULL REFERENCES jobs(pk),
    series TEXT NOT NULL CHECK (series IN ('train', 'eval')),
    step   INTEGER NOT NULL,
    -- The loss for SQL and people. SQLite has no NaN: a NaN is stored as NULL.
    loss   REAL,
    -- The exact f64 bit pattern (`f64::to_bits` as a signed integer): what GetCurve returns, so
    -- every value (NaN, ±inf, -0.0, subnormals) comes back bit for bit, and integers aggregate
    -- to text several times faster than REALs print.
    bits   INTEGER NOT NULL,
    PRIMARY KEY (job_pk, series, step)
) WITHOUT ROWID;

-- What happened to sweeps and jobs, for post-mortems: submitted, cancelled, retried (per sweep);
-- completed, failed-attempt, failed, released, expired (per attempt, naming its worker and lease
-- time). A lease writes no row of its own: the job row holds worker, attempt and leased_at, and
-- the event that ends the attempt records them, which keeps the hottest write one statement short.
CREATE TABLE events (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    sweep_id TEXT NOT NULL,
    job_id   TEXT,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_sweep ON events (sweep_id, id);
