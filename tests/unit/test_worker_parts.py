"""The parts of phase1's workers that need no server: maintenance, the interrupt, deadlines."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from phase1.runtime import shutdown
from phase1.runtime.maintenance import Maintenance


def test_maintenance_runs_each_task_at_its_interval_and_survives_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: dict[str, int] = {"fast": 0, "broken": 0}

    def broken() -> None:
        runs["broken"] += 1
        raise RuntimeError("Redis is down")

    maintenance = Maintenance()
    maintenance.add("fast", 0.05, lambda: runs.__setitem__("fast", runs["fast"] + 1))
    maintenance.add("broken", 0.05, broken)
    with caplog.at_level(logging.WARNING, logger="phase1.runtime.maintenance"):
        maintenance.start()
        ran = _within(10, lambda: runs["fast"] >= 3 and runs["broken"] >= 3)
        maintenance.stop()
    assert ran, runs  # a failing task is tried again
    assert "maintenance task broken failed: Redis is down" in caplog.text
    stopped_at = dict(runs)
    time.sleep(0.2)
    assert runs == stopped_at  # stopped means stopped


def test_interrupt_raises_only_inside_a_job() -> None:
    shutdown.install_interrupt_handler()
    try:
        os.kill(os.getpid(), shutdown.INTERRUPT_SIGNAL)  # outside a job: remembered, no raise
        with pytest.raises(shutdown.ShutdownInterrupt), shutdown.interruptible():
            pytest.fail("a job must not start once an interrupt is due")
        shutdown.install_interrupt_handler()  # a new work loop forgets old interrupts
        with pytest.raises(shutdown.ShutdownInterrupt), shutdown.interruptible():
            threading.Timer(0.05, shutdown.interrupt_main_thread).start()
            time.sleep(5)  # a blocking call: the real signal breaks it
    finally:
        signal.signal(shutdown.INTERRUPT_SIGNAL, signal.SIG_DFL)


def test_the_interrupt_is_not_an_exception_a_job_would_swallow() -> None:
    assert not issubclass(shutdown.ShutdownInterrupt, Exception)
    assert issubclass(shutdown.ShutdownInterrupt, KeyboardInterrupt)  # psycopg cancels on it
    assert shutdown.is_interrupt(shutdown.ShutdownInterrupt)
    assert not shutdown.is_interrupt(KeyboardInterrupt) and not shutdown.is_interrupt(None)


def test_deadline_runs_its_steps_in_order_unless_cancelled() -> None:
    seen: list[str] = []
    deadline = shutdown.Deadline(
        [(0.05, lambda: seen.append("interrupt")), (0.05, lambda: seen.append("kill"))]
    )
    deadline.start()
    assert _within(10, lambda: len(seen) == 2), seen
    assert seen == ["interrupt", "kill"]
    seen.clear()
    cancelled = shutdown.Deadline([(0.2, lambda: seen.append("interrupt"))])
    cancelled.start()
    cancelled.cancel()
    time.sleep(0.4)
    assert seen == []


def test_remembered_serializers_answer_as_rq_does() -> None:
    """phase1.engine.rqspeedups.resolve_serializer: RQ's answers and errors, looked up once."""
    import rq.job
    import rq.serializers
    from rq.serializers import JSONSerializer

    from phase1.engine import rqspeedups

    rq_resolve = rqspeedups._rq_resolve_serializer
    for given in (None, JSONSerializer, "rq.serializers.JSONSerializer"):
        assert rqspeedups.resolve_serializer(given) is rq_resolve(given)
        assert rqspeedups.resolve_serializer(given) is rq_resolve(given)  # from the memory
    with pytest.raises(NotImplementedError):
        rqspeedups.resolve_serializer(object())
    rqspeedups.speed_up_rq()
    assert rq.job.resolve_serializer is rqspeedups.resolve_serializer
    assert rq.serializers.resolve_serializer is rq_resolve  # RQ's own stays as it was


def test_rqs_timestamps_read_as_rq_reads_them() -> None:
    """rqparts.str_to_date (fromisoformat for RQ's own format) answers as RQ's does."""
    from rq.utils import str_to_date as rq_str_to_date

    from phase1.engine import rqspeedups

    for text in (
        "2026-11-28T18:32:10.410070Z",
        b"2026-11-28T18:32:10.000000Z",
        "2026-11-28T18:32:10Z",  # RQ's older format: RQ's own parser
    ):
        assert rqspeedups.str_to_date(text) == rq_str_to_date(text)
        assert rqspeedups.str_to_date(text).tzinfo == rq_str_to_date(text).tzinfo
    for bad in ("", "2026-11-28 18:32:10.410070Z", "not a dateXXXXXXXXXXXXXXXXXZ"):
        with pytest.raises(ValueError):
            rq_str_to_date(bad)
        with pytest.raises(ValueError):
            rqspeedups.str_to_date(bad)


def test_the_lanes_timestamps_are_rqs_format() -> None:
    from datetime import UTC, datetime

    from rq.utils import utcformat

    from phase1.engine import rqformat

    for moment in (1795890730.410070, 1795890730.0, 1.5):
        when = datetime.fromtimestamp(moment, UTC)
        assert rqformat.stamp(moment) == utcformat(when)
        assert rqformat.utc(when) == utcformat(when)


def test_the_alarm_penalty_times_a_job_out_and_ignores_a_stray_alarm() -> None:
    """FastWorker's SIGALRM timeout: as RQ's, with its handler kept between jobs."""
    import os
    import signal
    import time

    from rq.timeouts import JobTimeoutException

    from phase1.engine.rqspeedups import AlarmDeathPenalty, _on_alarm

    try:
        with pytest.raises(JobTimeoutException), AlarmDeathPenalty(1, JobTimeoutException):
            time.sleep(3)
        assert signal.getsignal(signal.SIGALRM) is _on_alarm
        assert signal.alarm(0) == 0  # nothing left armed
        os.kill(os.getpid(), signal.SIGALRM)  # between jobs: ignored, not fatal
        time.sleep(0.05)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # someone else's handler meanwhile
        with AlarmDeathPenalty(5, JobTimeoutException):
            assert signal.getsignal(signal.SIGALRM) is _on_alarm
        with AlarmDeathPenalty(5, JobTimeoutException):
            pass  # a quick job: no timeout
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _within(seconds: float, predicate: Callable[[], bool]) -> bool:
    """Whether `predicate` comes true before `seconds` have passed (polled)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
