"""The job function and failure callback by the dotted names RQ stores with every Phase 1 job
(`phase1.job.run_phase1_job`, `phase1.job.on_failure`).

These names are a wire contract: a job enqueued by any version of phase1 names them, and a
worker of any version must find them, so a rolling upgrade never strands a job. The code
lives in phase1.jobs.phase1_job and phase1.jobs.failure.
"""

from phase1.jobs.failure import on_failure
from phase1.jobs.phase1_job import run_phase1_job

__all__ = ["on_failure", "run_phase1_job"]
