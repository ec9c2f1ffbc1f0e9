-- phase1: plans, their Phase 1 tasks, and the job audit trail (STORY-4.2 schema).
-- Timestamps without a time zone hold UTC: every phase1 connection sets TimeZone=UTC.

CREATE TABLE marketplace_plans (
  id UUID PRIMARY KEY,
  title TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
  status VARCHAR(20) NOT NULL DEFAULT 'analyzed'
    CHECK (status IN ('analyzed', 'approved', 'rejected')),
  analysis JSONB NOT NULL DEFAULT '{}'::jsonb,
  created_at TIMESTAMP NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMP NOT NULL DEFAULT NOW()
);

CREATE TABLE marketplace_tasks (
  id UUID PRIMARY KEY,
  plan_id UUID NOT NULL REFERENCES marketplace_plans(id) ON DELETE CASCADE,
  phase INT NOT NULL DEFAULT 1,
  task_key VARCHAR(200) NOT NULL,
  title TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  status VARCHAR(20) NOT NULL DEFAULT 'todo',
  position INT NOT NULL DEFAULT 0,
  created_at TIMESTAMP NOT NULL DEFAULT NOW(),
  -- The idempotency key: a retried or repeated job never creates a task twice.
  CONSTRAINT uq_task_key_per_plan UNIQUE (plan_id, phase, task_key)
);

-- Track job execution for audit trail (exactly as the story gives it).
CREATE TABLE marketplace_job_executions (
  id UUID PRIMARY KEY,
  plan_id UUID NOT NULL REFERENCES marketplace_plans(id),
  job_id VARCHAR(255) NOT NULL UNIQUE,
  status VARCHAR(50) NOT NULL, -- pending, active, completed, failed (+ retrying)
  error_message TEXT,
  attempt_number INT DEFAULT 1,
  created_at TIMESTAMP DEFAULT NOW(),
  completed_at TIMESTAMP,
  result JSONB
);

CREATE INDEX idx_plan_id_job ON marketplace_job_executions(plan_id);
CREATE INDEX idx_status ON marketplace_job_executions(status);

-- phase1's additions: what the polling route and the reconciler need without asking Redis.
ALTER TABLE marketplace_job_executions
  ADD COLUMN queue VARCHAR(100) NOT NULL DEFAULT 'phase1-tasks',
  ADD COLUMN progress INT NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
  ADD COLUMN max_attempts INT NOT NULL DEFAULT 4,
  ADD COLUMN started_at TIMESTAMP,
  ADD COLUMN next_retry_at TIMESTAMP,
  ADD COLUMN error_type VARCHAR(255),
  ADD COLUMN updated_at TIMESTAMP NOT NULL DEFAULT NOW(),
  ADD CONSTRAINT ck_execution_status
    CHECK (status IN ('pending', 'active', 'retrying', 'completed', 'failed'));

-- One job per plan: concurrent approvals cannot make two.
CREATE UNIQUE INDEX uq_job_executions_plan ON marketplace_job_executions(plan_id);

-- Every attempt, append-only, so an operator can see why each try failed.
CREATE TABLE marketplace_job_attempts (
  job_id VARCHAR(255) NOT NULL REFERENCES marketplace_job_executions(job_id) ON DELETE CASCADE,
  attempt INT NOT NULL CHECK (attempt >= 1),
  status VARCHAR(20) NOT NULL
    CHECK (status IN ('active', 'completed', 'failed', 'interrupted')),
  worker VARCHAR(255),
  started_at TIMESTAMP NOT NULL DEFAULT NOW(),
  ended_at TIMESTAMP,
  error_type VARCHAR(255),
  error_message TEXT,
  PRIMARY KEY (job_id, attempt)
);
