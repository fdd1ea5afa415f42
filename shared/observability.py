"""Logger and tracer, created once. Powertools' logger writes structured JSON; the tracer is backed
by aws-xray-sdk and disables itself outside Lambda."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Tracer

# The service name comes from POWERTOOLS_SERVICE_NAME: per function on AWS, "nacelle-local" locally.
logger = Logger()
tracer = Tracer()


def correlate(**ids: str | int | None) -> None:
    """Attach correlation ids (dataset hash, job name, model version) to this thread's following log lines.

    Thread-local, so the local stack's concurrent deliveries never mix their ids.
    """
    logger.thread_safe_append_keys(**{k: v for k, v in ids.items() if v is not None})


def new_invocation() -> None:
    """Forget the previous event's correlation ids (a Lambda container or a bus worker is reused)."""
    logger.thread_safe_clear_keys()
