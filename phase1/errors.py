"""Phase1Error and its tree; adapters translate driver errors into these at the edges."""

from __future__ import annotations


class Phase1Error(Exception):
    """Raised for every failure phase1 reports to its users."""


class ConfigError(Phase1Error):
    """Raised when a setting is missing or invalid."""


class NotFoundError(Phase1Error):
    """Raised when a plan, job or DLQ entry does not exist."""


class ConflictError(Phase1Error):
    """Raised when the request contradicts the current state (approving a rejected plan)."""


class InvalidInputError(Phase1Error):
    """Raised when input fails validation before anything is written."""


class UnavailableError(Phase1Error):
    """Raised when Redis or PostgreSQL cannot be reached in time."""


class PermanentJobError(Phase1Error):
    """Raised inside a job when retrying cannot help (plan gone, invalid analysis or payload)."""


class AttemptSuperseded(Phase1Error):
    """Raised inside a job whose attempt another worker took over (it was given up for dead)."""


class JobCancelled(Phase1Error):
    """Raised inside a job an operator cancelled (`phase1 cancel`): it ends without a retry."""
