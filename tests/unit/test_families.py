"""Tests for proxy.quota.families and the limiter's use of it: one ``other`` quota per path family,
made on first use, bounded, with one overflow quota and one warning past the bound."""

from __future__ import annotations

import pytest

from proxy import hints
from proxy.catalogue import OTHER, RouteSpec
from proxy.config import Throttle
from proxy.identity import NO_CLAIMS
from proxy.metrics import Metrics
from proxy.quota.families import MAX_FAMILIES, OVERFLOW, Families
from proxy.quota.limiter import Limiter, QuotaExceeded
from proxy.quota.memory import MemoryStore
from proxy.quota.store import as_windows
from proxy.units import Limit
from tests.conftest import LogCapture

WINDOWS = as_windows([(1, 60.0)], 0.0)


def test_each_family_has_its_own_key() -> None:
    """A family's quota is keyed by the route and the family, and made once."""
    families = Families("ns", OTHER, WINDOWS)
    name, first = families.quota("/api/things/*")
    assert (name, first.key) == ("/api/things/*", "dp:{ns:other:/api/things/*}")
    assert families.quota("/api/things/*")[1] is first
    assert families.quota("/api/widgets")[1].key != first.key
    assert first.windows == WINDOWS


def test_families_past_the_bound_share_the_overflow(captured_logs: LogCapture) -> None:
    """Past the bound new families are the overflow family; known ones keep theirs; one warning."""
    families = Families("ns", OTHER, WINDOWS, bound=2)
    for name in ("/a", "/b"):
        families.quota(name)
    names = [families.quota(name)[0] for name in ("/c", "/d", "/a")]
    assert names == [OVERFLOW, OVERFLOW, "/a"]
    assert families.quota("/c")[1] is families.quota("/e")[1]
    assert families.quota("/c")[1].key == f"dp:{{ns:other:{OVERFLOW}}}"
    assert len(families) == 2  # the overflow takes no place of a family
    [warning] = [line for line in captured_logs.lines() if line.get("bound") == 2]
    assert "/c" not in str(warning)
    assert "/d" not in str(warning)


def test_bound_is_a_named_constant() -> None:
    """The default bound is MAX_FAMILIES, and no family (they start with '/') is the overflow."""
    families = Families("ns", OTHER, WINDOWS)
    for n in range(MAX_FAMILIES):
        families.quota(f"/f{n}")
    assert families.quota("/one-more")[0] == OVERFLOW
    assert not OVERFLOW.startswith("/")


def _limiter() -> Limiter:
    other = RouteSpec(OTHER, (), (Limit(1, 60.0),))
    return Limiter(Throttle(max_wait=0.0, margin=0.0), (other,), {}, MemoryStore(), Metrics())


async def test_limiter_admits_each_family_apart() -> None:
    """One slot each: a second request of a family is refused, another family is admitted."""
    limiter = _limiter()
    await limiter.admit(OTHER, "m1", family="/api/things/*")
    with pytest.raises(QuotaExceeded):
        await limiter.admit(OTHER, "m2", family="/api/things/*")
    admission = await limiter.admit(OTHER, "m3", family="/api/widgets")
    assert ":other:/api/widgets:" in admission.quota.key
    await limiter.close()


async def test_upstream_429_pauses_only_its_family() -> None:
    """An API 429 for one unknown endpoint pauses that family's quota, not every other one."""
    limiter = _limiter()
    quota = limiter.quota_for(OTHER, NO_CLAIMS, "/api/things/*")
    await limiter.observe_answer(OTHER, 429, hints.upstream_hint("30", "", 0.0), quota)
    with pytest.raises(QuotaExceeded):
        await limiter.admit(OTHER, "m1", family="/api/things/*")
    await limiter.admit(OTHER, "m2", family="/api/widgets")
    await limiter.close()


def test_a_family_sent_to_the_overflow_stays_there_while_the_overflow_holds_anything() -> None:
    """A family that overflowed keeps the overflow after a place frees up, until the overflow has
    held nothing for a window: a fresh quota of its own could admit it twice in one window."""
    families = Families("ns", OTHER, WINDOWS, bound=1)
    families.quota("/a", now=0.0, until=60.0)
    assert families.quota("/b", now=1.0, until=61.0)[0] == OVERFLOW
    assert families.quota("/b", now=60.0, until=120.0)[0] == OVERFLOW  # "/a" has left
    assert families.quota("/b", now=120.0, until=180.0)[0] == "/b"
