"""phase1.engine.rqcompat: every private RQ name it reaches exists in the installed RQ and is
listed, and `supported()` follows `rq.__version__`'s minor."""

from __future__ import annotations

import inspect
import re

import pytest
import rq
import rq.job
import rq.queue
import rq.serializers
import rq.timeouts
import rq.utils
import rq.worker

from phase1.engine import rqcompat

OWNERS = {
    "BaseWorker": rq.worker.BaseWorker,
    "Job": rq.job.Job,
    "Queue": rq.queue.Queue,
    "UnixSignalDeathPenalty": rq.timeouts.UnixSignalDeathPenalty,
    "rq.serializers": rq.serializers,
    "rq.utils": rq.utils,
}


def test_every_private_it_touches_is_listed() -> None:
    source = inspect.getsource(rqcompat)
    body = source[source.index("# -- the worker") :]
    touched = set(re.findall(r"\.(_[a-z][a-z_]*)\b", body))
    listed = {name.rsplit(".", 1)[1] for name in rqcompat.PRIVATE_NAMES}
    assert touched <= listed, touched - listed


def test_every_listed_name_exists_in_the_installed_rq() -> None:
    """A method or module function is there; an attribute is set by its class's own code."""
    for name in rqcompat.PRIVATE_NAMES:
        owner, attr = name.rsplit(".", 1)
        target = OWNERS[owner]
        if not hasattr(target, attr):
            assert f"self.{attr}" in inspect.getsource(target), name


@pytest.mark.parametrize(
    ("version", "expected"),
    [("3.0.0", True), ("3.0.7", True), ("3.0.0rc1", True), ("3.1.0", False), ("2.12.0", False)],
)
def test_supported_follows_rqs_version(
    monkeypatch: pytest.MonkeyPatch, version: str, expected: bool
) -> None:
    monkeypatch.setattr(rq, "__version__", version)
    assert rqcompat.installed() == version
    assert rqcompat.supported() is expected


def test_the_tested_minor_is_the_installed_one_and_the_pin() -> None:
    assert rqcompat.minor(rq.__version__) == rqcompat.TESTED_RQ


def test_rq_is_not_patched_when_untested(monkeypatch: pytest.MonkeyPatch) -> None:
    from phase1.engine import rqspeedups

    monkeypatch.setattr(rq.job, "str_to_date", rqspeedups._rq_str_to_date)
    monkeypatch.setattr(rq.job, "resolve_serializer", rqspeedups._rq_resolve_serializer)
    monkeypatch.setattr(rq, "__version__", "3.9.0")
    rqspeedups.speed_up_rq()
    assert rq.job.str_to_date is rqspeedups._rq_str_to_date
    assert rq.job.resolve_serializer is rqspeedups._rq_resolve_serializer
    monkeypatch.setattr(rq, "__version__", "3.0.0")
    rqspeedups.speed_up_rq()
    assert rq.job.str_to_date is rqspeedups.str_to_date
