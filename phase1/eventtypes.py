"""The event type names (phase1.events emits them), apart so settings can check
PHASE1_WEBHOOK_EVENTS without importing the event and webhook modules."""

from __future__ import annotations

ENQUEUED = "job:enqueued"
ACTIVE = "job:active"
PROGRESS = "job:progress"
COMPLETED = "job:completed"
FAILED = "job:failed"
REQUEUED = "job:requeued"
TYPES = (ENQUEUED, ACTIVE, PROGRESS, COMPLETED, FAILED, REQUEUED)
