"""Tools with different numbers of workers on one full quota, on a virtual clock: with the fair
share they finish together; without it, the one with more workers finishes first."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Awaitable

from proxy.config import Throttle, effective_routes, route_policies
from proxy.metrics import Metrics
from proxy.quota.limiter import Limiter, QuotaExceeded
from proxy.quota.memory import MemoryStore
from proxy.throttle_config import RouteOverride
from proxy.units import parse_limit

ROUTE = "machines.list"
DEFERRALS = "defender_proxy_fair_share_deferrals_total"


class VirtualTime:
    """A clock many tasks sleep on at once: time jumps to the next wake-up once every task has
    gone as far as it can without time passing."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        #: every sleep asked for, in seconds
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), woken))
        await woken

    async def run(self, *jobs: Awaitable[object]) -> None:
        tasks = [asyncio.ensure_future(job) for job in jobs]
        for _ in range(100_000):
            for _ in range(20):  # let every task reach its next sleep (the store never blocks)
                await asyncio.sleep(0)
            if all(task.done() for task in tasks):
                break
            when, _, woken = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            woken.set_result(None)
        await asyncio.gather(*tasks)


def limiter(
    clock: VirtualTime,
    fair_share: bool,
    *limits: str,
    margin: float = 0.0,
    metrics: Metrics | None = None,
) -> Limiter:
    shape = tuple(parse_limit(text) for text in limits or ("2/1s", "30/1m"))
    route = RouteOverride(ROUTE, None, shape, None, None)
    throttle = Throttle(max_wait=600.0, margin=margin, routes=(route,), fair_share=fair_share)
    return Limiter(
        throttle,
        effective_routes(throttle),
        route_policies(throttle),
        MemoryStore(clock),
        metrics or Metrics(),
        random.Random(7),
        clock=clock,
        sleep=clock.sleep,
    )


async def finishes(
    fair_share: bool,
    workers: dict[str, int],
    calls: int,
    latency: tuple[float, float] = (0.0, 0.0),
    limits: tuple[str, ...] = (),
    margin: float = 0.0,
) -> dict[str, float]:
    """Each tool runs ``calls`` admissions over its workers, each followed by the API's own time
    (uniform within ``latency``, seeded); the time its last one was answered."""
    clock = VirtualTime()
    quota = limiter(clock, fair_share, *limits, margin=margin)
    done: dict[str, float] = {}
    ids = itertools.count()
    jitter = random.Random(11)

    async def worker(tool: str, share: list[int]) -> None:
        while share[0] > 0:
            share[0] -= 1
            await quota.admit(ROUTE, f"r{next(ids)}", client=tool)
            if latency[1]:
                await clock.sleep(jitter.uniform(*latency))
            done[tool] = clock.now

    jobs = []
    for tool, count in workers.items():
        share = [calls]
        jobs += [worker(tool, share) for _ in range(count)]
    await clock.run(*jobs)
    return {tool: at - 1000.0 for tool, at in done.items()}


def spread(ends: dict[str, float]) -> float:
    """(latest finish - earliest finish) / latest finish."""
    return (max(ends.values()) - min(ends.values())) / max(ends.values())


async def test_tools_with_one_three_and_eight_workers_finish_together() -> None:
    """20 calls each on 2/1s and 30/1m: with the fair share the tools finish within 5 % of each
    other, at the quota's own pace (60 calls: 30 in the first minute, 30 from the next)."""
    ends = await finishes(True, {"siem-connector": 1, "soar": 8, "script": 3}, 20)
    assert spread(ends) <= 0.05
    assert max(ends.values()) <= 74.5


async def test_the_share_holds_when_each_call_takes_the_apis_own_time() -> None:
    """With 50 ms of API time after each admission (a worker holds nothing meanwhile), the
    tools still finish within 7 % of each other; first come, first served, the eight workers
    finish before the single one by far."""
    workers = {"siem-connector": 1, "soar": 8, "script": 3}
    ends = await finishes(True, workers, 20, latency=(0.05, 0.05))
    assert spread(ends) <= 0.07
    queued = await finishes(False, workers, 20, latency=(0.05, 0.05))
    assert spread(queued) >= 0.5
    assert queued["soar"] < ends["soar"]


