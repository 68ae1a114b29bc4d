-- What a worker sees of its machine, as it said at registration: the GPUs a scheduler bound to
-- it (CUDA_VISIBLE_DEVICES) and its trainer's CPU threads. Shown by `lorasweep workers`.
ALTER TABLE workers ADD COLUMN visible_devices TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN cpu_threads INTEGER NOT NULL DEFAULT 0;
