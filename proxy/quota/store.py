"""The quota store interface: one atomic admission per request, for every window of a route.

Two implementations: ``MemoryStore`` (in-process, the embedded default, one replica) and
``RedisStore`` (shared by every replica, the clock taken from the Redis server). ``FallbackStore``
puts a circuit breaker in front of a shared store and admits against a local share while the
shared one cannot be reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.quota.schedule import Window

MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class Decision:
    """What the store decided for one request."""

    admitted: bool
    #: seconds until the reserved slot (admitted), or until one would be free (refused)
    wait: float
    #: per window, admissions left (reservations still to come count as used)
    remaining: tuple[int, ...]
    #: per window, seconds until the oldest admission in it leaves
    reset: tuple[float, ...]
    #: seconds the route stays paused by an upstream 429 (0 when not paused)
    paused: float


@dataclass(frozen=True, slots=True)
class Quota:
    """The windows of one route's quota, and where the store keeps them."""

    key: str
    windows: tuple[Window, ...]


def quota_key(namespace: str, route: str, identity: str = "") -> str:
    """The key prefix of a route's quota for one identity ("": shared by every caller).

    The braces make the whole key one Redis Cluster hash slot. ``identity`` comes from
    ``proxy.identity`` (GUIDs, ``anonymous``, ``overflow``): no brace or colon can reach it.
    """
    if not identity:
        return f"dp:{{{namespace}:{route}}}"
    return f"dp:{{{namespace}:{route}:{identity}}}"


class QuotaStore(Protocol):
    """Admissions, give-backs and pauses, each atomic for all windows of one quota."""

    name: str

    async def admit(
        self, quota: Quota, member: str, max_wait: float, reserve: float, shadow: bool
    ) -> Decision:
        """Reserve the earliest slot within ``max_wait`` seconds, or refuse.

        ``reserve`` is the share of every window this request may not use (bulk). In ``shadow``
        mode the decision is computed but the admission is logged now, whatever it says.
        """

    async def release(self, quota: Quota, member: str, *, unused: bool = False) -> None:
        """Give back a reservation whose caller went away before its slot.

        With ``unused`` the slot is given back even if its time has come: its request was never
        sent (a ``$batch`` refused whole gives back the slots it took for its other requests).
        """

    async def pause(self, quota: Quota, seconds: float) -> float:
        """Pause the quota for every replica for ``seconds`` (never shortening a longer pause)."""

    async def warm(self) -> bool:
        """Get ready before the first request; False if the store could not be reached."""

    async def close(self) -> None:
        """Release connections."""


def window_name(width_seconds: float) -> str:
    """A window's label: ``1m``, ``1h``."""
    from proxy.units import format_duration

    return format_duration(width_seconds)


def as_windows(limits: Sequence[tuple[int, float]], margin: float) -> tuple[Window, ...]:
    """Windows from (count, seconds) pairs, each widened by the timing margin."""
    return tuple(Window(count, round((seconds + margin) * MICROS)) for count, seconds in limits)
