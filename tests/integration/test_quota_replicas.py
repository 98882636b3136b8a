"""The shared quota across replicas: several proxy processes on one private Redis, for real.

Each test starts its own ``redis-server`` (never the shared one on 6379), the simulator
(``defender-proxy simulate``) and the proxies as subprocesses on 127.0.0.1, drives them with
HTTP clients and reads the simulator's ``/_sim/stats``, the proxies' ``/metrics`` and their logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.errors import PROXY_HEADER
from proxy.quota_headers import MAX_WAIT_HEADER
from tests.faultkit import Answer, get, paced, sample
from tests.procs import Process, start_cli
from tests.support.redis import RedisServer

pytestmark = pytest.mark.slow

FALLBACK = "defender_proxy_quota_store_fallback"
FALLBACK_WARNING = "quota store unreachable: admitting against the local share"
RECOVERED = "quota store reachable again: the shared quota is back"


@dataclass(slots=True)
class Replica:
    """One proxy process and the ports it listens on."""

    process: Process
    port: int
    admin: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.process.lines if line.get("event") == event]


class Cluster:
    """The simulator and the proxies of one test, all stopped at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[Process] = []
        self.readers: list[asyncio.Task[None]] = []

    async def simulator(self, *limits: str) -> int:
        """Start the simulator with ``--limit`` for each of ``limits``; its port."""
        args = [arg for limit in limits for arg in ("--limit", limit)]
        process = await start_cli("simulate", "--port", "0", *args)
        self.processes.append(process)
        line = await process.wait_for("_text")
        assert "listening on http://127.0.0.1:" in line["text"], line
        return int(line["text"].strip().rsplit(":", 1)[1])

    async def replicas(self, count: int, simulator: int, throttle: str) -> list[Replica]:
        """Start ``count`` proxies with one config: the simulator upstream, ``throttle`` as given."""
        config = self.workdir / f"proxy-{len(self.processes)}.yaml"
        config.write_text(
            f"upstream: http://127.0.0.1:{simulator}\n"
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
            "timeouts: {connect: 1s, read: 10s}\nshutdown_grace: 1s\n"
            f"throttle: {throttle}\n"
        )
        return list(await asyncio.gather(*(self._replica(config) for _ in range(count))))

    async def _replica(self, config: Path) -> Replica:
        process = await start_cli("run", "--config", str(config))
        self.processes.append(process)
        line = await process.wait_for("listening")
        # One log line per request: keep reading, or a full pipe would stall the proxy's loop.
        self.readers.append(asyncio.create_task(process.drain_output()))
        return Replica(
            process, int(line["proxy"].rsplit(":", 1)[1]), int(line["admin"].rsplit(":", 1)[1])
        )

    async def close(self) -> None:
        for process in self.processes:
            await process.stop()
        for reader in self.readers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 5)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A place to start the simulator and proxies; every process is killed at teardown."""
    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        await started.close()


async def metrics(session: aiohttp.ClientSession, replica: Replica) -> str:
    async with session.get(f"http://127.0.0.1:{replica.admin}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def stats(session: aiohttp.ClientSession, simulator: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{simulator}/_sim/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


# -- 1. several replicas, one quota ---------------------------------------------------------------

LIMIT = 20
WINDOW = 2.0
MARGIN = 0.1
#: The proxy's windows are the API's widened by the margin.
WIDTH = WINDOW + MARGIN
#: Just under three of the proxy's windows: where the utilisation bound below is tightest.
LOAD_SECONDS = 3 * WIDTH - 0.05
#: More callers than the limit, so a slot that comes back always has a caller waiting for it.
CLIENTS_PER_REPLICA = 8


async def saturate(
    session: aiohttp.ClientSession, url: str, until: float, out: list[Answer]
) -> None:
    """Ask again as soon as each answer is in, until ``until`` (and at most 100 times)."""
    for _ in range(100):
        if time.monotonic() >= until:
            return
        out.append(await get(session, url))


async def test_replicas_share_one_quota_without_upstream_429s(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """Three replicas under saturating load never exceed the API's 20/2s and use ≥95% of it."""
    simulator = await cluster.simulator(f"{LIMIT}/2s")
    replicas = await cluster.replicas(
        3,
        simulator,
        f"{{store: '{redis_server.url}', namespace: t1, max_wait: 10s, margin: 100ms,"
        f" routes: [{{name: machines.list, limits: ['{LIMIT}/2s']}}]}}",
    )
    answers: list[Answer] = []
    async with aiohttp.ClientSession() as session:
        url = "/api/machines"
        start = time.monotonic()
        end = start + LOAD_SECONDS
        async with asyncio.timeout(LOAD_SECONDS + 15):
            await asyncio.gather(
                *(
                    saturate(session, f"{replica.url}{url}", end, answers)
                    for replica in replicas
                    for _ in range(CLIENTS_PER_REPLICA)
                )
            )
        upstream = await stats(session, simulator)
        texts = [await metrics(session, replica) for replica in replicas]

    fallbacks = [sample(text, "defender_proxy_quota_store_fallbacks_total") for text in texts]
    assert fallbacks == [0.0, 0.0, 0.0], fallbacks
    assert upstream["throttled"] == 0, upstream
    assert upstream["max_in_window"][f"{LIMIT}/2s"] <= LIMIT, upstream
    kinds = {(a.status, a.proxy_error, a.error) for a in answers}
    assert kinds <= {(200, None, ""), (429, "TooManyRequests", "")}, kinds
    forwarded = [a for a in answers if a.status == 200]
    assert upstream["admitted"] == upstream["requests"] == len(forwarded), upstream
    # Utilisation, against the proxy's own windows (WIDTH = 2 s + 100 ms margin). Keeping at most
    # LIMIT in any WIDTH, no scheduler admits more than LIMIT·⌈T/WIDTH⌉ in T seconds, nor more than
    # LIMIT/WIDTH per second in the long run. Under saturation the sliding log reaches both: LIMIT
    # at once at t0 ≈ start, and each slot again exactly WIDTH after it was spent, so by `end` it
    # has admitted LIMIT·(⌊(end − t0)/WIDTH⌋ + 1) ≥ LIMIT·T/WIDTH. With T = 3·WIDTH − 50 ms that is
    # 60 admissions against a rate bound of 20·6.25/2.1 = 59.5; 95% of it is 56.5 (a split of the
    # quota into fixed per-replica shares, 3 × 6 per window, would get 54). Only answers received
    # by `end` are counted, which errs low, never high.
    in_time = sum(1 for a in forwarded if a.done <= end)
    bound = LIMIT * (end - start) / WIDTH
    assert in_time >= 0.95 * bound, (in_time, bound, upstream)


