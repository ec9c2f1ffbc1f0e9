"""A fast RQ worker: RQ's data model, written in fewer round trips.

`FastWorker` is a drop-in `rq.SimpleWorker`: every key, field, registry entry and status it
writes is the one RQ's own worker writes, so `rq info`, rq-dashboard and plain `rq worker`s
beside it stay correct. A job may hand it Redis writes to send with its success bookkeeping
(`after_success`), and schedule short callbacks on the process's one timer thread (`timer`).
`PutsBackLeftBehind` puts jobs a dead worker took off a queue back at its front.

This package imports nothing of phase1 outside itself. Every private RQ name it relies on is
reached through `phase1.engine.rqcompat`, which also says whether the installed RQ is the one
it was tested with (on another, FastWorker runs RQ's own paths). Begin at worker.py, then
pipeline.py (which owns held.py and sender.py), scripts.py and stepargs.py. Subclasses pause
queues with `FastWorker.queues_to_take`. Names load on first use, so importing one part
loads no other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phase1.engine.leftbehind import PutsBackLeftBehind, put_back_left_behind
    from phase1.engine.success_writes import after_success
    from phase1.engine.timer import timer
    from phase1.engine.worker import FastWorker

_LAZY = {
    "FastWorker": "phase1.engine.worker",
    "PutsBackLeftBehind": "phase1.engine.leftbehind",
    "put_back_left_behind": "phase1.engine.leftbehind",
    "after_success": "phase1.engine.success_writes",
    "timer": "phase1.engine.timer",
}

__all__ = ["FastWorker", "PutsBackLeftBehind", "after_success", "put_back_left_behind", "timer"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'phase1.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
