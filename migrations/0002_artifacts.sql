-- Artifacts of jobs (checkpoints and final adapters). The bytes live in files under
-- `<data-dir>/artifacts/<job id>/`; a row exists only once its file is complete and verified.
CREATE TABLE artifacts (
    job_pk     INTEGER NOT NULL REFERENCES jobs(pk),
    kind       TEXT NOT NULL CHECK (kind IN ('checkpoint', 'adapter')),
    step       INTEGER NOT NULL,
    -- Attempt that uploaded it.
    attempt    INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    -- Lowercase hex SHA-256 of the file.
    sha256     TEXT NOT NULL,
    -- File name inside the job's directory.
    file       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_pk, kind, step)
) WITHOUT ROWID;
