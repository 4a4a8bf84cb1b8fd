"""A fake LLM provider speaking the OpenAI, Anthropic and Gemini wire formats.

Run it with ``python -m workers.providers.mock``; tests and benchmarks drive its latency
and faults at run time through ``/_mock/*``. Nothing heavy is imported here so that
``__main__`` can monkey-patch with gevent before Flask and the socket module load.
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The mock as a WSGI (Flask) app, for in-process use; see ``server.create_app``."""
    from workers.providers.mock.server import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
