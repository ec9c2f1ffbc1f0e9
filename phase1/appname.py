"""The `application_name` every phase1 PostgreSQL connection carries, so that
pg_stat_activity (and the lock diagnostics of a timed-out attempt) say who is who:
`phase1 <role> <host>:<pid>`, the role set once by the entry point (worker, http, cli ...)."""

from __future__ import annotations

import os
import socket

_role = "phase1"


def set_role(role: str) -> None:
    """Name what this process is (`worker`, `http`, `cli audit` ...), before it connects."""
    global _role
    _role = f"phase1 {role}".strip()


def application_name() -> str:
    """`phase1 <role> <host>:<pid>`, cut to PostgreSQL's 63 bytes (the pid read now: a
    forked child names itself)."""
    name = f"{_role} {socket.gethostname()}:{os.getpid()}"
    return name.encode()[:63].decode(errors="ignore")


def has_role() -> bool:
    """Whether an entry point named this process's role."""
    return _role != "phase1"
