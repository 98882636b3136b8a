"""Rolling the gateway under load: two proxies on one Redis quota, replaced one after the other
as Kubernetes replaces the pods of ``deploy/overlays/gateway``, with nothing lost on the way.

The simulator, a private redis-server and the proxies run as real processes on 127.0.0.1. A
round-robin client stands for the Service: its rotation is the endpoints. A roll follows the
Deployment's strategy (maxSurge 1, maxUnavailable 0) and the pod's preStop delay: the replacement
starts and joins the rotation once its ``/readyz`` answers 200; then the old pod is deleted, the
rotation drops it after a propagation lag, and SIGTERM comes at the end of the preStop delay
(both shortened here), while long requests that reached it just before are still in flight.
Every request is a ``POST …/isolate`` with its own machine id, which the simulator's ``echo``
sends back: an answer proves the upstream saw that very request.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from proxy.errors import PROXY_HEADER
from tests.faultkit import FALLBACK_WARNING, CliProxy, start_proxy
from tests.procs import Process, start_cli
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: Callers sending back to back, each waiting for its answer.
CALLERS = 6
#: How long the simulator holds an ordinary request, and one of the long ones.
QUICK = 0.02
LONG = 1.5
#: The preStop delay, and the part of it the endpoints take to drop the pod (both shortened from
#: the overlay's 5 s: the order of events is what counts).
PRESTOP = 1.0
PROPAGATION = 0.3
#: Long requests that reach the old pod just before the endpoints drop it, per roll.
LONG_PER_ROLL = 2
SHUTDOWN_GRACE = 5.0
#: Bounds on the load, whatever happens: requests in all, and seconds in all.
MAX_REQUESTS = 5000
MAX_SECONDS = 90.0
NAMESPACE = "rollout"
ROUTE = "machines.isolate"
#: One window, far above the load: the quota is shared and counted, never in the way.
LIMIT = "100000/1h"
#: Sums the admissions logged in every window of the namespace (one sorted set per window).
COUNT_ADMISSIONS = (
    "local n = 0 "
    "for _, key in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('ZCARD', key) end "
    "return n"
)


class Fleet:
    """The simulator and every proxy of one test, all stopped at teardown."""

    def __init__(self, workdir: Path, redis: RedisServer) -> None:
        self.config = workdir / "proxy.yaml"
        self.redis = redis
        self.processes: list[Process] = []
        self.replicas: list[CliProxy] = []
        self.simulator = 0

    async def start_simulator(self) -> None:
        process = await start_cli("simulate", "--port", "0")
        self.processes.append(process)
        line = await process.wait_for("_text")
        assert "listening on http://127.0.0.1:" in line["text"], line
        self.simulator = int(line["text"].strip().rsplit(":", 1)[1])
        self.config.write_text(
            f"upstream: http://127.0.0.1:{self.simulator}\n"
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
            f"timeouts: {{connect: 1s, read: 10s}}\nshutdown_grace: {SHUTDOWN_GRACE}s\n"
            f"throttle: {{store: '{self.redis.url}', namespace: {NAMESPACE},"
            f" routes: [{{name: {ROUTE}, limits: ['{LIMIT}']}}]}}\n"
        )

    async def start_proxy(self, client: httpx.AsyncClient) -> CliProxy:
        """A new proxy, once its /readyz answers 200 (the readiness gate of a new pod)."""
        replica = await start_proxy(self.config.parent, None, self.config)
        self.replicas.append(replica)
        async with asyncio.timeout(10):
            while True:
                ready = await client.get(f"http://127.0.0.1:{replica.admin}/readyz")
                if ready.status_code == 200:
                    return replica
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        for process in self.processes:
            await process.stop()
        for replica in self.replicas:
            await replica.close()

    async def upstream_requests(self, client: httpx.AsyncClient) -> int:
        """How many requests the simulator was sent."""
        stats = (await client.get(f"http://127.0.0.1:{self.simulator}/_sim/stats")).json()
        return int(stats["requests"])


@pytest.fixture
async def fleet(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Fleet]:
    """The simulator in front of which proxies are started; every process killed at teardown."""
    started = Fleet(tmp_path, redis_server)
    try:
        await started.start_simulator()
        yield started
    finally:
        await started.close()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request got: an answer (status, the path the upstream echoed) or an error."""

    number: int
    target: str
    status: int | None = None
    proxy_error: str | None = None
    echoed: str | None = None
    error: str | None = None

    @property
    def path(self) -> str:
        return f"/api/machines/{self.number:040x}/isolate"


