"""The in-process quota store: the embedded default, exact for a single replica.

Same arithmetic as the Redis store (``schedule``), on a clock that tests inject.

A key is kept while it can still change a decision: until a window (the widest of its quota) after
its latest admission or reservation, or the end of its pause. Then its logs, members and pause are
dropped (``proxy.leases``), as Redis lets its keys expire (PEXPIREAT): memory follows the callers
of the last window, not every caller since the start. A dropped key is one that reads as empty.

A quota's windows may change while its logs are kept (a reload changed the route's limits): a
window of the same width keeps its log, whatever its limit now, and a window of a new width starts
from the log of the widest window there was, which holds every admission any window still counts.
So a lowered limit applies to what was already admitted, and nothing admitted is forgotten.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Sequence

from proxy.leases import Leases
from proxy.quota.fair import PACE, caller_of, deferred, grace
from proxy.quota.schedule import earliest, headroom
from proxy.quota.store import MICROS, Decision, Quota

#: Admissions at once (no reservation) whose member is kept for a give-back of an unused slot:
#: more than the 20 requests of a ``$batch``, whose admissions run without a pause in between.
_RECENT = 256


class MemoryStore:
    """Admission logs in this process's memory."""

    name = "memory"

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_forget = on_forget
        self._logs: dict[str, list[list[int]]] = {}
        #: per quota, the width (µs) of each of its logs, in order
        self._widths: dict[str, tuple[int, ...]] = {}
        #: per quota, member → slot of the admissions still in a window (and a few that left)
        self._members: dict[str, dict[str, int]] = {}
        self._paused: dict[str, int] = {}
        #: per quota, (slot, member) of the admissions from its narrowest window on whose member
        #: names a caller, in order: what the fair share counts
        self._callers: dict[str, list[tuple[int, str]]] = {}
        #: every key above, until (µs) the last time it can change a decision
        self._held: Leases[str] = Leases(on_forget=self._forget)

    def __len__(self) -> int:
        """Keys held: quotas with an admission in a window, a reservation or a pause."""
        return len(self._held)

    def _now(self) -> int:
        return round(self._clock() * MICROS)

    def _forget(self, key: str) -> None:
        self._logs.pop(key, None)
        self._widths.pop(key, None)
        self._members.pop(key, None)
        self._paused.pop(key, None)
        self._callers.pop(key, None)
        if self._on_forget is not None:
            self._on_forget(key)

    def _keep(self, quota: Quota, at: int) -> None:
        """Keep ``quota``'s key until a window after ``at`` (µs)."""
        self._held.hold(quota.key, at + quota.widest)

    def keep(self, quota: Quota, at: float) -> None:
        """Keep ``quota``'s key (and call ``on_forget`` for it later) until a window after ``at``
        (seconds on this store's clock), for a caller that keeps state of its own beside it."""
        self._held.sweep(self._now())
        self._keep(quota, round(at * MICROS))

    def _load(self, quota: Quota, now: int) -> list[list[int]]:
        self._held.sweep(now)
        logs = self._logs.get(quota.key)
        widths = quota.widths
        if logs is None:
            logs = [[] for _ in quota.windows]
            self._logs[quota.key] = logs
            self._widths[quota.key] = widths
            self._held.hold(quota.key, now)
        elif self._widths[quota.key] != widths:
            logs = self._reshaped(quota.key, logs, widths)
        for log, window in zip(logs, quota.windows, strict=True):
            # Entries at or before now - width are outside every window that ends from now on;
            # the arithmetic skips them by itself, so they are dropped in batches, not per call.
            expired = bisect_right(log, now - window.width)
            if expired > 64 and 2 * expired > len(log):
                del log[:expired]
        members = self._members.get(quota.key)
        if members and len(members) > 64 + 2 * max(len(log) for log in logs):
            # Names are kept while their admission can still be given back or written again;
            # swept in batches, like the logs.
            horizon = now - quota.widest
            for name in [m for m, at in members.items() if at <= horizon]:
                del members[name]
        return logs

    def _reshaped(
        self, key: str, logs: list[list[int]], widths: tuple[int, ...]
    ) -> list[list[int]]:
        """The logs of ``key`` for windows of ``widths``, from those it had for other ones."""
        had = dict(zip(self._widths[key], logs, strict=True))
        widest = had[max(had)]
        reshaped = [had[width] if width in had else list(widest) for width in widths]
        self._logs[key] = reshaped
        self._widths[key] = widths
        return reshaped

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
        return self.admit_slot(quota, member, max_wait, reserve, shadow, not_before)[0]

    def admit_slot(
        self,
        quota: Quota,
        member: str,
        max_wait: float,
        reserve: float,
        shadow: bool,
        not_before: float = 0.0,
    ) -> tuple[Decision, int]:
        """``admit``, and the slot it logged (µs on this store's clock), for a caller that may
        move the entry or take it back with ``move``."""
        now = self._now()
        logs = self._load(quota, now)
        start = max(now + round(not_before * MICROS), self._paused.get(quota.key, 0))
        slot = earliest(logs, quota.windows, reserve, start)
        wait = slot - now
        admitted = wait <= round(max_wait * MICROS)
        caller = caller_of(member)
        if admitted and caller and not shadow:
            index = quota.narrow
            window, log = quota.windows[index], logs[index]
            free = window.limit - (len(log) - bisect_right(log, now - window.width))
            spare = grace(window.width)
            if log[-1:] > [now] or free <= PACE * (len(log) - bisect_right(log, now - spare)):
                # Otherwise nobody holds a reservation, and the callers on their way back may
                # take no more than PACE times what was admitted within the grace, fewer than the
                # free slots: no deferral is possible, and the scan is skipped.
                recent = self._recent(quota, now)
                turn = deferred(((caller_of(m), at) for at, m in recent), caller, now, free, spare)
                if turn is not None:
                    return self._decision(quota, logs, now, False, wait, turn - now), slot
        at = now if shadow else slot
        if shadow or admitted:
            for log in logs:
                insort(log, at)
            self._members.setdefault(quota.key, {})[member] = at
            if caller:
                self._note_caller(quota, member, at, now)
            self._keep(quota, at)
        return self._decision(quota, logs, now, admitted, wait), at

    def _recent(self, quota: Quota, now: int) -> list[tuple[int, str]]:
        """The admissions of ``quota`` that name a caller, from its narrowest window on."""
        entries = self._callers.get(quota.key)
        if not entries:
            return []
        width = quota.windows[quota.narrow].width
        gone = bisect_right(entries, (now - width, "\U0010ffff"))
        if gone:
            del entries[:gone]
        return entries

    def _note_caller(self, quota: Quota, member: str, at: int, now: int) -> None:
        if caller_of(member) and at > now - quota.windows[quota.narrow].width:
            # Trimmed here too: the admissions that skip the fair share's scan still add to it.
            self._recent(quota, now)
            insort(self._callers.setdefault(quota.key, []), (at, member))

    def move(self, quota: Quota, member: str, to: int | None) -> None:
        """Move ``member``'s entry to slot ``to`` (µs), or take it out (None), whenever it is."""
        logs = self._load(quota, self._now())
        members = self._members.setdefault(quota.key, {})
        at = members.pop(member, None)
        now = self._now()
        if at is not None:
            for log in logs:
                index = bisect_left(log, at)
                if index < len(log) and log[index] == at:
                    del log[index]
            entries = self._recent(quota, now)
            index = bisect_left(entries, (at, member))
            if index < len(entries) and entries[index] == (at, member):
                del entries[index]
        if to is not None:
            for log in logs:
                insort(log, to)
            members[member] = to
            self._note_caller(quota, member, to, now)
            self._keep(quota, to)

    def _decision(
        self,
        quota: Quota,
        logs: list[list[int]],
        now: int,
        admitted: bool,
        wait: int,
        turn: int = 0,
    ) -> Decision:
        room = [headroom(log, window, now) for log, window in zip(logs, quota.windows, strict=True)]
        paused = max(0, self._paused.get(quota.key, 0) - now)
        return Decision(
            admitted=admitted,
            wait=wait / MICROS,
            remaining=tuple(r for r, _ in room),
            reset=tuple(t / MICROS for _, t in room),
            paused=paused / MICROS,
            turn=turn / MICROS,
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
        self._keep(quota, stamp)

    def record(self, quota: Quota, at: float) -> None:
        """Log an admission decided elsewhere (at ``at`` on this store's clock)."""
        stamp = round(at * MICROS)
        for log in self._load(quota, self._now()):
            insort(log, stamp)
        self._keep(quota, stamp)

    def since(self, quota: Quota, seconds: float) -> list[tuple[str, float]]:
        """(member, age in seconds) of the named admissions from the last ``seconds`` on,
        reservations still to come included (negative ages)."""
        now = self._now()
        horizon = now - round(seconds * MICROS)
        members = self._members.get(quota.key, {})
        return [(m, (now - at) / MICROS) for m, at in members.items() if at > horizon]

    async def restore(self, quota: Quota, admissions: Sequence[tuple[str, float]]) -> None:
        """See ``QuotaStore.restore``."""
        now = self._now()
        logs = self._load(quota, now)
        members = self._members.setdefault(quota.key, {})
        for member, age in admissions:
            at = now - round(age * MICROS)
            if member in members:
                continue
            members[member] = at
            self._note_caller(quota, member, at, now)
            self._keep(quota, at)
            for log, window in zip(logs, quota.windows, strict=True):
                if at > now - window.width:
                    insort(log, at)

    async def release(self, quota: Quota, member: str, *, unused: bool = False) -> None:
        """See ``QuotaStore.release``: a reservation still in the future is given back, and with
        ``unused`` also a slot whose time has come (its request was never sent)."""
        at = self._members.get(quota.key, {}).get(member)
        if at is None or (at <= self._now() and not unused):
            return
        self.move(quota, member, None)

    def paused_for(self, quota: Quota) -> float:
        """Seconds ``quota`` stays paused from now (0 when it is not)."""
        return max(0, self._paused.get(quota.key, 0) - self._now()) / MICROS

    async def pause(self, quota: Quota, seconds: float) -> float:
        """See ``QuotaStore.pause``."""
        now = self._now()
        self._held.sweep(now)
        until = max(self._paused.get(quota.key, 0), now + round(seconds * MICROS))
        self._paused[quota.key] = until
        self._held.hold(quota.key, until)
        return (until - now) / MICROS

    async def warm(self) -> bool:
        """Nothing to prepare."""
        return True

    def tidy(self) -> None:
        """Forget every key whose time has passed. Between calls a key is dropped by the next
        call after its time; a proxy that went quiet would keep the last burst's logs (a few
        objects per admission, scattered over the memory the burst took) until its next
        request."""
        self._held.sweep(self._now(), None)

    async def close(self) -> None:
        """Nothing to release."""
