-- An attempt whose worker was given up for dead (cut off from the network mid-job) and came
-- back after another worker took the job over: `superseded`, so the audit trail says so.
ALTER TABLE marketplace_job_attempts
  DROP CONSTRAINT marketplace_job_attempts_status_check,
  ADD CONSTRAINT marketplace_job_attempts_status_check
    CHECK (status IN ('active', 'completed', 'failed', 'interrupted', 'superseded'));
