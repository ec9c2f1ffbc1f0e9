"""phase1: asynchronous, reliable Phase 1 task creation for plan approvals, on RQ.

The public names are imported on first use (PEP 562): `import phase1` alone costs nothing, so
a worker or a one-off command pays only for the modules it runs (`phase1 worker` starts in a
fraction of the time the approval, events and webhook modules together take to import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phase1.context import Phase1, build
    from phase1.domain.phase1_tasks import create_phase1_tasks
    from phase1.errors import (
        ConflictError,
        InvalidInputError,
        NotFoundError,
        PermanentJobError,
        Phase1Error,
        UnavailableError,
    )
    from phase1.jobs.approval import Approval, approve, approve_sync, reject
    from phase1.jobs.webhooks import verify_signature
    from phase1.settings import Settings, load_settings

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "Approval": "phase1.jobs.approval",
    "approve": "phase1.jobs.approval",
    "approve_sync": "phase1.jobs.approval",
    "reject": "phase1.jobs.approval",
    "Phase1": "phase1.context",
    "build": "phase1.context",
    "ConflictError": "phase1.errors",
    "InvalidInputError": "phase1.errors",
    "NotFoundError": "phase1.errors",
    "PermanentJobError": "phase1.errors",
    "Phase1Error": "phase1.errors",
    "UnavailableError": "phase1.errors",
    "create_phase1_tasks": "phase1.domain.phase1_tasks",
    "Settings": "phase1.settings",
    "load_settings": "phase1.settings",
    "verify_signature": "phase1.jobs.webhooks",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:  # also how `from phase1 import plans` falls back to the submodule
        raise AttributeError(f"module 'phase1' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