class Service:
    """The Service in front of the proxies: a rotation of endpoints taken in turn."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.rotation: list[str] = []
        self.outcomes: list[Outcome] = []
        self._numbers = itertools.count()
        self._turn = itertools.count()

    async def send(self, hold: float, target: str | None = None) -> None:
        """One request, to ``target`` or the next endpoint in the rotation; its outcome kept."""
        number = next(self._numbers)
        if target is None:
            target = self.rotation[next(self._turn) % len(self.rotation)]
        sent = Outcome(number, target)
        try:
            response = await self.client.post(
                f"{target}{sent.path}",
                json={"Comment": f"rollout {number}", "IsolationType": "Selective"},
                headers={"X-Simulate": f"echo;slow={round(hold * 1000)}ms"},
            )
        except httpx.TransportError as exc:
            self.outcomes.append(Outcome(number, target, error=type(exc).__name__))
            return
        echoed = None
        if response.status_code == 200:
            echoed = orjson.loads(response.content)["raw_path"]
        self.outcomes.append(
            Outcome(
                number,
                target,
                status=response.status_code,
                proxy_error=response.headers.get(PROXY_HEADER),
                echoed=echoed,
            )
        )

    async def load(self, stop: asyncio.Event) -> None:
        """``CALLERS`` callers sending back to back until ``stop`` (or ``MAX_REQUESTS`` sent)."""

        async def caller() -> None:
            while not stop.is_set() and len(self.outcomes) < MAX_REQUESTS:
                await self.send(QUICK)

        await asyncio.gather(*(caller() for _ in range(CALLERS)))


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def _exits_zero(replica: CliProxy) -> None:
    """The process exits 0 within its grace, and every line it printed has been read."""
    assert await asyncio.wait_for(replica.process.proc.wait(), SHUTDOWN_GRACE + 5) == 0
    await asyncio.wait_for(replica.reader, 5)
    assert replica.process.lines[-1]["event"] == "stopped", replica.process.lines[-3:]


async def _roll(fleet: Fleet, service: Service, old: CliProxy) -> CliProxy:
    """Replace ``old`` as the gateway's Deployment and preStop hook do; the new replica."""
    new = await fleet.start_proxy(service.client)
    service.rotation.append(new.url)
    # Deleted: until the endpoints drop it, the old pod still gets requests, long ones among them.
    late = [asyncio.create_task(service.send(LONG, target=old.url)) for _ in range(LONG_PER_ROLL)]
    await asyncio.sleep(PROPAGATION)
    service.rotation.remove(old.url)
    await asyncio.sleep(PRESTOP - PROPAGATION)
    old.process.proc.send_signal(signal.SIGTERM)
    await _exits_zero(old)
    await asyncio.gather(*late)
    return new


async def test_rolling_both_proxies_under_load_loses_nothing(fleet: Fleet) -> None:
    """Two proxies on one Redis quota, rolled one after the other under round-robin load: every
    request gets one 200 from the upstream, which saw it exactly once; none fails or is refused."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False) as client:
        service = Service(client)
        first, second = [await fleet.start_proxy(client) for _ in range(2)]
        service.rotation += [first.url, second.url]
        stop = asyncio.Event()
        async with asyncio.timeout(MAX_SECONDS):
            load = asyncio.create_task(service.load(stop))
            await _until(lambda: len(service.outcomes) >= 50)
            third = await _roll(fleet, service, first)
            fourth = await _roll(fleet, service, second)
            # A little traffic on the new pair alone before the load stops.
            settled = len(service.outcomes)
            await _until(lambda: len(service.outcomes) >= settled + 50)
            stop.set()
            await load
        upstream = await fleet.upstream_requests(client)
    admissions = await fleet.redis.command(
        "EVAL", COUNT_ADMISSIONS, "0", f"dp:{{{NAMESPACE}:*}}:w*"
    )
    for replica in (third, fourth):
        replica.process.proc.send_signal(signal.SIGTERM)
        await _exits_zero(replica)

    outcomes = service.outcomes
    assert len(outcomes) < MAX_REQUESTS, "the load hit its bound before the rolls were done"
    # Every request has exactly one outcome, and it is an answer: no connection error.
    assert sorted(o.number for o in outcomes) == list(range(len(outcomes)))
    assert [o for o in outcomes if o.error is not None] == []
    # Each answer is the upstream's 200 to that very request, never a 5xx (or 429) of the proxy…
    assert [o for o in outcomes if (o.status, o.proxy_error) != (200, None)] == []
    assert [o for o in outcomes if o.echoed != o.path] == []
    # …and the upstream was sent each request once: no retry, no duplicate.
    assert upstream == len(outcomes)
    # Every request was admitted through the shared quota in Redis, none against a local share.
    assert admissions == b":%d" % len(outcomes), admissions
    replicas = (first, second, third, fourth)
    assert [line for r in replicas for line in r.events(FALLBACK_WARNING)] == []
    # All four served, and the request lines they logged are the requests answered.
    served = [len(replica.events("request")) for replica in replicas]
    assert all(count > 0 for count in served), served
    assert sum(served) == len(outcomes)
    # Each old proxy still had the long requests in flight at SIGTERM, and finished them.
    for old in (first, second):
        (draining,) = old.events("draining")
        assert draining["in_flight"] >= 1, draining
        after = old.process.lines[old.process.lines.index(draining) :]
        assert sum(line.get("event") == "request" for line in after) >= 1, after


async def test_a_proxy_stopped_while_still_in_rotation_refuses_its_callers(fleet: Fleet) -> None:
    """Without the preStop delay, SIGTERM closes the port while callers still pick the pod:
    their requests fail to connect, which is what the delay is there to prevent."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False) as client:
        service = Service(client)
        first, second = [await fleet.start_proxy(client) for _ in range(2)]
        service.rotation += [first.url, second.url]
        stop = asyncio.Event()
        async with asyncio.timeout(MAX_SECONDS):
            load = asyncio.create_task(service.load(stop))
            await _until(lambda: len(service.outcomes) >= 50)
            first.process.proc.send_signal(signal.SIGTERM)
            await _until(lambda: bool(first.events("draining")))
            await asyncio.sleep(PROPAGATION)
            service.rotation.remove(first.url)
            await _exits_zero(first)
            stop.set()
            await load

    failed = [o for o in service.outcomes if o.error is not None]
    assert failed, "no request reached the stopped proxy"
    assert {o.target for o in failed} == {first.url}
    assert {o.error for o in failed} <= {"ConnectError", "RemoteProtocolError", "ReadError"}
    # The refusals are the only losses: the rest got the upstream's 200.
    answered = [o for o in service.outcomes if o.error is None]
    assert {(o.status, o.proxy_error) for o in answered} == {(200, None)}
