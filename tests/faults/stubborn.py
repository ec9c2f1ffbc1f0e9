"""A job that ignores phase1's interrupt, as one stuck outside Python would."""

from __future__ import annotations

import signal
import time

from phase1.runtime.shutdown import INTERRUPT_SIGNAL


def stubborn_job(seconds: float) -> str:
    signal.pthread_sigmask(signal.SIG_BLOCK, {INTERRUPT_SIGNAL})
    time.sleep(seconds)
    return "done"