async def test_a_window_freeing_many_slots_at_once_is_shared_too() -> None:
    """On 20/2s and 300/1m (plus 100 ms of margin) with 2–5 ms of API time, each window's slots
    come free at once, within milliseconds; the callers on their way back are waited for, so
    tools with 1, 4 and 2 workers finish within 5 % of each other, and the last within 1 % of
    when first come, first served finishes its last (which lets the four workers finish in
    under half that)."""
    workers = {"siem-connector": 1, "soar": 4, "script": 2}
    shape = {"latency": (0.002, 0.005), "limits": ("20/2s", "300/1m"), "margin": 0.1}
    ends = await finishes(True, workers, 160, **shape)  # type: ignore[arg-type]
    queued = await finishes(False, workers, 160, **shape)  # type: ignore[arg-type]
    assert spread(ends) <= 0.05
    assert max(ends.values()) <= 1.01 * max(queued.values())
    assert queued["soar"] < 0.5 * max(queued.values())


async def test_without_the_share_the_tool_with_more_workers_finishes_first() -> None:
    """The same jobs first come, first served: the single worker finishes far behind."""
    ends = await finishes(False, {"siem-connector": 1, "soar": 8, "script": 3}, 20)
    assert spread(ends) >= 0.15
    assert ends["siem-connector"] == max(ends.values())


async def test_a_deferred_caller_still_keeps_its_deadline() -> None:
    """A caller deferred, then passed by a newcomer while it waited, is refused at its deadline."""
    clock = VirtualTime()
    quota = limiter(clock, True, "1/1s")
    outcomes: dict[str, str] = {}

    async def call(tool: str, member: str, max_wait: float | None = None, at: float = 0) -> None:
        if at:
            await clock.sleep(at)
        try:
            outcomes[member] = (await quota.admit(ROUTE, member, max_wait, client=tool)).outcome
        except QuotaExceeded as refused:
            outcomes[member] = f"refused {refused.retry_after}"

    # a: now, 1 s, 2 s; b: 3 s, 4 s; a's sixth would fit at 5 s, but a has used more than b: it
    # is deferred to its turn. At 0.5 s a newcomer takes 5 s; from then on the next is 6 s, past
    # the 5.5 s a's sixth allowed.
    await clock.run(
        call("a", "a1"),
        call("a", "a2"),
        call("a", "a3"),
        call("b", "b4"),
        call("b", "b5"),
        call("a", "a6", max_wait=5.5),
        call("c", "c7", at=0.5),
    )
    assert outcomes["a1"] == "admitted"
    assert outcomes["c7"] == "waited"
    assert outcomes["a6"].startswith("refused ")


async def test_a_turn_microseconds_away_is_slept_as_a_millisecond_and_counted() -> None:
    """A caller deferred for a grace that ends 1 µs later sleeps 1 ms before it asks again (no
    spin on the store), and each deferral is counted for its route."""
    clock = VirtualTime()
    metrics = Metrics()
    quota = limiter(clock, True, "5/1s", metrics=metrics)
    for member in ("a0", "a1", "a2"):
        await quota.admit(ROUTE, member, client="a")
    await quota.admit(ROUTE, "plain")
    await quota.admit(ROUTE, "b0", client="b")
    # b was admitted at 1000.0; its grace (1 s / 50) ends at 1000.02.
    clock.now = 1000.02 - 1e-6
    clock.slept.clear()
    outcome: list[str] = []

    async def late() -> None:
        outcome.append((await quota.admit(ROUTE, "a3", client="a")).outcome)

    await clock.run(late())
    assert outcome == ["waited"]
    assert clock.slept[0] == 0.001
    counted = metrics.registry.get_sample_value(DEFERRALS, {"route": ROUTE})
    assert counted == 1


async def test_without_the_share_nothing_is_deferred_or_counted() -> None:
    """throttle.fair_share off: the same calls take their slots first come, first served."""
    clock = VirtualTime()
    metrics = Metrics()
    quota = limiter(clock, False, "5/1s", metrics=metrics)
    for member in ("a0", "a1", "a2"):
        await quota.admit(ROUTE, member, client="a")
    await quota.admit(ROUTE, "b0", client="b")
    await clock.run(quota.admit(ROUTE, "a3", client="a"), quota.admit(ROUTE, "a4", client="a"))
    assert not metrics.registry.get_sample_value(DEFERRALS, {"route": ROUTE})
    assert clock.slept
    assert min(clock.slept) > 0.5
