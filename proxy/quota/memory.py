"""The in-process quota store: the embedded default, exact for a single replica.

Same arithmetic as the Redis store (``schedule``), on a clock that tests inject.
"""

from __future__ import annotations

import time
from bisect import bisect_right, insort
from collections.abc import Callable

from proxy.quota.schedule import earliest, headroom
from proxy.quota.store import MICROS, Decision, Quota

#: Admissions at once (no reservation) whose member is kept for a give-back of an unused slot:
#: more than the 20 requests of a ``$batch``, whose admissions run without a pause in between.
_RECENT = 256


class MemoryStore:
    """Admission logs in this process's memory."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, list[list[int]]] = {}
        self._members: dict[str, dict[str, int]] = {}
        self._paused: dict[str, int] = {}
        #: member -> (quota key, time) of the latest admissions at once, oldest first
        self._recent: dict[str, tuple[str, int]] = {}

    def _now(self) -> int:
        return round(self._clock() * MICROS)

    def _load(self, quota: Quota, now: int) -> list[list[int]]:
        logs = self._logs.get(quota.key)
        if logs is None or len(logs) != len(quota.windows):
            logs = [[] for _ in quota.windows]
            self._logs[quota.key] = logs
        for log, window in zip(logs, quota.windows, strict=True):
            # Entries at or before now - width are outside every window that ends from now on;
            # the arithmetic skips them by itself, so they are dropped in batches, not per call.
            expired = bisect_right(log, now - window.width)
            if expired > 64 and 2 * expired > len(log):
                del log[:expired]
        members = self._members.get(quota.key)
        if members:
            for name in [m for m, at in members.items() if at <= now]:
                del members[name]
        return logs

    async def admit(
        self, quota: Quota, member: str, max_wait: float, reserve: float, shadow: bool
    ) -> Decision:
        """See ``QuotaStore.admit``."""
        now = self._now()
        logs = self._load(quota, now)
        start = max(now, self._paused.get(quota.key, 0))
        slot = earliest(logs, quota.windows, reserve, start)
        wait = slot - now
        admitted = wait <= round(max_wait * MICROS)
        at = now if shadow else slot
        if shadow or admitted:
            for log in logs:
                insort(log, at)
            if at > now:  # reservations can be given back
                self._members.setdefault(quota.key, {})[member] = at
            elif not shadow:  # and the latest slots taken at once, if never used
                recent = self._recent
                recent[member] = (quota.key, at)
                if len(recent) > _RECENT:
                    del recent[next(iter(recent))]
        return self._decision(quota, logs, now, admitted, wait)

    def _decision(
        self, quota: Quota, logs: list[list[int]], now: int, admitted: bool, wait: int
    ) -> Decision:
        room = [headroom(log, window, now) for log, window in zip(logs, quota.windows, strict=True)]
        paused = max(0, self._paused.get(quota.key, 0) - now)
        return Decision(
            admitted=admitted,
            wait=wait / MICROS,
            remaining=tuple(r for r, _ in room),
            reset=tuple(t / MICROS for _, t in room),
            paused=paused / MICROS,
        )

    def used(self, quota: Quota, index: int, at: float) -> int:
        """Admissions in window ``index`` from the interval ending at ``at`` on (future ones too)."""
        log = self._load(quota, self._now())[index]
        return len(log) - bisect_right(log, round(at * MICROS) - quota.windows[index].width)

    def record_in(self, quota: Quota, index: int, at: float, count: int) -> None:
        """Log ``count`` admissions decided elsewhere, in window ``index`` only."""
        log = self._load(quota, self._now())[index]
        stamp = round(at * MICROS)
        for _ in range(count):
            insort(log, stamp)

    def record(self, quota: Quota, at: float) -> None:
        """Log an admission decided elsewhere (at ``at`` on this store's clock)."""
        stamp = round(at * MICROS)
        for log in self._load(quota, self._now()):
            insort(log, stamp)

    async def release(self, quota: Quota, member: str, *, unused: bool = False) -> None:
        """See ``QuotaStore.release``: a reservation still in the future is given back, and with
        ``unused`` also a slot taken at once among the latest few hundred."""
        at = self._members.get(quota.key, {}).pop(member, None)
        if at is None and unused:
            key, at = self._recent.pop(member, ("", None))
            if key != quota.key:
                at = None
        if at is None or (at <= self._now() and not unused):
            return
        for log in self._logs.get(quota.key, []):
            if at in log:
                log.remove(at)

    async def pause(self, quota: Quota, seconds: float) -> float:
        """See ``QuotaStore.pause``."""
        now = self._now()
        until = max(self._paused.get(quota.key, 0), now + round(seconds * MICROS))
        self._paused[quota.key] = until
        return (until - now) / MICROS

    async def warm(self) -> bool:
        """Nothing to prepare."""
        return True

    async def close(self) -> None:
        """Nothing to release."""
