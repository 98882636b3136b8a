"""Tables that forget: each key is held until a time, and let go once that time has passed.

The proxy keeps state per caller (identities, the quota of each path family, the logs of the
in-process store), and callers are whatever the network sends: a table that only grows is filled
once by made-up tenants or paths and stays full. So each entry is held until the last time it can
still matter — for a quota, a window after its last admission or the end of its pause — and is
forgotten after. A table may also be bounded: then ``hold`` refuses a new key while ``most`` keys
are held at once, whatever was held before.

The work stays bounded per call: every key has exactly one entry in a heap, at the time it was
last due for a check. ``extend`` only moves the key's time (O(1)); ``sweep`` pops the entries that
are due, forgets the keys whose time has passed and pushes the others back at their new time.
Each pop is paid for by the ``hold`` that made the key or by an ``extend`` since its last check,
so the cost is O(log n) amortised per call, and ``budget`` caps the pops of one routine sweep.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

#: Due entries one routine sweep looks at: more than any call adds, so the backlog only shrinks.
BUDGET = 64


class Leases(Generic[K]):
    """Keys held until a time (any unit, as long as ``now`` is in the same), at most ``most``."""

    __slots__ = ("_heap", "_most", "_on_forget", "_order", "_until")

    def __init__(
        self, most: float = math.inf, on_forget: Callable[[K], None] | None = None
    ) -> None:
        self._most = most
        self._on_forget = on_forget
        self._until: dict[K, float] = {}
        # (time due, order of arrival, key): the order breaks ties, so keys are never compared.
        self._heap: list[tuple[float, int, K]] = []
        self._order = 0

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, key: object) -> bool:
        return key in self._until

    def until(self, key: K) -> float | None:
        """When ``key`` is let go (None: not held)."""
        return self._until.get(key)

    def resize(self, most: float) -> None:
        """Hold at most ``most`` keys at once from now on; keys already held past it stay held
        until their time, and no new key is held until they are fewer than ``most``."""
        self._most = most

    def hold(self, key: K, until: float) -> bool:
        """Hold ``key`` at least until ``until``; False (and nothing held) if it is not held yet
        and ``most`` keys already are. Call ``sweep`` first: this forgets nothing by itself."""
        held = self._until.get(key)
        if held is not None:
            if until > held:
                self._until[key] = until
            return True
        if len(self._until) >= self._most:
            return False
        self._until[key] = until
        self._push(until, key)
        return True

    def extend(self, key: K, until: float) -> None:
        """Hold a key already held at least until ``until`` (a key not held stays so)."""
        held = self._until.get(key)
        if held is not None and until > held:
            self._until[key] = until

    def sweep(self, now: float, budget: int | None = BUDGET) -> None:
        """Forget the keys held until ``now`` or earlier, looking at ``budget`` due entries at most
        (None: every due one, so that a bounded table is exact when it is full)."""
        heap = self._heap
        left = math.inf if budget is None else budget
        while heap and heap[0][0] <= now and left > 0:
            left -= 1
            _, _, key = heapq.heappop(heap)
            until = self._until[key]
            if until > now:
                self._push(until, key)
                continue
            del self._until[key]
            if self._on_forget is not None:
                self._on_forget(key)

    def _push(self, until: float, key: K) -> None:
        self._order += 1
        heapq.heappush(self._heap, (until, self._order, key))


class Overflow:
    """The shared overflow quota of a bounded table, and who was sent to it.

    A key sent to the overflow has admissions there until the overflow's last slot leaves its
    window (``until``). Were it given a place of its own before that, it would start from an
    empty quota and could be admitted again for what it already had on the overflow: over its
    limit within one window. So a key that was sent to the overflow stays on it while the
    overflow holds anything; so does every new key once ``most`` keys have been sent there (the
    record is bounded, and a key it could not record may be one of them). When the overflow has
    held nothing for a window the record is cleared and every key is free to get a place.
    """

    __slots__ = ("_keys", "_most", "until")

    def __init__(self, most: int) -> None:
        self._most = most
        self._keys: set[Hashable] = set()
        #: the time until which the overflow holds admissions (a window after its last slot)
        self.until = -math.inf

    def resize(self, most: int) -> None:
        """Record at most ``most`` keys from now on (the bound of the table it serves)."""
        self._most = most

    def busy(self, now: float) -> bool:
        """Whether the overflow still holds admissions at ``now``; clears the record if not."""
        if now < self.until:
            return True
        if self._keys:
            self._keys.clear()
        return False

    def keeps(self, key: Hashable, now: float) -> bool:
        """Whether ``key`` must stay on the overflow rather than get a place of its own."""
        return self.busy(now) and (key in self._keys or len(self._keys) >= self._most)

    def send(self, key: Hashable, until: float) -> None:
        """Record ``key`` as sent to the overflow, which then holds something until ``until``."""
        if len(self._keys) < self._most:
            self._keys.add(key)
        self.extend(until)

    def extend(self, until: float) -> None:
        """The overflow holds something at least until ``until``."""
        self.until = max(self.until, until)
