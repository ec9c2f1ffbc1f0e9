"""The webhook delivery job and its failure callback by the dotted names RQ stores with every
delivery (`phase1.webhooks.deliver`, `phase1.webhooks.on_delivery_failure`), and
`verify_signature` where the README documents it.

These names are a wire contract kept across versions; the code lives in phase1.jobs.webhooks.
"""

from phase1.jobs.webhooks import deliver, on_delivery_failure, verify_signature

__all__ = ["deliver", "on_delivery_failure", "verify_signature"]
