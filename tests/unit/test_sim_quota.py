"""The simulator's sliding-window quota against a brute-force model of its specification."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.simulator.quota import Refusal, SlidingQuota, format_window, refusal_message
from proxy.units import Limit


class FakeClock:
    """A clock the test sets by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(
    limits: list[Limit], times: list[float], count_rejected: bool = False
) -> tuple[SlidingQuota, list[Refusal | None]]:
    """Feed requests at ``times`` to a fresh quota; the quota and each decision."""
    clock = FakeClock()
    quota = SlidingQuota(limits, count_rejected, clock)
    decisions = []
    for t in times:
        clock.now = t
        decisions.append(quota.admit())
    return quota, decisions


def model(
    limits: list[Limit], times: list[float], count_rejected: bool
) -> tuple[list[int | None], list[float]]:
    """The specification, literally: each request's Retry-After (None if admitted), and admissions."""
    counted: list[float] = []
    admitted: list[float] = []
    answers: list[int | None] = []
    for t in times:
        ok = all(sum(t - lim.window < c <= t for c in counted) < lim.count for lim in limits)
        if ok or count_rejected:
            counted.append(t)
        if ok:
            admitted.append(t)
            answers.append(None)
            continue
        waits = []
        for lim in limits:
            inside = sorted(c for c in counted if t - lim.window < c <= t)
            if len(inside) >= lim.count:
                waits.append(inside[len(inside) - lim.count] + lim.window - t)
        answers.append(max(1, math.ceil(max(waits))))
    return answers, admitted


def busiest(admitted: list[float], window: float) -> int:
    """The most admitted timestamps in any interval (a, a + window], by brute force."""
    return max((sum(t - window < s <= t for s in admitted) for t in admitted), default=0)


limits_strategy = st.lists(
    st.builds(Limit, st.integers(1, 4), st.integers(1, 12).map(float)), min_size=1, max_size=3
)
times_strategy = st.lists(st.integers(0, 3), max_size=40).map(
    lambda steps: [float(sum(steps[: i + 1])) for i in range(len(steps))]
)


@given(limits=limits_strategy, times=times_strategy, count_rejected=st.booleans())
def test_quota_matches_the_specification(
    limits: list[Limit], times: list[float], count_rejected: bool
) -> None:
    """Every admission, Retry-After and busiest-window figure equals the brute-force model's."""
    quota, decisions = run(limits, times, count_rejected)
    expected, admitted = model(limits, times, count_rejected)
    assert [d.retry_after if d else None for d in decisions] == expected
    stats = quota.stats()
    assert stats["admitted"] == len(admitted)
    assert stats["throttled"] == len(times) - len(admitted)
    assert stats["max_in_window"] == {str(lim): busiest(admitted, lim.window) for lim in limits}
    for lim in limits:
        assert busiest(admitted, lim.window) <= lim.count


def test_retry_after_waits_for_every_limit() -> None:
    """Retry-After is the wait of the limit that frees last, and the message names that limit."""
    limits = [Limit(2, 10.0), Limit(3, 60.0)]
    _, decisions = run(limits, [0.0, 5.0, 6.0, 11.0, 12.0])
    assert decisions[:2] == [None, None]
    assert decisions[2] == Refusal(Limit(2, 10.0), 4)
    assert decisions[3] is None
    assert decisions[4] == Refusal(Limit(3, 60.0), 48)
    assert refusal_message(decisions[4]) == (
        "API calls quota exceeded! maximum allowed 3 per 00:01:00. Try again in 48 seconds."
    )


@pytest.mark.parametrize(("count_rejected", "admitted_at_10"), [(False, True), (True, False)])
def test_graph_like_quota_counts_refusals(count_rejected: bool, admitted_at_10: bool) -> None:
    """With count_rejected, requests refused at 5 s keep the window full at 10 s."""
    _, decisions = run([Limit(2, 10.0)], [0.0, 0.0, 5.0, 5.0, 10.0, 15.0], count_rejected)
    assert decisions[2] is not None
    assert (decisions[4] is None) is admitted_at_10
    assert decisions[5] is None


def test_memory_is_bounded_by_the_limits() -> None:
    """Ten thousand requests leave at most ``count`` timestamps per limit."""
    quota, _ = run([Limit(5, 10.0), Limit(50, 100.0)], [i * 0.25 for i in range(10_000)], True)
    for window in quota._windows:
        assert len(window.counted) <= window.limit.count
        assert len(window.admitted) <= window.limit.count


def test_reset_forgets_everything() -> None:
    """reset empties the counts and the window."""
    quota, decisions = run([Limit(1, 60.0)], [0.0, 1.0])
    assert decisions[1] is not None
    quota.reset()
    assert quota.stats() == {
        "requests": 0,
        "admitted": 0,
        "throttled": 0,
        "max_in_window": {"1/1m": 0},
    }
    assert quota.admit() is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10.0, "00:00:10"), (60.0, "00:01:00"), (3600.0, "01:00:00"), (90061.0, "25:01:01")],
)
def test_window_is_spelled_like_the_api(seconds: float, text: str) -> None:
    """Windows read hh:mm:ss, as in the API's own quota message."""
    assert format_window(seconds) == text
