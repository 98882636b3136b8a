"""The admission arithmetic shared by every quota store: where the next request may go.

A quota is a set of windows, each *at most ``limit`` requests in any interval of ``width``* —
sliding, not aligned to any clock. Each window keeps a log of admission times (the "bucket": every
spent token comes back exactly ``width`` after it was spent). Admission times may lie in the
future: a caller over the limit is given the earliest future time at which it fits (a
reservation), waits until then, and only then is forwarded.

Inserting a request at time ``t`` raises the count of every window that ends in ``[t, t+width)``.
The count only changes at logged times, so it is enough to check the window ending at ``t`` itself
(against ``cap``, the share of the limit this request may use: all of it for interactive requests,
less for bulk ones) and the windows ending at each logged time in ``(t, t+width)`` (against the
full ``limit``). When a check fails, ``t`` jumps straight to the next time it could pass: when the
oldest blocking entry leaves, or just past the entry whose window is full. ``t`` only grows, and
each jump passes at least one entry, so the work is bounded by the log's length.

Times are integers (microseconds) so that this module and the Redis script compute bit-identical
answers. The Lua script in ``lua/admit.lua`` ports ``earliest`` step for step, reading the sorted
sets by rank (``ZCOUNT``) instead of as lists, so its cost does not grow with the window's length.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

#: Jumps tried in search of a gap between reservations before going to the log's tail.
MAX_STEPS = 8


@dataclass(frozen=True, slots=True)
class Window:
    """One limit of a quota: at most ``limit`` admissions in any interval of ``width`` µs."""

    limit: int
    width: int


def cap_for(limit: int, reserve: float) -> int:
    """How much of a window a request may fill: all of it, less the ``reserve`` share (≥ 1)."""
    if reserve <= 0:
        return limit
    return max(1, int(limit * (1.0 - reserve)))


def earliest_in_window(log: Sequence[int], window: Window, cap: int, t: int) -> int:
    """The earliest time ≥ ``t`` at which one more admission keeps this window within bounds.

    After ``MAX_STEPS`` jumps the search stops looking for a gap between reservations and goes to
    the tail of the log, where only the window ending at ``t`` can object: still a safe slot, found
    in bounded time however long the queue of reservations is.
    """
    width, limit = window.width, window.limit
    n = len(log)
    steps = 0
    while True:
        steps += 1
        if steps > MAX_STEPS and n and t < log[-1]:
            t = log[-1]
        first = bisect_right(log, t - width)
        last = bisect_right(log, t)  # entries at or before t: log[first:last]
        if last - first + 1 > cap:
            # Wait until enough of the oldest entries in (t - width, t] have left.
            t = log[last - cap] + width
            continue
        blocked = None
        for k in range(last, n):
            entry = log[k]
            if entry >= t + width:
                break
            if k + 1 - bisect_right(log, entry - width) + 1 > limit:
                blocked = entry  # the window ending at this entry is full: go past it
                break
        if blocked is None:
            return t
        t = blocked + 1


def earliest(
    logs: Sequence[Sequence[int]], windows: Sequence[Window], reserve: float, t: int
) -> int:
    """The earliest time ≥ ``t`` at which one more admission fits every window."""
    caps = [cap_for(w.limit, reserve) for w in windows]
    while True:
        moved = False
        for log, window, cap in zip(logs, windows, caps, strict=True):
            found = earliest_in_window(log, window, cap, t)
            if found > t:
                t, moved = found, True
        if not moved:
            return t


def headroom(log: Sequence[int], window: Window, now: int) -> tuple[int, int]:
    """(admissions left, µs until the oldest admission in the window leaves).

    Reservations still waiting for their slot count as used: they are spoken for.
    """
    first = bisect_right(log, now - window.width)
    used = len(log) - first
    reset = log[first] + window.width - now if used else 0
    return max(0, window.limit - used), max(0, reset)