# -- 2. Redis stopped and restarted under load ----------------------------------------------------

#: Each caller waits this long between requests: well inside the local share of the limit.
PACE = 0.02
CLIENTS = 3
#: Seconds from the restart to both replicas on the shared quota again: six one-second cooldowns.
RECOVERY_DEADLINE = 6.0


async def request_lines(replicas: list[Replica], count: int) -> list[dict[str, Any]]:
    """The replicas' ``request`` log lines, once all ``count`` of them have been read."""
    async with asyncio.timeout(5):
        while True:
            lines = [line for replica in replicas for line in replica.events("request")]
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.05)


async def on_shared_quota(
    session: aiohttp.ClientSession, replicas: list[Replica], deadline: float
) -> list[str]:
    """The replicas' /metrics once none is on its local share; TimeoutError after ``deadline``."""
    async with asyncio.timeout(deadline):
        while True:
            texts = [await metrics(session, replica) for replica in replicas]
            if all(sample(text, FALLBACK) == 0.0 for text in texts):
                return texts
            await asyncio.sleep(0.1)


async def test_redis_outage_falls_back_to_the_local_share_then_recovers(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """Redis stopped then restarted under load: no 5xx, no slow answer, fallback then recovery."""
    simulator = await cluster.simulator()
    replicas = await cluster.replicas(
        2,
        simulator,
        f"{{store: '{redis_server.url}', namespace: t2, store_timeout: 50ms,"
        " fallback: {expected_replicas: 2, cooldown: 1s},"
        " routes: [{name: machines.list, limits: ['1000/1s']}]}",
    )
    answers: list[Answer] = []
    async with aiohttp.ClientSession() as session:
        stop = asyncio.Event()
        load = asyncio.gather(
            *(
                paced(session, f"{replica.url}/api/machines", stop, answers, PACE)
                for replica in replicas
                for _ in range(CLIENTS)
            )
        )
        try:
            async with asyncio.timeout(10 + RECOVERY_DEADLINE):
                await asyncio.sleep(1.0)
                await redis_server.stop()
                stopped = len(answers)
                await asyncio.sleep(1.0)
                during = [await metrics(session, replica) for replica in replicas]
                await asyncio.sleep(1.0)
                await redis_server.start()
                restarted = len(answers)
                # Back within a cooldown of the restart, a few more if the first calls to the
                # fresh server (reconnect, script reload) miss the store timeout: the deadline.
                recovered = await on_shared_quota(session, replicas, RECOVERY_DEADLINE)
                await asyncio.sleep(1.0)  # a last second of load on the shared quota
        finally:
            stop.set()
            await load
    keys = await redis_server.command("DBSIZE")

    failed = [a for a in answers if a.status == 0 or a.status >= 500]
    assert not failed, failed[:5]
    assert {a.status for a in answers} == {200}, {a.status for a in answers}
    assert restarted - stopped > 50, "too little load during the outage to test anything"
    # The quota imposes no wait here, so a request spends at most about one store timeout (50 ms)
    # in the proxy before it is forwarded; allow ten for a busy host. Seen from the client the
    # simulator's time and the host's scheduling add to it: a looser bound.
    lines = await request_lines(replicas, len(answers))
    held = max(line["duration_ms"] - (line["upstream_ms"] or 0.0) for line in lines) / 1000
    assert held < 0.5, held
    slowest = max(a.seconds for a in answers)
    assert slowest < 1.0, slowest
    for text in during:
        assert sample(text, FALLBACK) == 1.0
    for replica, text in zip(replicas, recovered, strict=True):
        assert (sample(text, "defender_proxy_quota_store_fallbacks_total") or 0) >= 1
        assert sample(text, FALLBACK) == 0.0
        events = [line["event"] for line in replica.process.lines]
        assert FALLBACK_WARNING in events, events[-20:]
        assert RECOVERED in events[events.index(FALLBACK_WARNING) :], events[-20:]
    # The restarted server holds the quota's logs again: admissions went back to Redis.
    assert keys.startswith(b":"), keys
    assert int(keys[1:]) >= 1, keys


# -- 3. an upstream 429 pauses every replica ------------------------------------------------------


async def test_upstream_429_pauses_the_other_replicas_too(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """A 429 with Retry-After: 2 seen by replica A holds replica B's requests for about 2 s."""
    simulator = await cluster.simulator()
    a, b = await cluster.replicas(
        2,
        simulator,
        f"{{store: '{redis_server.url}', namespace: t3, max_wait: 10s, margin: 100ms,"
        " routes: [{name: machines.list, limits: ['1000/1m']}]}",
    )
    async with aiohttp.ClientSession() as session:
        throttled = await get(
            session,
            f"{a.url}/api/machines",
            {"X-Simulate": "error=TooManyRequests;retry-after=2"},
        )
        assert (throttled.status, throttled.proxy_error) == (429, None)  # the API's own 429
        refused_at = time.monotonic()
        async with session.get(
            f"{b.url}/api/machines", headers={MAX_WAIT_HEADER: "0s"}
        ) as response:
            assert response.status == 429
            assert response.headers.get(PROXY_HEADER) == "TooManyRequests"
            assert int(response.headers["Retry-After"]) >= 1
        held = await get(session, f"{b.url}/api/machines")
        texts = [await metrics(session, a), await metrics(session, b)]
        upstream = await stats(session, simulator)
    # Retry-After 2, jittered up to +10%: the pause ends 2.0–2.2 s after A saw the 429.
    waited = held.done - refused_at
    assert held.status == 200
    assert 1.5 <= waited <= 2.2 + 0.5, waited
    name = "defender_proxy_upstream_throttled_total"
    assert sample(texts[0], name, route="machines.list", cause="calls") == 1.0
    assert (sample(texts[1], name) or 0) == 0  # B learned of the pause from Redis, not the API
    # The refused request never reached the API: the throttled one and the held one did.
    assert upstream["requests"] == 2, upstream


# -- the fair share across replicas ---------------------------------------------------------------


async def test_sidecars_share_one_quota_fairly_through_redis(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """Two sidecars on one Redis, a six-worker tool behind one and a single-worker tool behind
    the other: once the single worker is queued, the API never gets three calls in a row from
    the six workers — the turns are kept in Redis, not in either replica (first come, first
    served, it gets six)."""
    simulator = await cluster.simulator("2/200ms")
    soar, siem = await cluster.replicas(
        2,
        simulator,
        f"{{store: '{redis_server.url}', namespace: fair, max_wait: 10s, margin: 20ms,"
        " routes: [{name: machines.list, limits: ['2/200ms']}]}",
    )
    ids = {tool: [str(uuid.uuid4()) for _ in range(12)] for tool in ("soar", "siem")}

    async def worker(session: aiohttp.ClientSession, url: str, tool: str, mine: list[str]) -> None:
        while mine:
            headers = {"client-request-id": mine.pop(), "X-Defender-Proxy-Client": tool}
            async with session.get(f"{url}/api/machines", headers=headers) as response:
                assert response.status == 200

    pending = {tool: list(given) for tool, given in ids.items()}
    async with aiohttp.ClientSession() as session, asyncio.timeout(30):
        await asyncio.gather(
            *(worker(session, soar.url, "soar", pending["soar"]) for _ in range(6)),
            worker(session, siem.url, "siem", pending["siem"]),
        )
        async with session.get(f"http://127.0.0.1:{simulator}/_sim/requests") as response:
            entries = (await response.json())["requests"]
        upstream = await stats(session, simulator)
    assert upstream["throttled"] == 0, upstream
    order = "".join("s" if entry["id"] in ids["siem"] else "o" for entry in entries)
    assert len(order) == 24
    after = order[order.index("s") : order.rindex("o") + 1]
    assert max(len(run) for run in after.split("s")) <= 2, order
