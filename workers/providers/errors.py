"""Provider failures, classified once so routing never parses messages.

Exception tree::

    ProviderError                 retryable?  raw body kept
    ├── UpstreamStatusError       by status   yes
    │   ├── RateLimited (429)     yes (+ retry_after)
    │   ├── ServerError (5xx)     yes
    │   ├── AuthError (401/403)   no
    │   ├── QuotaExhausted        no (billing quota, not a burst: waiting will not help)
    │   └── BadRequest (other 4xx) no
    ├── UpstreamTimeout           yes
    ├── UpstreamConnectError      yes
    └── StreamBroken              yes (malformed or truncated stream; partial text kept)
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping


class ProviderError(Exception):
    retryable: bool = True
    code: str = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        raw_body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.raw_body = raw_body
        self.retry_after = retry_after
        # Text already streamed when a stream failed, so a fallback can continue the answer.
        self.partial_text = ""

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"code": self.code, "message": self.message}
        if self.status is not None:
            out["status"] = self.status
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


class UpstreamStatusError(ProviderError):
    code = "upstream_status"


class RateLimited(UpstreamStatusError):
    code = "upstream_rate_limited"


class ServerError(UpstreamStatusError):
    code = "upstream_server_error"


class AuthError(UpstreamStatusError):
    retryable = False
    code = "upstream_auth"


class BadRequest(UpstreamStatusError):
    retryable = False
    code = "upstream_bad_request"


class QuotaExhausted(UpstreamStatusError):
    retryable = False
    code = "upstream_quota_exhausted"


class UpstreamTimeout(ProviderError):
    code = "upstream_timeout"


class UpstreamConnectError(ProviderError):
    code = "upstream_connect"


class StreamBroken(ProviderError):
    code = "upstream_stream_broken"


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date; None if absent."""
    lower = {k.lower(): v for k, v in headers.items()}
    raw_ms = lower.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = lower.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_class(status: int) -> type[UpstreamStatusError]:
    if status == 429:
        return RateLimited
    if status >= 500 or status == 408:
        return ServerError
    if status in (401, 403):
        return AuthError
    return BadRequest


def error_for_status(
    status: int,
    raw_body: str,
    headers: Mapping[str, str],
    *,
    cls: type[UpstreamStatusError] | None = None,
    detail: str = "",
) -> UpstreamStatusError:
    """Map an HTTP status to the tree above; adapters refine with ``cls`` from the body's
    error type. ``detail`` is that type, never the provider's message (it may echo keys)."""
    chosen = cls or status_class(status)
    message = f"provider answered HTTP {status}" + (f" ({detail})" if detail else "")
    return chosen(
        message, status=status, raw_body=raw_body[:4000], retry_after=retry_after_seconds(headers)
    )
