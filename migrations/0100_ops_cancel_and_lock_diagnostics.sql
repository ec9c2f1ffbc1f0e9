-- Issue 21. A cancelled job: when and why (a worker that takes it later leaves it alone), and
-- for an attempt that timed out, what was blocking it in PostgreSQL (pg_locks and
-- pg_stat_activity: the blocking backend's pid, application name, state, transaction age and
-- query), so `phase1 dlq inspect` can say who held the lock.
ALTER TABLE marketplace_job_executions
  ADD COLUMN IF NOT EXISTS cancelled_at TIMESTAMP,
  ADD COLUMN IF NOT EXISTS cancel_reason TEXT;
ALTER TABLE marketplace_job_attempts
  ADD COLUMN IF NOT EXISTS blocked_by JSONB;
