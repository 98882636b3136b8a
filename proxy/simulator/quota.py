"""The simulator's sliding-window quota and the figures it keeps about itself.

A request at time ``t`` is admitted iff, for every configured limit, fewer than ``count`` counted
requests lie in ``(t - window, t]``. Counted requests are the admitted ones, plus the refused ones
when the quota is Graph-like (``count_rejected``): Graph keeps counting requests made while throttled.

Memory stays bounded by the limits, not by the traffic: deciding a limit only needs its ``count``
newest counted timestamps (the window is full iff the oldest of those is still inside it), and the
largest number of admitted requests seen in any window is kept as a running maximum, exact because
the busiest interval can always be taken to end at an admitted request.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.units import Limit


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: the limit that frees last and when it does."""

    limit: Limit
    #: Whole seconds until every limit has a free slot again (at least 1).
    retry_after: int


class _Window:
    """One limit's state: its newest counted timestamps and its busiest window so far."""

    __slots__ = ("admitted", "counted", "limit", "most_admitted")

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.counted: deque[float] = deque(maxlen=limit.count)
        self.admitted: deque[float] = deque()
        self.most_admitted = 0

    def wait(self, now: float) -> float:
        """Seconds until this limit has a free slot; 0 when it has one now."""
        if len(self.counted) < self.limit.count:
            return 0.0
        # The window is (now - window, now], so the oldest counted request leaves it at
        # exactly oldest + window.
        return max(0.0, self.counted[0] + self.limit.window - now)

    def record(self, now: float, admitted: bool, count_rejected: bool) -> None:
        """Count a request that was just decided."""
        if admitted or count_rejected:
            self.counted.append(now)
        if admitted:
            horizon = now - self.limit.window
            while self.admitted and self.admitted[0] <= horizon:
                self.admitted.popleft()
            self.admitted.append(now)
            self.most_admitted = max(self.most_admitted, len(self.admitted))

    def clear(self) -> None:
        """Forget everything, as if no request had been seen."""
        self.counted.clear()
        self.admitted.clear()
        self.most_admitted = 0


class SlidingQuota:
    """The quota every request outside ``/_sim/`` goes through, with its statistics."""

    def __init__(
        self,
        limits: Sequence[Limit],
        count_rejected: bool,
        clock: Callable[[], float],
    ) -> None:
        self._windows = [_Window(limit) for limit in limits]
        self._count_rejected = count_rejected
        self._clock = clock
        self.requests = 0
        self.admitted = 0
        self.throttled = 0

    def admit(self) -> Refusal | None:
        """Decide the request arriving now: ``None`` to admit it, else why it is refused."""
        now = self._clock()
        self.requests += 1
        admitted = all(window.wait(now) == 0 for window in self._windows)
        for window in self._windows:
            window.record(now, admitted, self._count_rejected)
        if admitted:
            self.admitted += 1
            return None
        self.throttled += 1
        # Measured after recording: a Graph-like quota has just counted this refusal too, which
        # can push the wait further out, even on a limit that had room a moment ago.
        wait, window = max(((w.wait(now), w) for w in self._windows), key=lambda pair: pair[0])
        return Refusal(window.limit, max(1, math.ceil(wait)))

    def stats(self) -> dict[str, object]:
        """The figures ``GET /_sim/stats`` answers with."""
        return {
            "requests": self.requests,
            "admitted": self.admitted,
            "throttled": self.throttled,
            "max_in_window": {str(w.limit): w.most_admitted for w in self._windows},
        }

    def reset(self) -> None:
        """Forget all requests and figures."""
        self.requests = self.admitted = self.throttled = 0
        for window in self._windows:
            window.clear()


def format_window(seconds: float) -> str:
    """A window as the API spells it in its messages: ``00:01:00``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def refusal_message(refusal: Refusal) -> str:
    """The message of the 429 the quota answers with, worded like the API's own."""
    return (
        f"API calls quota exceeded! maximum allowed {refusal.limit.count} per "
        f"{format_window(refusal.limit.window)}. Try again in {refusal.retry_after} seconds."
    )
