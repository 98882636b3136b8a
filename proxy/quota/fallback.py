"""The circuit breaker in front of the shared store, and the local share used while it is open.

Every call to the shared store keeps to the store's own timeout; a failure (``StoreUnavailable``,
the one error a store raises) opens the breaker for ``cooldown`` seconds, during which each
replica admits against its own share of every limit (the limit divided by the expected number of
replicas, at least 1) in an in-process store. That store mirrors every admission this replica got
from the shared one, so the fallback counts what the replica already sent in the current windows
rather than starting from nothing. After the cooldown one call goes to the shared store again: if
it answers, the breaker closes and the shared quota is back. A request therefore never waits on a
dead store for longer than one store timeout.

Coming back is done in two steps, because a shared store may come back empty (Redis restarted
without persistence, a failover that lost recent writes) and the replicas do not come back at the
same instant:

1. before its first call to the shared store after a fallback, a replica writes back everything
   it admitted in the last window, from the shared store or its local share (``restore``: one
   round trip per quota; admissions the store still holds are not counted twice), and every
   pause still running here, so the store does not admit on top of what the upstream already
   counted, nor into a Retry-After it asked for;
2. for one window after its own recovery, a replica admits only where both its local share and
   the shared store allow: another replica still in fallback admits against its own share, which
   the shared store cannot see yet, and the two shares together stay within the limit.

What this store keeps per quota (its local share, the last shared decision, whether it was seeded)
lives as long as the local store keeps the quota's key — a window after its last admission, its
last shared decision or its pause — and goes with it, so memory follows the callers of the last
window here too.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Generic, TypeVar

from proxy.logs import get_logger
from proxy.quota.memory import MemoryStore
from proxy.quota.schedule import Window
from proxy.quota.store import MICROS, Decision, Quota, QuotaStore, StoreUnavailable

Shared = TypeVar("Shared", bound=QuotaStore)
_T = TypeVar("_T")


class FallbackStore(Generic[Shared]):
    """A shared store with a breaker and a local fallback."""

    def __init__(
        self,
        shared: Shared,
        *,
        cooldown: float,
        expected_replicas: int,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.name = shared.name
        self.local = MemoryStore(clock, on_forget=self._forget)
        self._cooldown = cooldown
        self._replicas = max(1, expected_replicas)
        self._on_change = on_change
        self._clock = clock
        self._open_until: float | None = None
        self._opened_at = 0.0
        self._probing = False
        #: when this replica last came back to the shared store (None: it never left it)
        self._recovered_at: float | None = None
        # the last shared decision per quota: (when, admissions left per window, its wait, and
        # the windows it was for: a reload may change them before a fallback seeds from it)
        self._last_seen: dict[str, tuple[float, tuple[int, ...], float, tuple[Window, ...]]] = {}
        self._seeded: set[str] = set()
        #: quota key → (the quota, this replica's share of it)
        self._shares: dict[str, tuple[Quota, Quota]] = {}
        self._log = get_logger("quota")

    @property
    def in_fallback(self) -> bool:
        """Whether admissions currently use the local share."""
        return self._open_until is not None

    def _local_share(self, quota: Quota) -> Quota:
        known = self._shares.get(quota.key)
        if known is None or known[0] != quota:
            windows = tuple(
                Window(max(1, w.limit // self._replicas), w.width) for w in quota.windows
            )
            share = replace(quota, windows=windows)
            self._shares[quota.key] = (quota, share)
            # The share lives as long as the local store keeps its key (``_forget``).
            self.local.keep(share, self._clock())
            return share
        return known[1]

    def _forget(self, key: str) -> None:
        """The local store let ``key`` go: nothing of it is in a window any more."""
        self._shares.pop(key, None)
        self._last_seen.pop(key, None)
        self._seeded.discard(key)

    def _use_shared(self) -> bool:
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        # Half-open: this one call tries the shared store; the others stay local meanwhile.
        self._probing = True
        return True

    async def _ready(self) -> bool:
        """Whether this call goes to the shared store; the probe after a fallback writes back
        first, so that nothing is admitted there before the store knows what this replica sent."""
        if not self._use_shared():
            return False
        if self._probing:
            try:
                await self._write_back()
            except StoreUnavailable as exc:
                self._failed(exc)
                return False
            except BaseException:
                self._abandon(True)
                raise
            self._recovered_at = self._clock()
        return True

    def _abandon(self, probe: bool) -> None:
        """A call to the shared store ended without an answer or a failure (its caller went
        away: cancelled): it proves nothing either way, so when it was the probe, the next call
        probes again. Left set, no call would ever try the shared store again."""
        if probe:
            self._probing = False

    async def _write_back(self) -> None:
        """Every quota's admissions from the last window, one call per quota, all at once, and
        every pause still running here: a store that came back empty lost the upstream's
        Retry-After with the rest, and the other replicas would admit into it."""
        calls: list[Awaitable[object]] = []
        for quota, local in list(self._shares.values()):
            widest = quota.widest / MICROS
            admissions = self.local.since(local, widest)
            if admissions:
                calls.append(self.shared.restore(quota, admissions))
            if (paused := self.local.paused_for(local)) > 0:
                calls.append(self.shared.pause(quota, paused))
        # A call that fails is reported by gather after the others have ended: none is orphaned.
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _failed(self, exc: StoreUnavailable) -> None:
        self._probing = False
        was_open = self._open_until is not None
        if not was_open:
            self._seeded.clear()
        self._opened_at = self._clock()
        self._open_until = self._opened_at + self._cooldown
        if not was_open:
            self._log.warning(
                "quota store unreachable: admitting against the local share",
                error=exc.kind,
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

    def _guarded(self, quota: Quota, now: float) -> bool:
        """Whether ``quota`` is still within one window of this replica's recovery."""
        if self._recovered_at is None:
            return False
        return now < self._recovered_at + quota.widest / MICROS

    async def admit(
        self,
        quota: Quota,
        member: str,
        max_wait: float,
        reserve: float,
        shadow: bool,
        not_before: float = 0.0,
    ) -> Decision:
        """See ``QuotaStore.admit``."""
        if await self._ready():
            started, probe = self._clock(), self._probing
            try:
                if not shadow and self._guarded(quota, started):
                    decision = await self._admit_both(quota, member, max_wait, reserve, not_before)
                else:
                    decision = await self.shared.admit(
                        quota, member, max_wait, reserve, shadow, not_before
                    )
                    if decision.admitted:
                        # Mirror what this replica sends, so that a fallback starts from what it
                        # already used in the current windows, and a recovery can write it back.
                        slot = round((started + decision.wait) * MICROS)
                        self.local.move(self._local_share(quota), member, slot)
            except StoreUnavailable as exc:
                self._failed(exc)
            except BaseException:
                self._abandon(probe)
                raise
            else:
                self._succeeded(started)
                self._last_seen[quota.key] = (
                    started,
                    decision.remaining,
                    decision.wait,
                    quota.windows,
                )
                if decision.paused > 0:
                    # Another replica's upstream 429 paused the route: a fallback keeps to it too.
                    await self.local.pause(self._local_share(quota), decision.paused)
                # A fallback seeds from this decision until a window after its queue's end.
                self.local.keep(self._local_share(quota), started + max(0.0, decision.wait))
                return decision
        local = self._local_share(quota)
        if quota.key not in self._seeded:
            self._seed(quota, local)
        return await self.local.admit(local, member, max_wait, reserve, shadow, not_before)

    async def _admit_both(
        self, quota: Quota, member: str, max_wait: float, reserve: float, not_before: float
    ) -> Decision:
        """A slot both the local share and the shared store give: the local one is taken first
        (so concurrent requests of this replica see it), then the shared store is asked for the
        earliest slot not before it, and the local entry moves to that slot."""
        local = self._local_share(quota)
        mine, slot = self.local.admit_slot(local, member, max_wait, reserve, False, not_before)
        if not mine.admitted:
            return mine
        try:
            decision = await self.shared.admit(quota, member, max_wait, reserve, False, mine.wait)
        except BaseException:
            self.local.move(local, member, None)
            raise
        if not decision.admitted:
            self.local.move(local, member, None)
        elif decision.wait > mine.wait:
            self.local.move(local, member, slot + round((decision.wait - mine.wait) * MICROS))
        return decision

    def _seed(self, quota: Quota, local: Quota) -> None:
        """Start a fallback from the shared quota's last known headroom, not from a full one.

        The last shared decision said how much of each window was left for everybody; this
        replica takes its share of that. What the other replicas used is logged here, but when
        it goes out is not known: anywhere from a window before that decision to the end of the
        queue of reservations it reported (its wait). So it is logged at that decision and again
        every half window up to the end of the queue: every window that can hold one of those
        admissions counts all of them — more than they are in some windows, the safe side.
        """
        self._seeded.add(quota.key)
        seen = self._last_seen.get(quota.key)
        if seen is None:
            return
        at, remaining, queued, windows = seen
        # What the decision saw used, by window width: the limits may have changed since.
        used = {w.width: w.limit - left for w, left in zip(windows, remaining, strict=True)}
        for index, (window, full) in enumerate(zip(local.windows, quota.windows, strict=True)):
            if full.width not in used:
                continue  # a window the decision did not have: nothing is known of its use
            left = max(0, full.limit - used[full.width])
            share_left = -(-left // self._replicas)  # ceil: this replica's part of what is left
            others = max(0, window.limit - share_left - self.local.used(local, index, at))
            if not others:
                continue
            step = window.width / MICROS / 2
            points = 1 + max(0, math.ceil(queued / step))
            for point in range(points):
                self.local.record_in(local, index, at + min(point * step, queued), others)

    async def _on_shared(self, call: Callable[[], Awaitable[_T]]) -> tuple[bool, _T | None]:
        """``call`` on the shared store when it may be used: (whether it answered, its answer).

        A failure opens the breaker; a call abandoned otherwise (its caller cancelled) leaves the
        next one to probe.
        """
        if not await self._ready():
            return False, None
        started, probe = self._clock(), self._probing
        try:
            answer = await call()
        except StoreUnavailable as exc:
            self._failed(exc)
            return False, None
        except BaseException:
            self._abandon(probe)
            raise
        self._succeeded(started)
        return True, answer

    async def restore(self, quota: Quota, admissions: Sequence[tuple[str, float]]) -> None:
        """See ``QuotaStore.restore``: into the shared store, and the local share meanwhile."""
        await self.local.restore(self._local_share(quota), admissions)
        await self._on_shared(lambda: self.shared.restore(quota, admissions))

    async def release(self, quota: Quota, member: str, *, unused: bool = False) -> None:
        """See ``QuotaStore.release``; best effort on both stores."""
        await self.local.release(self._local_share(quota), member, unused=unused)
        await self._on_shared(lambda: self.shared.release(quota, member, unused=unused))

    async def pause(self, quota: Quota, seconds: float) -> float:
        """See ``QuotaStore.pause``: the local share pauses too, so a fallback honours it."""
        left = await self.local.pause(self._local_share(quota), seconds)
        answered, shared = await self._on_shared(lambda: self.shared.pause(quota, seconds))
        return shared if answered and shared is not None else left

    async def warm(self) -> bool:
        """Connect and load the scripts before the first request, so none pays for it.

        A cold replica would otherwise spend its first admissions on connecting and on loading
        scripts, miss its timeout and fall back while Redis is perfectly well.
        """
        try:
            return await self.shared.warm()
        except StoreUnavailable as exc:
            self._failed(exc)
            return False

    def tidy(self) -> None:
        """The local store's keys whose time has passed go, and with them what this store
        keeps per quota; then the shared store's tidy (Redis's keys expire there)."""
        self.local.tidy()
        self.shared.tidy()

    async def close(self) -> None:
        """Close the shared store's connections."""
        await self.shared.close()
