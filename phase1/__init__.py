"""phase1: asynchronous, reliable Phase 1 task creation for plan approvals, on RQ."""

from phase1.approval import Approval, approve, approve_sync, reject
from phase1.context import Phase1, build
from phase1.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermanentJobError,
    Phase1Error,
    UnavailableError,
)
from phase1.plans import create_phase1_tasks
from phase1.settings import Settings, load_settings
from phase1.webhooks import verify_signature

__version__ = "0.1.0"

__all__ = [
    "Approval",
    "ConflictError",
    "InvalidInputError",
    "NotFoundError",
    "PermanentJobError",
    "Phase1",
    "Phase1Error",
    "Settings",
    "UnavailableError",
    "__version__",
    "approve",
    "approve_sync",
    "build",
    "create_phase1_tasks",
    "load_settings",
    "reject",
    "verify_signature",
]
