"""phase1's worker class by the dotted name the README documents for plain RQ:
`rq worker -w phase1.worker.Phase1Worker`. The code lives in phase1.runtime.worker."""

from phase1.runtime.worker import Phase1Worker

__all__ = ["Phase1Worker"]
