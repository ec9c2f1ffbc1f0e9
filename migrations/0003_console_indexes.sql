-- The web console lists jobs and plans newest first, a page at a time, and charts the last
-- hour; the overview (like `phase1 info`) counts what ended in it. These indexes let each
-- read the rows it shows instead of every row.
CREATE INDEX idx_executions_queue_created ON marketplace_job_executions (queue, created_at DESC);
CREATE INDEX idx_executions_completed ON marketplace_job_executions (completed_at);
CREATE INDEX idx_attempts_ended ON marketplace_job_attempts (ended_at);
CREATE INDEX idx_plans_created ON marketplace_plans (created_at DESC);
