"""What one worker process shares across its tasks: HTTP pool, Redis, event publisher."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import httpx
import redis
from gevent import monkey
from redis.maint_notifications import MaintNotificationsConfig

from shared import readiness
from shared.registry import Registry, get_registry
from shared.settings import Settings, get_settings
from workers.drain import Drain
from workers.providers.client import Timeouts, make_http_client
from workers.providers.read_pacing import Pacer
from workers.publisher import CoalescingPublisher, EventSink, SyncPublisher
from workers.stopper import Stopper


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def registry(self) -> Registry:
        return get_registry(self.settings.models_path)

    @cached_property
    def http(self) -> httpx.Client:
        readiness.install()
        return make_http_client()

    @cached_property
    def pacer(self) -> Pacer:
        s = self.settings
        return Pacer(s.stream_pace_ms / 1000, s.stream_pace_from)

    @cached_property
    def drain(self) -> Drain:
        return Drain(self.settings.drain_s)

    @cached_property
    def stopper(self) -> Stopper:
        return Stopper(self.redis)

    @cached_property
    def redis(self) -> redis.Redis:
        readiness.install()
        pool = redis.BlockingConnectionPool.from_url(
            self.settings.redis_url, max_connections=100, timeout=10, socket_connect_timeout=2,
            # A single server sends none; skip the extra handshake reply per connection.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        return redis.Redis(connection_pool=pool)

    @cached_property
    def publisher(self) -> EventSink:
        s = self.settings
        if monkey.is_module_patched("socket"):
            return CoalescingPublisher(self.redis, s.replay_ttl_s, s.replay_ttl_after_done_s,
                                       linger_s=s.publish_linger_ms / 1000)
        return SyncPublisher(self.redis, s.replay_ttl_s, s.replay_ttl_after_done_s)

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(connect=self.settings.connect_timeout_s, idle=self.settings.idle_timeout_s)


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime
