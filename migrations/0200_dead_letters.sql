-- The dead-letter queue's record in PostgreSQL, the system of record: one row per job that
-- failed for good, with the entry Redis holds. Redis can lose its entry (a restart without
-- persistence, a flush); `phase1 dlq` reads this row then, and the reconciler writes the entry
-- back. A requeue stamps `requeued_at`; failing for good again clears it.
CREATE TABLE marketplace_dead_letters (
  job_id VARCHAR(255) PRIMARY KEY,
  plan_id UUID,
  queue VARCHAR(255) NOT NULL,
  reason VARCHAR(50) NOT NULL,
  error_type TEXT,
  error_message TEXT,
  traceback TEXT,
  payload JSONB,
  entry JSONB NOT NULL,
  failed_at TIMESTAMPTZ NOT NULL,
  requeued_at TIMESTAMPTZ
);
CREATE INDEX idx_dead_letters_open ON marketplace_dead_letters(queue, failed_at)
  WHERE requeued_at IS NULL;
