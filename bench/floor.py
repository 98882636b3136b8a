"""The floor of a bulk job: the earliest time each of its calls can be admitted under a quota's
sliding windows, the windows starting empty.

The strict API admits a call at ``t`` iff, for every limit of ``count`` per ``window``, fewer than
``count`` admitted calls lie in ``(t - window, t]`` (``proxy.simulator.quota``). Taking every call
at the earliest time the limits allow,

    t[0] = 0,  t[k] = max(t[k-1], max over the limits with k >= count of t[k-count] + window),

is as fast as any schedule can be: in any schedule the API accepts, sorted, ``s[k] >= s[k-1]``, and
``s[k] >= s[k-count] + window`` (else ``count + 1`` calls would lie in ``(s[k] - window, s[k]]``),
so by induction ``s[k] >= t[k]`` for every ``k``. The schedule bursts where the windows allow: for
20 per 2 s and 300 per minute, calls 1–300 go in bursts of 20 every 2 s, call 301 waits for the
first burst to leave the minute.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.units import Limit


def schedule(limits: Sequence[Limit], calls: int) -> list[float]:
    """When each of ``calls`` calls is admitted at the quota's own pace, seconds from the first."""
    times: list[float] = []
    for k in range(calls):
        at = times[-1] if times else 0.0
        for limit in limits:
            if k >= limit.count:
                at = max(at, times[k - limit.count] + limit.window)
        times.append(at)
    return times


def floor_seconds(limits: Sequence[Limit], calls: int) -> float:
    """How long ``calls`` calls take at exactly the quota's rate: the last one's admission."""
    times = schedule(limits, calls)
    return times[-1] if times else 0.0
