"""The admission arithmetic: never more than L in any sliding window, and all of L when asked."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.quota.schedule import Window, cap_for, earliest, headroom

SECOND = 1_000_000


def _max_in_any_window(times: list[int], width: int) -> int:
    """The largest number of times in any interval (x - width, x] (exact, by brute force)."""
    ordered = sorted(times)
    return max((i + 1 - bisect_right(ordered, t - width) for i, t in enumerate(ordered)), default=0)


def _run(
    arrivals: list[int], windows: list[Window], max_wait: int, reserves: list[float]
) -> list[int]:
    logs: list[list[int]] = [[] for _ in windows]
    admitted = []
    for arrival, reserve in zip(sorted(arrivals), reserves, strict=False):
        slot = earliest(logs, windows, reserve, arrival)
        if slot - arrival <= max_wait:
            for log in logs:
                insort(log, slot)
            admitted.append(slot)
    return admitted


windows_strategy = st.lists(
    st.builds(
        Window,
        limit=st.integers(min_value=1, max_value=6),
        width=st.integers(min_value=1, max_value=20).map(lambda s: s * SECOND // 4),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda w: w.width,
)


@settings(max_examples=150, deadline=None)
@given(
    windows=windows_strategy,
    arrivals=st.lists(st.integers(min_value=0, max_value=30 * SECOND), max_size=60),
    max_wait=st.integers(min_value=0, max_value=20 * SECOND),
    reserves=st.lists(st.sampled_from([0.0, 0.2, 0.5]), min_size=60, max_size=60),
)
def test_no_window_ever_holds_more_than_its_limit(
    windows: list[Window], arrivals: list[int], max_wait: int, reserves: list[float]
) -> None:
    """Whatever arrives, in any order of priorities, every sliding window stays within its limit."""
    admitted = _run(arrivals, windows, max_wait, reserves)
    for window in windows:
        assert _max_in_any_window(admitted, window.width) <= window.limit


@settings(max_examples=100, deadline=None)
@given(windows=windows_strategy, count=st.integers(min_value=1, max_value=40))
def test_saturating_load_uses_the_whole_binding_limit(windows: list[Window], count: int) -> None:
    """Callers that all arrive at once get slots packed exactly: L per window, nothing wasted."""
    admitted = _run([0] * count, windows, 10**15, [0.0] * count)
    assert len(admitted) == count
    # Replaying with an oracle: each admission is at the earliest time any window allows.
    for i, slot in enumerate(admitted):
        earlier = admitted[:i]
        if slot == 0:
            continue
        blocked_just_before = any(
            i - bisect_left(earlier, slot - 1 - w.width + 1) + 1 > w.limit for w in windows
        )
        assert blocked_just_before, f"slot {slot} could have been earlier"


def test_classic_example_two_per_minute() -> None:
    """2 per minute: two at once, then two more exactly a minute later — not one every 30 s."""
    window = Window(2, 60 * SECOND)
    assert _run([0, 0, 0, 0, 0], [window], 10**12, [0.0] * 5) == [
        0,
        0,
        60 * SECOND,
        60 * SECOND,
        120 * SECOND,
    ]


def test_bulk_cap_keeps_a_reserve() -> None:
    """The bulk cap is the limit less the reserve, but never below one."""
    assert cap_for(100, 0.2) == 80
    assert cap_for(2, 0.2) == 1
    assert cap_for(1, 0.5) == 1
    assert cap_for(10, 0.0) == 10


def test_headroom_counts_reservations_as_used() -> None:
    """Remaining subtracts future reservations, and reset is when the oldest entry leaves."""
    window = Window(5, 10 * SECOND)
    log = [0, 1 * SECOND, 12 * SECOND]
    remaining, reset = headroom(log, window, 2 * SECOND)
    assert remaining == 2
    assert reset == 8 * SECOND
