"""phase1's jobs on RQ: enqueueing with the story's policy, the Phase 1 job and its failure
path, lifecycle events, signed webhooks and the dead-letter queue."""
