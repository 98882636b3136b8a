"""The goodput benchmark's floor (the quota's own pace, against the simulator's quota as oracle)
and the configs it starts the proxy with."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.floor import floor_seconds, schedule
from bench.goodput_settings import parse_args, proxy_config
from proxy.config import parse_settings
from proxy.simulator.quota import SlidingQuota
from proxy.units import Limit

# Whole-second windows: the simulator's Retry-After is whole seconds, so with them the oracle
# below steps exactly from one admission time to the next.
limits_st = st.lists(
    st.builds(Limit, st.integers(1, 30), st.integers(1, 90).map(float)),
    min_size=1,
    max_size=3,
)


def admitted_greedily(limits: list[Limit], calls: int) -> list[float]:
    """When the simulator's quota admits ``calls`` calls offered as soon as it lets them in:
    every call it would take now, then a wait of its Retry-After."""
    now = [0.0]
    quota = SlidingQuota(limits, False, lambda: now[0])
    admitted: list[float] = []
    while len(admitted) < calls:
        refusal = quota.admit()
        if refusal is None:
            admitted.append(now[0])
        else:
            now[0] += refusal.retry_after
    return admitted


@settings(max_examples=200, deadline=None)
@given(limits_st, st.integers(0, 400))
def test_floor_is_the_strict_quota_taken_as_fast_as_it_admits(
    limits: list[Limit], calls: int
) -> None:
    """The floor schedule is exactly the admissions of the simulator's quota under greedy offers."""
    assert schedule(limits, calls) == admitted_greedily(limits, calls)


@settings(max_examples=200, deadline=None)
@given(limits_st, st.integers(1, 400))
def test_floor_never_overfills_a_window(limits: list[Limit], calls: int) -> None:
    """No interval (t - window, t] of the floor schedule holds more than the limit's count."""
    times = schedule(limits, calls)
    for t in times:
        for limit in limits:
            assert sum(t - limit.window < s <= t for s in times) <= limit.count


@settings(max_examples=200, deadline=None)
@given(limits_st, st.integers(1, 400))
def test_floor_cannot_lose_a_call_earlier(limits: list[Limit], calls: int) -> None:
    """Each call after the first is pinned: at its predecessor's time, or exactly one window after
    the call ``count`` before it — so no call can move earlier without moving one before it."""
    times = schedule(limits, calls)
    assert times[0] == 0.0
    for k in range(1, calls):
        pinned = {times[k - 1]} | {
            times[k - lim.count] + lim.window for lim in limits if k >= lim.count
        }
        assert times[k] in pinned
    assert floor_seconds(limits, calls) == times[-1]


def test_floor_of_the_default_shape() -> None:
    """20 per 2 s and 300 per minute: 480 calls end at 76 s (300 in 15 bursts from 0 to 28 s,
    then 180 in 9 bursts from 60 to 76 s, as the first bursts leave the minute)."""
    assert floor_seconds([Limit(20, 2.0), Limit(300, 60.0)], 480) == 76.0
    assert floor_seconds([Limit(20, 2.0), Limit(300, 60.0)], 300) == 28.0


@pytest.mark.parametrize("argv", [[], ["--quick"]], ids=["default", "quick"])
@pytest.mark.parametrize("store", [0, 6379], ids=["memory", "redis"])
def test_goodput_proxy_config_is_valid(argv: list[str], store: int) -> None:
    """The goodput proxies' config passes check-config's checks and carries the bench's limits."""
    bench = parse_args(argv)
    parsed = parse_settings(
        yaml.safe_load(proxy_config(bench, store, 3, "goodput")), "bench", environ={}
    )
    (route,) = parsed.throttle.routes
    assert route.limits == bench.limits
    assert parsed.throttle.max_wait == bench.max_wait
    assert parsed.throttle.store == ("memory" if not store else f"redis://127.0.0.1:{store}/0")


def test_goodput_calls_must_bind_the_long_limit() -> None:
    """A total of calls the longest window's count can hold is refused: both limits must bind."""
    with pytest.raises(SystemExit):
        parse_args(["--calls", "300"])
