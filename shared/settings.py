"""Process settings read once from the environment, with one-machine defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _default_data_dir() -> Path:
    return Path(os.environ.get("CHORUS_DATA_DIR", Path.cwd() / "var"))


@dataclass(frozen=True)
class Settings:
    port: int = 8000
    database_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""
    models_path: Path = PACKAGE_DIR / "models.toml"
    mock_url: str = "http://127.0.0.1:8100"
    secret_key: str = ""
    max_body_bytes: int = 1_000_000
    # Replay buffers outlive a job by this much so late or reconnecting clients catch up.
    replay_ttl_s: int = 3600
    replay_ttl_after_done_s: int = 600
    # A busy worker batches the events of this many milliseconds into one Redis write; an
    # event after a quiet spell goes out at once.
    publish_linger_ms: float = 2.0
    # A worker carrying at least ``stream_pace_from`` streams reads each at most once
    # per ``stream_pace_ms`` after its first token (0: read every token as it comes).
    stream_pace_ms: float = 20.0
    stream_pace_from: int = 8
    # Provider call limits.
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    worker_concurrency: int = 200
    # Circuit breaker per model (shared through Redis) and the health probe schedule.
    breaker_failures: int = 3
    breaker_open_s: float = 30.0
    breaker_probe_s: float = 60.0
    health_interval_s: float = 60.0
    # Seconds before the broker hands an unacknowledged task (a dead worker's) to another.
    broker_visibility_timeout_s: int = 300
    # Seconds a stopping process gives its work (SIGTERM): an API process's requests in
    # flight, a worker's running jobs; then a worker hands the rest back to the queue.
    # 20 leaves a stop's own few seconds inside Kubernetes' default 30 s grace period.
    drain_s: float = 20.0
    # The reconciler (workers/reconciler.py): seconds between passes; how long a job may
    # be queued, or running without a lease, before a missing delivery counts as lost;
    # and how long a job of each queue may take in all before it is ended as failed.
    reconcile_s: float = 5.0
    reconcile_grace_s: float = 15.0
    job_deadline_s: float = 3600.0
    batch_job_deadline_s: float = 86400.0
    # Rate limits: every limit is multiplied by the scale; `rate_limits` overrides single
    # limits ("chat=90,ip.free=120"); X-Forwarded-For is trusted through this many proxies.
    rate_limit_scale: float = 1.0
    rate_limits: str = ""
    trusted_proxies: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def from_env() -> Settings:
    data_dir = _default_data_dir()
    database_url = os.environ.get("CHORUS_DATABASE_URL") or f"sqlite:///{data_dir / 'chorus.db'}"
    redis_url = os.environ.get("CHORUS_REDIS_URL") or "redis://127.0.0.1:6379/0"
    return Settings(
        port=int(os.environ.get("PORT") or 8000),
        database_url=database_url,
        redis_url=redis_url,
        broker_url=os.environ.get("CHORUS_BROKER_URL") or redis_url,
        models_path=Path(os.environ.get("CHORUS_MODELS") or PACKAGE_DIR / "models.toml"),
        mock_url=(os.environ.get("CHORUS_MOCK_URL") or "http://127.0.0.1:8100").rstrip("/"),
        secret_key=os.environ.get("CHORUS_SECRET_KEY", ""),
        max_body_bytes=int(os.environ.get("CHORUS_MAX_BODY_BYTES") or 1_000_000),
        connect_timeout_s=_env_float("CHORUS_CONNECT_TIMEOUT", 5.0),
        first_token_timeout_s=_env_float("CHORUS_FIRST_TOKEN_TIMEOUT", 60.0),
        idle_timeout_s=_env_float("CHORUS_IDLE_TIMEOUT", 60.0),
        publish_linger_ms=_env_float("CHORUS_PUBLISH_LINGER_MS", 2.0),
        stream_pace_ms=_env_float("CHORUS_STREAM_PACE_MS", 20.0),
        stream_pace_from=int(os.environ.get("CHORUS_STREAM_PACE_FROM") or 8),
        worker_concurrency=int(os.environ.get("CHORUS_WORKER_CONCURRENCY") or 200),
        broker_visibility_timeout_s=int(os.environ.get("CHORUS_BROKER_VISIBILITY_TIMEOUT") or 300),
        drain_s=_env_float("CHORUS_DRAIN_S", 20.0),
        reconcile_s=_env_float("CHORUS_RECONCILE_S", 5.0),
        reconcile_grace_s=_env_float("CHORUS_RECONCILE_GRACE_S", 15.0),
        job_deadline_s=_env_float("CHORUS_JOB_DEADLINE_S", 3600.0),
        batch_job_deadline_s=_env_float("CHORUS_BATCH_JOB_DEADLINE_S", 86400.0),
        rate_limit_scale=_env_float("CHORUS_RATE_LIMIT_SCALE", 1.0),
        rate_limits=os.environ.get("CHORUS_RATE_LIMITS", ""),
        trusted_proxies=int(os.environ.get("CHORUS_TRUSTED_PROXIES") or 0),
        breaker_failures=int(os.environ.get("CHORUS_BREAKER_FAILURES") or 3),
        breaker_open_s=_env_float("CHORUS_BREAKER_OPEN_S", 30.0),
        breaker_probe_s=_env_float("CHORUS_BREAKER_PROBE_S", 60.0),
        health_interval_s=_env_float("CHORUS_HEALTH_INTERVAL", 60.0),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return from_env()
