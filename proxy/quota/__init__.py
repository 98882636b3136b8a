"""The shared quota: stores that admit requests against a route's windows, and the policy on top.

``schedule`` holds the arithmetic; ``store`` the interface; ``memory`` and ``redis_store`` the two
stores; ``fallback`` the circuit breaker that admits against a local share while Redis is away
and writes that share back on recovery; ``limiter`` the policy (waiting, deadlines, priorities,
pauses, shadow mode); ``learned`` the limits the API states in its 429s. Nothing here speaks
HTTP: the handler's side (``proxy.quota_headers``) parses the caller's control headers and
renders ``RateLimit`` and ``Retry-After``.
"""

from __future__ import annotations

from proxy.config import Throttle
from proxy.metrics import Metrics
from proxy.quota.memory import MemoryStore
from proxy.quota.store import QuotaStore, StoreUnavailable


def make_store(throttle: Throttle, metrics: Metrics, ca_bundle: str | None = None) -> QuotaStore:
    """The store ``throttle.store`` names: in-process, or Redis behind the circuit breaker,
    trusting ``ca_bundle`` (``tls.ca_bundle``) over TLS."""
    if throttle.store == "memory":
        return MemoryStore()
    # Imported only when a Redis store is configured: the client adds ~7 MiB to every process.
    from proxy.quota.fallback import FallbackStore
    from proxy.quota.redis_store import RedisStore

    def changed(fallback: bool) -> None:
        metrics.store_fallback.set(1 if fallback else 0)
        if fallback:
            metrics.store_fallbacks.inc()

    return FallbackStore(
        RedisStore(throttle.store, throttle.store_timeout, ca_bundle=ca_bundle),
        cooldown=throttle.fallback.cooldown,
        expected_replicas=throttle.fallback.expected_replicas,
        on_change=changed,
    )


__all__ = ["MemoryStore", "QuotaStore", "StoreUnavailable", "make_store"]
