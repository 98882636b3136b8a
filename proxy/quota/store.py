"""The quota store interface: one atomic admission per request, for every window of a route.

Two implementations: ``MemoryStore`` (in-process, the embedded default, one replica) and
``RedisStore`` (shared by every replica, the clock taken from the Redis server). ``FallbackStore``
puts a circuit breaker in front of a shared store and admits against a local share while the
shared one cannot be reached.

A store that cannot answer raises ``StoreUnavailable``, whatever its client raised underneath (a
refused connection, a timeout, an error reply, a cluster that lost a master): the breaker catches
that one type and depends on no client library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from proxy.quota.schedule import Window

MICROS = 1_000_000


class StoreUnavailable(Exception):  # noqa: N818 - the name the fallback logic speaks
    """The store could not decide: unreachable, too slow, or it refused the call.

    ``kind`` names what the client raised underneath (``ConnectionError``, ``TimeoutError``,
    ``ReplyError`` …); the message is the client's, which names no password.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind

    @classmethod
    def wrapping(cls, exc: BaseException) -> StoreUnavailable:
        """The error a client raised, as the store's one failure type."""
        return cls(type(exc).__name__, str(exc))


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
    #: deferred by the fair share (``proxy.quota.fair``): seconds until the caller's own earliest
    #: reservation comes due, when it may ask again; 0 for any other decision
    turn: float = 0.0


@dataclass(frozen=True, slots=True)
class Quota:
    """The windows of one route's quota, and where the store keeps them."""

    key: str
    windows: tuple[Window, ...]
    #: the width (µs) of each window, in order
    widths: tuple[int, ...] = field(init=False, compare=False, repr=False)
    #: the widest window's width (µs): how long an admission can still change a decision
    widest: int = field(init=False, compare=False, repr=False)
    #: the index of the narrowest window (the first of equals), which the fair share counts in
    narrow: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Worked out once: every admission asks for both.
        widths = tuple(w.width for w in self.windows)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "widest", max(widths, default=0))
        object.__setattr__(self, "narrow", widths.index(min(widths)) if widths else 0)


def quota_key(namespace: str, route: str, identity: str = "") -> str:
    """The key prefix of a route's quota for one identity ("": shared by every caller).

    The braces make the whole key one Redis Cluster hash slot. ``identity`` comes from
    ``proxy.identity`` (GUIDs, ``anonymous``, ``overflow``): no brace or colon can reach it.
    """
    if not identity:
        return f"dp:{{{namespace}:{route}}}"
    return f"dp:{{{namespace}:{route}:{identity}}}"


class QuotaStore(Protocol):
    """Admissions, give-backs and pauses, each atomic for all windows of one quota.

    Every call keeps to the store's own time budget and raises ``StoreUnavailable`` when it
    cannot be answered, never a client library's own error.
    """

    name: str

    async def admit(
        self,
        quota: Quota,
        member: str,
        max_wait: float,
        reserve: float,
        shadow: bool,
        not_before: float = 0.0,
    ) -> Decision:
        """Reserve the earliest slot within ``max_wait`` seconds, or refuse, or defer.

        A ``member`` tagged with its caller (``proxy.quota.fair``) that would take a slot
        while its caller already holds its share of the queue takes none: the decision is not
        admitted and its ``turn`` says when to ask again.

        ``reserve`` is the share of every window this request may not use (bulk). In ``shadow``
        mode the decision is computed but the admission is logged now, whatever it says. The slot
        is never earlier than ``not_before`` seconds from now (a slot another check already
        pushed back).
        """

    async def restore(self, quota: Quota, admissions: Sequence[tuple[str, float]]) -> None:
        """Log admissions decided elsewhere: (member, age), age being the seconds since the slot.

        A negative age is a reservation still to come. A member the store already holds keeps
        its time, so writing the same admissions twice counts them once. Ages, not times: the
        caller's clock and the store's need not agree, and an age arrives after it was measured,
        so each admission lands a little later than it was sent — the side on which a window
        stays full longer, never shorter.
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

    def tidy(self) -> None:
        """Drop now what this process holds that can no longer change a decision (the process
        has gone quiet: what it drops can be given back to the system)."""

    async def close(self) -> None:
        """Release connections."""


def window_name(width_seconds: float) -> str:
    """A window's label: ``1m``, ``1h``."""
    from proxy.units import format_duration

    return format_duration(width_seconds)


def as_windows(limits: Sequence[tuple[int, float]], margin: float) -> tuple[Window, ...]:
    """Windows from (count, seconds) pairs, each widened by the timing margin."""
    return tuple(Window(count, round((seconds + margin) * MICROS)) for count, seconds in limits)
