"""Run `phase1 ...` or `rq ...` in this process, counting its Redis round trips.

`python -m bench.counted OUT.json phase1 worker --burst` — every write of a request to a Redis
socket (one command, or one whole pipeline) counts as a round trip; forked work horses and
RQ's scheduler process add to the same shared counter. OUT.json gets the total at exit.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import sys
from pathlib import Path
from typing import Any

from redis.connection import AbstractConnection


def main() -> None:
    out, program, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    counter = multiprocessing.Value("q", 0)  # shared memory, so forks count here too
    original = AbstractConnection.send_packed_command

    def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        with counter.get_lock():
            counter.value += 1
        original(self, command, check_health)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    atexit.register(lambda: out.write_text(json.dumps({"round_trips": counter.value})))
    sys.argv = [program, *argv]
    if program == "phase1":
        from phase1.cli import main as entry
    else:
        from rq.cli import main as entry
    entry()


if __name__ == "__main__":
    main()
