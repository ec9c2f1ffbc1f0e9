"""The operator's web console, served under /console/ by the same Bottle app as the API:
server-rendered pages of the queue, jobs, the DLQ, plans and workers, live by polling, with
requeue, cancel, pause and resume through the CLI's own service functions."""

from phase1.http.console.routes import install

__all__ = ["install"]
