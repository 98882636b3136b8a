"""The naive alternative to the shared quota, for ``bench.quota`` to compare against.

Each in-process "replica" keeps its own token bucket of capacity L refilled at L/W, refuses a
request (a local 429) when the bucket is empty and otherwise forwards it straight to the upstream.
Nothing is shared: N replicas may send N·L at once and N·L more as their buckets refill, up to
about 2·N·L in one window of W, where the API allows L (ARCHITECTURE.md, "The quota guarantee").
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from types import TracebackType

import aiohttp


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` per second, full at the start."""

    def __init__(
        self, capacity: float, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.rate = rate
        self._clock = clock
        self._tokens = capacity
        self._at = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class _Replica:
    """One replica: its own bucket and its own connection pool to the upstream."""

    def __init__(self, bucket: TokenBucket, url: str, timeout: float) -> None:
        self.bucket = bucket
        self.url = url
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def handle(self, sent: list[float], decide_ms: list[float]) -> tuple[int, str]:
        """(status, who answered) for one request."""
        started = time.perf_counter()
        admitted = self.bucket.take()
        decide_ms.append((time.perf_counter() - started) * 1000)
        if not admitted:
            return 429, "proxy"
        sent.append(time.monotonic())
        async with self.session.get(self.url) as response:
            await response.read()
            return response.status, "upstream"


class NaiveReplicas:
    """N replicas, each with a bucket of capacity ``limit`` refilled at ``limit / window``.

    ``send(i)`` hands request ``i`` to replica ``i mod N``, as a load balancer spreading clients
    would. The buckets start full when the context is entered.
    """

    def __init__(
        self, replicas: int, limit: int, window: float, url: str, timeout: float = 30.0
    ) -> None:
        self._count = replicas
        self._limit = limit
        self._window = window
        self._url = url
        self._timeout = timeout
        self._replicas: list[_Replica] = []
        #: monotonic times at which requests left for the upstream, every replica together
        self.sent: list[float] = []
        #: how long each bucket decision took, ms
        self.decide_ms: list[float] = []

    async def __aenter__(self) -> NaiveReplicas:
        self._replicas = [
            _Replica(TokenBucket(self._limit, self._limit / self._window), self._url, self._timeout)
            for _ in range(self._count)
        ]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for replica in self._replicas:
            await replica.session.close()

    async def send(self, index: int) -> tuple[int, str]:
        """(status, who answered) for request ``index``."""
        return await self._replicas[index % self._count].handle(self.sent, self.decide_ms)


def max_in_window(times: Sequence[float], width: float) -> int:
    """The most of ``times`` in any interval ``(t - width, t]``, the simulator's window."""
    ordered = sorted(times)
    return max((k + 1 - bisect_right(ordered, t - width) for k, t in enumerate(ordered)), default=0)
