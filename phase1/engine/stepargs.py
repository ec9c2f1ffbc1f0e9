"""STEP's arguments and answers, typed: the sections the worker builds (Header, Finish,
Given, Next) and what STEP answers. Each section's field names are declared once, here, by
its dataclass; phase1.engine.scripts renders them into STEP's Lua as named fields, so no
argument index is counted by hand in either language."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Any, NamedTuple

# STEP's arguments: sections, each a tag and its fields in the order its dataclass below
# declares them (rendered into the Lua as named fields, so no index is counted by hand).
# Header (always), then Finish, Given and Next, each either present or '-'.


@dataclass(slots=True)
class Header:
    """Who writes, and when: the moment (whole and exact seconds, RQ's timestamp format) and
    the worker's key, name and set of executions."""

    now: int
    now_f: str
    stamp: str
    wkey: str
    name: str
    wexec: str


@dataclass(slots=True)
class Finish:
    """RQ's success bookkeeping for a job (handle_job_success, its Result, cleanup_execution);
    `again`: only if a lost STEP did not do it already (its execution is still in `wip`)."""

    id: str
    job: str
    origin: str
    exec: str
    ttl: int
    ended: str
    began_f: str
    ended_f: str
    value: str
    working: str
    dependents_key: str
    dependencies_key: str
    again: bool = False


@dataclass(slots=True)
class Given:
    """Start a job the worker holds (RQ's prepare_execution and prepare_job_execution writes);
    `again`: only if it is still in its intermediate list (else a lost STEP started it)."""

    id: str
    job: str
    origin: str
    ttl: int
    intermediate: str
    exec: str
    again: bool = False


@dataclass(slots=True, frozen=True)
class TakeFrom:
    """Where and how a STEP takes jobs: the job key prefix, the heartbeat TTL rule (see
    FastWorker.heartbeat_ttl_rule) and the queues with their intermediate lists, in order."""

    job_prefix: str
    default_t: int
    mult: int
    extra: int
    add: int
    forever: int
    queues: tuple[tuple[str, str], ...]

    def to_args(self) -> list[Any]:
        pairs = [part for pair in self.queues for part in pair]
        return [*_TAKE_FROM_GET(self), len(self.queues), *pairs]


@dataclass(slots=True)
class Next:
    """Take the first waiting job of the queues and start it (`take`, unless a job was given)
    with execution id `exec`; then take up to `peeks` more without starting them."""

    exec: str
    take: int  # 1: take and start a job; 0: only peek
    peeks: int
    take_from: TakeFrom

    def to_args(self) -> list[Any]:
        return ["next", *_NEXT_GET(self), *self.take_from.to_args()]


@dataclass(slots=True)
class Step:
    """One STEP call: its sections, built by the worker, flattened by `to_args`."""

    header: Header
    finish: Finish | None = None
    given: Given | None = None
    next: Next | None = None

    def to_args(self) -> list[Any]:
        args: list[Any] = ["header", *_HEADER_GET(self.header)]
        if self.finish is None:
            args.append("-")
        else:
            args += ["refinish" if self.finish.again else "finish", *_FINISH_GET(self.finish)]
        if self.given is None:
            args.append("-")
        else:
            args += ["regiven" if self.given.again else "given", *_GIVEN_GET(self.given)]
        if self.next is None:
            args.append("-")
        else:
            args += self.next.to_args()
        return args

    @property
    def peeks(self) -> int:
        """How many jobs it takes without starting them."""
        return self.next.peeks if self.next is not None else 0

    def replayed(self) -> Step:
        """This STEP to run again when its answer was lost with its connection: its finish and
        its start each only where the lost one did not do them, and no jobs taken (which ones
        the lost one took is unknown: they stay in their intermediate list, for the
        maintenance pass)."""
        finish = replace(self.finish, again=True) if self.finish is not None else None
        given = replace(self.given, again=True) if self.given is not None else None
        return Step(self.header, finish, given, None)


def _names(cls: Any, leave_out: tuple[str, ...] = ("again",)) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in leave_out)


HEADER, FINISH, GIVEN = _names(Header), _names(Finish), _names(Given)
_TAKE_FROM = _names(TakeFrom, ("queues",))
_NEXT_OWN = _names(Next, ("take_from",))
NEXT = (*_NEXT_OWN, *_TAKE_FROM, "n")  # then n (queue, intermediate) pairs
_HEADER_GET, _FINISH_GET = attrgetter(*HEADER), attrgetter(*FINISH)
_GIVEN_GET, _TAKE_FROM_GET = attrgetter(*GIVEN), attrgetter(*_TAKE_FROM)
_NEXT_GET = attrgetter(*_NEXT_OWN)


class StepAnswer(NamedTuple):
    """What STEP answers: the finished job's dependents count (-1: none finished), the job it
    took and started, and the ones it took after it (each a `TakenEntry`)."""

    dependents: int
    taken: TakenEntry | None
    peeked: list[TakenEntry]


class TakenEntry(NamedTuple):
    """A job a script took: its queue's key, its id, its hash (flat) and its key's PTTL."""

    queue_key: bytes
    job_id: bytes
    flat: list[bytes]
    pttl: int


def step_answer(raw: Any) -> StepAnswer:
    dependents, taken, peeked = raw
    return StepAnswer(
        int(dependents),
        TakenEntry(*taken) if taken else None,
        [TakenEntry(*entry) for entry in peeked or ()],
    )
