-- A completion is one statement: the `succeeded`/`diverged` event is written by the trigger that
-- closes the attempt, in the completing UPDATE itself (each separate statement costs a round trip
-- to sqlx's connection thread, which is most of what a statement costs here). The detail reads as
-- before: "final eval loss 2.000000", or "<error>; final eval loss …" for a diverged job, with
-- "none (no eval ran)" when no eval ran.
DROP TRIGGER jobs_completed;
CREATE TRIGGER jobs_completed AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'running' AND NEW.state IN ('succeeded', 'diverged')
BEGIN
    UPDATE attempts SET ended_at = NEW.updated_at, outcome = NEW.state, error = NEW.error
    WHERE job_pk = NEW.pk AND attempt = NEW.attempt;
    INSERT INTO events (at, sweep_id, job_id, kind, detail, attempt, worker_id)
    VALUES (
        NEW.updated_at, NEW.sweep_id, NEW.id, NEW.state,
        CASE WHEN NEW.error = '' THEN '' ELSE NEW.error || '; ' END || 'final eval loss ' ||
            CASE WHEN NEW.final_eval_loss IS NULL THEN 'none (no eval ran)'
                 ELSE printf('%.6f', NEW.final_eval_loss) END,
        NEW.attempt, NEW.worker_id
    );
END;
