-- Seeing what happened: one row per attempt (who ran it, how it ended and why), events that
-- name their attempt and worker, workers' job logs, and fail-fast pauses.

-- One lease of a job. Inserted by the jobs_leased trigger (below) in the lease's own statement;
-- updated by whatever ends the attempt (complete, fail, reap, cancel).
CREATE TABLE attempts (
    job_pk            INTEGER NOT NULL REFERENCES jobs(pk),
    attempt           INTEGER NOT NULL,
    worker_id         TEXT NOT NULL,
    leased_at         INTEGER NOT NULL,
    -- 0 while running.
    ended_at          INTEGER NOT NULL DEFAULT 0,
    outcome           TEXT NOT NULL DEFAULT 'running'
                      CHECK (outcome IN ('running', 'succeeded', 'diverged', 'failed', 'lost', 'released', 'cancelled')),
    error             TEXT NOT NULL DEFAULT '',
    -- For failed attempts: whether another attempt may succeed.
    error_kind        TEXT NOT NULL DEFAULT '' CHECK (error_kind IN ('', 'retryable', 'fatal')),
    resumed_from_step INTEGER,
    log_bytes         INTEGER NOT NULL DEFAULT 0,
    log_records       INTEGER NOT NULL DEFAULT 0,
    logs_dropped      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_pk, attempt)
) WITHOUT ROWID;

-- What the job's error is: '' (none), retryable, fatal, lost, diverged, cancelled. Fail-fast
-- counts the `fatal` ones.
ALTER TABLE jobs ADD COLUMN error_kind TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN log_capped INTEGER NOT NULL DEFAULT 0;

-- Events name the attempt and worker they concern (read joins the worker's name).
ALTER TABLE events ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN worker_id TEXT NOT NULL DEFAULT '';
CREATE INDEX events_job ON events (job_id, id) WHERE job_id IS NOT NULL;

-- Fail-fast: pause after `fail_fast` fatal failures with no success (0: never). A paused sweep
-- is skipped by the lease until ResumeSweep.
ALTER TABLE sweeps ADD COLUMN fail_fast INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sweeps ADD COLUMN paused_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sweeps ADD COLUMN pause_reason TEXT NOT NULL DEFAULT '';

-- Log records workers shipped, per job in arrival order (`seq` from 1). Bounded per job by the
-- coordinator (attempts.log_bytes); `jobs.log_capped` is set once the cap is reached.
CREATE TABLE job_logs (
    job_pk  INTEGER NOT NULL REFERENCES jobs(pk),
    seq     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    level   TEXT NOT NULL,
    target  TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_pk, seq)
) WITHOUT ROWID;

-- The lease stays one statement: the trigger that keeps the round-robin order now also opens
-- the attempt's row, writes the `leased` event and marks the worker seen (a trigger's statements
-- skip sqlx's per-call round trip to its connection thread, which is most of what a separate
-- statement costs).
DROP TRIGGER jobs_leased;
CREATE TRIGGER jobs_leased AFTER UPDATE OF attempt ON jobs
WHEN NEW.state = 'running' AND NEW.attempt > OLD.attempt
BEGIN
    UPDATE sweeps SET lease_seq = (SELECT MAX(lease_seq) FROM sweeps) + 1 WHERE id = NEW.sweep_id;
    INSERT INTO attempts (job_pk, attempt, worker_id, leased_at) VALUES (NEW.pk, NEW.attempt, NEW.worker_id, NEW.leased_at);
    INSERT INTO events (at, sweep_id, job_id, kind, detail, attempt, worker_id)
    VALUES (NEW.leased_at, NEW.sweep_id, NEW.id, 'leased', '', NEW.attempt, NEW.worker_id);
    UPDATE workers SET last_seen = NEW.leased_at WHERE id = NEW.worker_id;
END;

-- A completion (the only way a running job becomes succeeded or diverged) closes its attempt in
-- the completing statement. Failures, expiries and cancels close theirs in Rust, with their
-- error kinds.
CREATE TRIGGER jobs_completed AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'running' AND NEW.state IN ('succeeded', 'diverged')
BEGIN
    UPDATE attempts SET ended_at = NEW.updated_at, outcome = NEW.state, error = NEW.error
    WHERE job_pk = NEW.pk AND attempt = NEW.attempt;
END;
