"""The mock's run-time state: latency profiles, injected faults, counters, recorded requests."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

FAULT_KINDS = ("status", "hang", "disconnect", "malformed")
# Longest a "hang" fault holds a connection, so a forgotten fault cannot leak greenlets forever.
HANG_LIMIT_S = 600.0
RECORDED_REQUESTS = 200


class ConfigError(ValueError):
    """A control request the mock cannot apply; answered with HTTP 400."""


@dataclass(frozen=True)
class Profile:
    ttft_ms: float
    token_ms: float
    tokens: int


# Rough shapes of the real models: big models start slower and type slower.
DEFAULT_PROFILES: dict[str, Profile] = {
    "gpt-5.2": Profile(ttft_ms=250, token_ms=15, tokens=50),
    "gpt-5-mini": Profile(ttft_ms=80, token_ms=6, tokens=30),
    "claude-sonnet-4-5": Profile(ttft_ms=300, token_ms=20, tokens=55),
    "claude-haiku-4-5": Profile(ttft_ms=100, token_ms=8, tokens=35),
    "gemini-3-flash": Profile(ttft_ms=60, token_ms=5, tokens=40),
    "gemini-3-pro": Profile(ttft_ms=280, token_ms=18, tokens=60),
    "deepseek-chat": Profile(ttft_ms=200, token_ms=30, tokens=45),
    "llama-3.3-70b-versatile": Profile(ttft_ms=40, token_ms=5, tokens=20),
}
GENERIC_PROFILE = Profile(ttft_ms=100, token_ms=10, tokens=30)


@dataclass
class Fault:
    kind: str
    status: int = 500
    retry_after: float | None = None
    # For disconnect / malformed / hang / in-stream status: the tokens sent before the fault.
    after_tokens: int | None = None
    # Calls left before the fault clears itself; None means until reset.
    times: int | None = None

    @classmethod
    def parse(cls, raw: Any) -> Fault:
        if not isinstance(raw, dict):
            raise ConfigError("fault must be an object or null")
        kind = raw.get("kind")
        if kind not in FAULT_KINDS:
            raise ConfigError(f"fault.kind must be one of {', '.join(FAULT_KINDS)}")
        try:
            status = int(raw.get("status", 500))
            retry = raw.get("retry_after")
            after = raw.get("after_tokens")
            times = raw.get("times")
            fault = cls(
                kind=kind,
                status=status,
                retry_after=None if retry is None else float(retry),
                after_tokens=None if after is None else int(after),
                times=None if times is None else int(times),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad fault field: {exc}") from exc
        if not 400 <= fault.status <= 599:
            raise ConfigError("fault.status must be an HTTP error status (400-599)")
        if fault.times is not None and fault.times < 1:
            raise ConfigError("fault.times must be at least 1")
        return fault


@dataclass
class Override:
    """What ``POST /_mock/config`` set for one model name (or ``*``)."""

    ttft_ms: float | None = None
    token_ms: float | None = None
    tokens: int | None = None
    reply: str | None = None
    replies: deque[str] = field(default_factory=deque)
    fault: Fault | None = None

    def describe(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("replies", "fault")}
        out["replies"] = list(self.replies)
        out["fault"] = None if self.fault is None else asdict(self.fault)
        return out


@dataclass(frozen=True)
class CallSettings:
    """Everything one wire call needs to know, resolved once when it arrives."""

    profile: Profile
    reply: str | None
    fault: Fault | None


class MockState:
    """Shared by every request greenlet; the lock keeps it sane under real threads too."""

    def __init__(self, speed: float = 1.0) -> None:
        # speed > 1 shortens every delay, for test suites that want the real shapes, faster.
        self.speed = speed if speed > 0 else 1.0
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.overrides: dict[str, Override] = {}
            self.calls: Counter[str] = Counter()
            self.completed: Counter[str] = Counter()
            self.client_disconnects: Counter[str] = Counter()
            self.active_streams = 0
            self.requests: deque[dict[str, Any]] = deque(maxlen=RECORDED_REQUESTS)

    def configure(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ConfigError("body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigError("model is required (an upstream model name or '*')")
        unknown = set(body) - {
            "model",
            "ttft_ms",
            "token_ms",
            "tokens",
            "reply",
            "replies",
            "fault",
        }
        if unknown:
            raise ConfigError(f"unknown fields: {', '.join(sorted(unknown))}")
        with self._lock:
            ov = self.overrides.setdefault(model, Override())
            try:
                for name in ("ttft_ms", "token_ms"):
                    if name in body:
                        value = body[name]
                        setattr(ov, name, None if value is None else max(0.0, float(value)))
                if "tokens" in body:
                    ov.tokens = None if body["tokens"] is None else max(1, int(body["tokens"]))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"bad number: {exc}") from exc
            if "reply" in body:
                if body["reply"] is not None and not isinstance(body["reply"], str):
                    raise ConfigError("reply must be a string or null")
                ov.reply = body["reply"]
            if "replies" in body:
                replies = body["replies"] or []
                if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
                    raise ConfigError("replies must be a list of strings")
                ov.replies = deque(replies)
            if "fault" in body:
                ov.fault = None if body["fault"] is None else Fault.parse(body["fault"])
            return {"model": model, **ov.describe()}

    def begin_call(self, model: str, path: str, body: Any, headers: dict[str, str]) -> CallSettings:
        """Count and record one wire call, and resolve its profile, reply and fault."""
        with self._lock:
            self.calls[model] += 1
            self.requests.append(
                {"model": model, "path": path, "body": body, "headers": headers, "ts": time.time()}
            )
            specific = self.overrides.get(model)
            wildcard = self.overrides.get("*")
            chain = [ov for ov in (specific, wildcard) if ov is not None]
            base = DEFAULT_PROFILES.get(model, GENERIC_PROFILE)
            profile = replace(
                base,
                ttft_ms=_first([ov.ttft_ms for ov in chain], base.ttft_ms) / self.speed,
                token_ms=_first([ov.token_ms for ov in chain], base.token_ms) / self.speed,
                tokens=_first([ov.tokens for ov in chain], base.tokens),
            )
            reply = None
            for ov in chain:
                if ov.replies:
                    reply = ov.replies.popleft()
                    break
            if reply is None:
                reply = _first([ov.reply for ov in chain], None)
            fault = None
            for ov in chain:
                if ov.fault is not None:
                    fault = replace(ov.fault)
                    if ov.fault.times is not None:
                        ov.fault.times -= 1
                        if ov.fault.times <= 0:
                            ov.fault = None
                    break
            return CallSettings(profile=profile, reply=reply, fault=fault)

    def stream_opened(self) -> None:
        with self._lock:
            self.active_streams += 1

    def stream_closed(self, model: str, outcome: str) -> None:
        with self._lock:
            self.active_streams -= 1
        self.count(model, outcome)

    def count(self, model: str, outcome: str) -> None:
        """Outcome is ``completed``, ``client_disconnect`` or ``fault`` (not counted)."""
        with self._lock:
            if outcome == "completed":
                self.completed[model] += 1
            elif outcome == "client_disconnect":
                self.client_disconnects[model] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self.calls),
                "active_streams": self.active_streams,
                "client_disconnects": dict(self.client_disconnects),
                "completed": dict(self.completed),
            }

    def recorded(self, model: str | None, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            items = [r for r in self.requests if model is None or r["model"] == model]
        return items[-limit:] if limit > 0 else []

    def overrides_view(self) -> dict[str, Any]:
        with self._lock:
            return {name: ov.describe() for name, ov in self.overrides.items()}


def _first(values: list[Any], default: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return default
