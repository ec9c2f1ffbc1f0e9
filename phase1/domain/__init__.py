"""The marketplace's rules in PostgreSQL: plans, their approval, their Phase 1 tasks and the
audit rows of every job and attempt. Nothing here knows RQ or Redis."""
