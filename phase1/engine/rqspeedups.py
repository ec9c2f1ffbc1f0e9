"""Parts of RQ that a worker calls for every job, made cheaper with the same answers:
serializer lookup, RQ's timestamp parsing, the SIGALRM timeout, and RQ's per-job log lines
at DEBUG. phase1.engine.worker's FastWorker uses them."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # C module under signal (no stubs)
import contextlib
import logging
import signal
from datetime import datetime
from types import FrameType
from typing import Any

import rq.job
import rq.queue
import rq.registry
import rq.results
import rq.serializers
import rq.utils
import rq.worker.base
from rq.timeouts import UnixSignalDeathPenalty

from phase1.engine import rqcompat

_rq_resolve_serializer = rq.serializers.resolve_serializer
_resolved: dict[Any, Any] = {}


def resolve_serializer(serializer: Any = None) -> Any:
    """RQ's resolve_serializer, remembered per serializer. RQ calls it for every Job, Queue,
    registry and Result it builds (about eight times a job), and its check against the
    runtime `Serializer` protocol is slow in Python 3.11 (bench/RESULTS.md, engine costs)."""
    try:
        return _resolved[serializer]
    except KeyError:
        pass
    except TypeError:  # unhashable: not remembered
        return _rq_resolve_serializer(serializer)
    resolved = _rq_resolve_serializer(serializer)  # a bad one raises, and is not remembered
    if len(_resolved) < 64:
        _resolved[serializer] = resolved
    return resolved


_rq_str_to_date = rq.utils.str_to_date


def str_to_date(date_str: bytes | str) -> datetime:
    """RQ's str_to_date, for RQ's own timestamp format (2026-11-28T18:32:10.410070Z) in C:
    Job.restore reads two or three a job, and strptime is slow (bench/RESULTS.md)."""
    text = date_str.decode() if isinstance(date_str, bytes) else date_str
    if len(text) == 27 and text[10] == "T" and text[26] == "Z":
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text)  # aware, UTC: as RQ's
    return _rq_str_to_date(date_str)


def speed_up_rq() -> None:
    """Have RQ's modules use resolve_serializer and str_to_date above (same answers, same
    errors); never on an RQ other than the one they were checked against."""
    if not rqcompat.supported():
        return
    for module in (rq.job, rq.queue, rq.registry, rq.results, rq.worker.base):
        if getattr(module, "resolve_serializer", None) is _rq_resolve_serializer:
            module.resolve_serializer = resolve_serializer  # type: ignore[attr-defined]
    if getattr(rq.job, "str_to_date", None) is _rq_str_to_date:
        rq.job.str_to_date = str_to_date  # type: ignore[attr-defined]


# RQ's per-job INFO messages (format strings), logged at DEBUG here.
_PER_JOB_MESSAGES = frozenset(
    {
        "Worker %s: %s: %s",
        "Worker %s: %s: %s (%s)",
        "Successfully completed job %s in %ss on worker %s",
        "Successfully completed %s job in %ss on worker %s",
        "Worker %s: job %s result discarded immediately",
        "Worker %s: job %s result is kept for %s seconds",
    }
)


class JobLinesAtDebug:
    """RQ's worker logger, with the per-job INFO lines demoted to DEBUG."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg in _PER_JOB_MESSAGES:
            self._log.debug(msg, *args, **kwargs)
        else:
            self._log.info(msg, *args, **kwargs)


_SIGALRM = int(signal.SIGALRM)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    penalty = AlarmDeathPenalty.current
    if penalty is not None:  # a stray SIGALRM between jobs is ignored
        penalty.handle_death_penalty(signum, frame)  # type: ignore[no-untyped-call]


class AlarmDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM timeout, its handler left installed between jobs: RQ installs it and puts
    SIG_DFL back for every job, two signal.signal calls (bench/RESULTS.md). Here
    a job only sets and clears the alarm; the handler raises for the penalty now current."""

    current: AlarmDeathPenalty | None = None

    def setup_death_penalty(self) -> None:
        AlarmDeathPenalty.current = self
        # _signal's getsignal: signal.getsignal's wrapper tries to make the handler an enum
        # member first, and that ValueError costs a little every job here.
        if _signal.getsignal(_SIGALRM) is not _on_alarm:  # first, or replaced since
            signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(rqcompat.penalty_timeout(self))

    def cancel_death_penalty(self) -> None:
        signal.alarm(0)
        AlarmDeathPenalty.current = None
