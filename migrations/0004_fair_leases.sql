-- Sharing a mixed cluster: a sweep's priority and the workers it needs, a worker's GPU memory,
-- and an index that lets the lease count each sweep's running jobs and find its oldest queued
-- one without scanning the sweep (see store::jobs::lease).
ALTER TABLE sweeps ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- '' (any), 'cpu' or 'cuda'.
ALTER TABLE sweeps ADD COLUMN need_device TEXT NOT NULL DEFAULT '';
ALTER TABLE sweeps ADD COLUMN min_gpu_memory_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sweeps ADD COLUMN min_cpu_threads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN gpu_memory_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN gpu_name TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_sweep_state ON jobs (sweep_id, state);
-- The order of the sweeps' latest leases (a counter, not a time: two leases may share a
-- millisecond): among sweeps running equally many jobs the lease picks the one leased least
-- recently (round-robin). Kept by a trigger so that the lease stays one statement and needs no
-- count of the sweep's history.
ALTER TABLE sweeps ADD COLUMN lease_seq INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER jobs_leased AFTER UPDATE OF attempt ON jobs
WHEN NEW.state = 'running' AND NEW.attempt > OLD.attempt
BEGIN
    UPDATE sweeps SET lease_seq = (SELECT MAX(lease_seq) FROM sweeps) + 1 WHERE id = NEW.sweep_id;
END;
