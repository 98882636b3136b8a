"""The circuit breaker in front of the shared store, and the local share used while it is open.

Every call to the shared store has ``store_timeout``; a failure opens the breaker for ``cooldown``
seconds, during which each replica admits against its own share of every limit (the limit divided
by the expected number of replicas, at least 1) in an in-process store. That store mirrors every
admission this replica got from the shared one, so the fallback counts what the replica already
sent in the current windows rather than starting from nothing. After the cooldown one call
goes to the shared store again: if it answers, the breaker closes and the shared quota is back.
A request therefore never waits on a dead store for longer than one ``store_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from proxy.logs import get_logger
from proxy.quota.memory import MemoryStore
from proxy.quota.schedule import Window
from proxy.quota.store import Decision, Quota

if TYPE_CHECKING:
    from proxy.quota.redis_store import RedisStore


class FallbackStore:
    """A shared store with a breaker and a local fallback."""

    name = "redis"

    def __init__(
        self,
        shared: RedisStore,
        *,
        timeout: float,
        cooldown: float,
        expected_replicas: int,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.local = MemoryStore(clock)
        self._timeout = timeout
        self._cooldown = cooldown
        self._replicas = max(1, expected_replicas)
        self._on_change = on_change
        self._clock = clock
        self._open_until: float | None = None
        self._opened_at = 0.0
        self._probing = False
        # the last shared decision per quota: (when, admissions left per window)
        self._last_seen: dict[str, tuple[float, tuple[int, ...]]] = {}
        self._seeded: set[str] = set()
        self._errors = shared.errors
        self._shares: dict[Quota, Quota] = {}
        self._log = get_logger("quota")

    @property
    def in_fallback(self) -> bool:
        """Whether admissions currently use the local share."""
        return self._open_until is not None

    def _local_share(self, quota: Quota) -> Quota:
        share = self._shares.get(quota)
        if share is None:
            windows = tuple(
                Window(max(1, w.limit // self._replicas), w.width) for w in quota.windows
            )
            share = self._shares[quota] = replace(quota, windows=windows)
        return share

    def _use_shared(self) -> bool:
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        # Half-open: this one call tries the shared store; the others stay local meanwhile.
        self._probing = True
        return True

    def _failed(self, exc: BaseException) -> None:
        self._probing = False
        was_open = self._open_until is not None
        if not was_open:
            self._seeded.clear()
        self._opened_at = self._clock()
        self._open_until = self._opened_at + self._cooldown
        if not was_open:
            self._log.warning(
                "quota store unreachable: admitting against the local share",
                error=type(exc).__name__,
                # Says why, e.g. that Redis refused SELECT: a database beyond its `databases`.
                reason=str(exc)[:200],
                expected_replicas=self._replicas,
                retry_in_s=self._cooldown,
            )
            if self._on_change is not None:
                self._on_change(True)

    def _succeeded(self, started: float) -> None:
        self._probing = False
        # A call that began before the breaker opened proves nothing about the store now.
        if self._open_until is not None and started >= self._opened_at:
            self._open_until = None
            self._log.info("quota store reachable again: the shared quota is back")
            if self._on_change is not None:
                self._on_change(False)

    async def admit(
        self, quota: Quota, member: str, max_wait: float, reserve: float, shadow: bool
    ) -> Decision:
        """See ``QuotaStore.admit``."""
        if self._use_shared():
            started = self._clock()
            try:
                if self.shared.bounded:  # the client keeps to the timeout itself
                    decision = await self.shared.admit(quota, member, max_wait, reserve, shadow)
                else:
                    async with asyncio.timeout(self._timeout):
                        decision = await self.shared.admit(quota, member, max_wait, reserve, shadow)
            except self._errors as exc:
                self._failed(exc)
            else:
                self._succeeded(started)
                if decision.admitted:
                    # Mirror what this replica sends, so that a fallback starts from what it
                    # already used in the current windows instead of from nothing.
                    self.local.record(self._local_share(quota), started + decision.wait)
                self._last_seen[quota.key] = (started, decision.remaining)
                return decision
        local = self._local_share(quota)
        if quota.key not in self._seeded:
            self._seed(quota, local)
        return await self.local.admit(local, member, max_wait, reserve, shadow)

    def _seed(self, quota: Quota, local: Quota) -> None:
        """Start a fallback from the shared quota's last known headroom, not from a full one.

        The last shared decision said how much of each window was left for everybody; this
        replica takes its share of that. What the other replicas used is logged here as if
        admitted at that moment, so it leaves the local windows one full window later — on the
        safe side of when it really leaves.
        """
        self._seeded.add(quota.key)
        seen = self._last_seen.get(quota.key)
        if seen is None:
            return
        at, remaining = seen
        for index, (window, left) in enumerate(zip(local.windows, remaining, strict=True)):
            share_left = -(-left // self._replicas)  # ceil: this replica's part of what is left
            used = self.local.used(local, index, at)
            self.local.record_in(local, index, at, max(0, window.limit - share_left - used))

    async def release(self, quota: Quota, member: str, *, unused: bool = False) -> None:
        """See ``QuotaStore.release``; best effort on both stores."""
        await self.local.release(self._local_share(quota), member, unused=unused)
        if self._use_shared():
            try:
                async with asyncio.timeout(self._timeout):
                    await self.shared.release(quota, member, unused=unused)
            except self._errors as exc:
                self._failed(exc)

    async def pause(self, quota: Quota, seconds: float) -> float:
        """See ``QuotaStore.pause``: the local share pauses too, so a fallback honours it."""
        left = await self.local.pause(self._local_share(quota), seconds)
        if self._use_shared():
            started = self._clock()
            try:
                async with asyncio.timeout(self._timeout):
                    left = await self.shared.pause(quota, seconds)
            except self._errors as exc:
                self._failed(exc)
            else:
                self._succeeded(started)
        return left

    async def warm(self, connections: int = 8, timeout: float = 2.0) -> bool:
        """Connect and load the scripts before the first request, so none pays for it.

        A cold replica would otherwise spend its first admissions on connecting and on loading
        scripts, miss ``store_timeout`` and fall back while Redis is perfectly well.
        """
        try:
            async with asyncio.timeout(timeout):
                await self.shared.warm(connections)
        except self._errors as exc:
            self._failed(exc)
            return False
        return True

    async def close(self) -> None:
        """Close the shared store's connections."""
        await self.shared.close()
