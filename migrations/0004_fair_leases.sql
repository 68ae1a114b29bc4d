-- Sharing a mixed cluster: a sweep's priority and the workers it needs, a worker's GPU memory,
-- and an index that lets the lease count each sweep's running jobs and find its oldest queued
-- one without scanning the sweep (see store::jobs::lease).
ALTER TABLE sweeps ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- '' (any), 'cpu' or 'cuda'.
ALTER TABLE sweeps ADD COLUMN need_device TEXT NOT NULL DEFAULT '';
ALTER TABLE sweeps ADD COLUMN min_gpu_memory_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sweeps ADD COLUMN min_cpu_threads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN gpu_memory_bytes INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_sweep_state ON jobs (sweep_id, state);
