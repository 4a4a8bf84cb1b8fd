"""What a broker delivery waiting for its acknowledgement is: its task, the lease that
shows its worker alive, and when it is due.

Reads the records kombu's Redis transport keeps of unacknowledged deliveries (the
``unacked`` hash: ``[message, exchange, routing_key]``) and Celery's task message
(protocol 2: ``task`` and ``eta`` in the headers, ``[args, kwargs, embed]`` as the JSON
body). Tested with kombu 5.7.0 and celery 5.7.0; another major version of either may
change these formats, so importing this module then fails.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import celery
import kombu

from workers.lease import lease_key, step_lease

TESTED_MAJOR = {"kombu": 5, "celery": 5}
if (kombu.VERSION.major, celery.VERSION.major) != (TESTED_MAJOR["kombu"],
                                                   TESTED_MAJOR["celery"]):
    raise ImportError(
        f"workers.deliveries reads the records of kombu {TESTED_MAJOR['kombu']}.x and the "
        f"messages of celery {TESTED_MAJOR['celery']}.x; found kombu {kombu.__version__}, "
        f"celery {celery.__version__}: check the formats, then update TESTED_MAJOR")

RUN_JOB = "chorus.run_job"
MODEL_CALL = "chorus.model_call"


@dataclass(frozen=True)
class Delivery:
    tag: str
    task: str
    # The Redis key its task holds while it runs; None for a task that takes no lease
    # (a chord body, a health probe): only the visibility timeout tells it dead.
    lease: str | None
    eta: float | None  # epoch seconds: a retry's countdown; no worker runs it before


def _run_job_lease(args: list[Any], kwargs: dict[str, Any]) -> str:
    job_id = args[0] if args else kwargs["job_id"]
    return lease_key(str(job_id))


def _model_call_lease(args: list[Any], kwargs: dict[str, Any]) -> str:
    job_id = args[0] if args else kwargs["job_id"]
    step = args[1] if len(args) > 1 else kwargs["step"]
    return lease_key(step_lease(str(job_id), str(step["key"])))


# Each leased task's lease, from its arguments: as ``run_job`` and ``run_step`` name it.
LEASES: dict[str, Callable[[list[Any], dict[str, Any]], str]] = {
    RUN_JOB: _run_job_lease,
    MODEL_CALL: _model_call_lease,
}


def parse(tag: str, record: bytes | str) -> Delivery:
    """The delivery ``tag`` from its record; a record it cannot read takes no lease (the
    visibility timeout stays its fallback), never an exception."""
    try:
        message = json.loads(record)[0]
        headers = message.get("headers") or {}
        task = str(headers.get("task") or "")
    except (ValueError, TypeError, LookupError, AttributeError):
        return Delivery(tag, "", None, None)
    eta = _eta(headers.get("eta"))
    lease_of = LEASES.get(task)
    if lease_of is None:
        return Delivery(tag, task, None, eta)
    try:
        args, kwargs = _arguments(message)
        return Delivery(tag, task, lease_of(args, kwargs), eta)
    except (ValueError, TypeError, LookupError, binascii.Error):
        return Delivery(tag, task, None, eta)


def _arguments(message: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    body = message["body"]
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs = json.loads(body)[:2]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise TypeError("not a protocol 2 task body")
    return args, kwargs


def _eta(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None
