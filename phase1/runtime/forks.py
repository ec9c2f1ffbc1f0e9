"""What a worker's forked children inherit, made safe: RQ's scheduler process (forked by
every worker) dies with its worker and drops the worker's Redis sockets, so a killed worker
leaves no process holding its dequeue or its PostgreSQL locks. Work horses are left out: one
whose worker was killed still finishes its job."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator

from phase1.context import redis_pools

PR_SET_PDEATHSIG = 1  # linux/prctl.h

_forking_horse = False
_fork_hook_installed = False


def _die_with_parent() -> None:
    """In a child the worker forks (RQ's scheduler), ask Linux for SIGTERM when the worker
    dies: an orphaned scheduler would keep the worker's inherited PostgreSQL sockets open, so
    a killed worker's open transaction would hold its locks until the server's idle timeout.
    Work horses are left out: one whose worker was killed still finishes its job."""
    if _forking_horse or not sys.platform.startswith("linux"):
        return
    _close_inherited_redis_sockets()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _close_inherited_redis_sockets() -> None:
    """Close (in this child only: redis-py shuts a socket down only in the process that
    opened it) the worker's Redis sockets. While a copy stays open, Redis does not see a
    killed worker go: it would serve the dead worker's blocking dequeue a job that then
    reaches nobody. The child's clients open connections of their own."""
    for pool in list(redis_pools):
        connections = [
            *getattr(pool, "_available_connections", []),
            *getattr(pool, "_in_use_connections", []),
        ]
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.disconnect()


def install_fork_hook() -> None:
    """Once per process: every child forked from now on dies with its worker."""
    global _fork_hook_installed
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_die_with_parent)
        _fork_hook_installed = True


@contextlib.contextmanager
def forking_horse() -> Iterator[None]:
    """A work horse is forked in this block: it keeps its worker's sockets and outlives it."""
    global _forking_horse
    _forking_horse = True
    try:
        yield
    finally:
        _forking_horse = False
