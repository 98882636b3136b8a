"""The shared quota under load: N replicas on one Redis, against a naive per-replica token bucket.

Run with ``python -m bench.quota``. One private ``redis-server`` and one simulator enforcing
``LIMIT`` per ``WINDOW`` (sliding) are started for the whole run. For each replica count N and
offered load k (a multiple of LIMIT / WINDOW requests/s), N proxy processes share the quota through
Redis (``throttle.routes``: ``machines.list`` limited to the same LIMIT/WINDOW, ``throttle.margin``
= ``MARGIN``); clients spread round-robin over the replicas send GET /api/machines open-loop at the
fixed total rate for ``SECONDS``, then every answer is awaited (waiters may hold a slot up to
``MAX_WAIT`` past the end). The same (N, k) is then run against ``bench.quota_naive``: N in-process
buckets of capacity LIMIT refilled at LIMIT / WINDOW, not shared, forwarding straight upstream.

Figures per run:

- upstream 429s: the simulator's ``throttled`` count over the whole run, drain included;
- utilisation: requests the simulator admitted during the ``SECONDS`` of offered load, divided by
  the most its limit lets through in that time starting empty, ``LIMIT · ceil(SECONDS / WINDOW)``
  (bursts of LIMIT at 0, W, 2W, …). The denominator is the API's own bound, not the proxy's
  widened window: the margin is a cost the tenant pays, so it shows as lost utilisation. Under the
  table, ``ceiling`` is what an exact sliding log over WINDOW + MARGIN would reach with the same
  arrivals and MAX_WAIT (``proxy.quota.schedule`` replayed offline): the best the proxy can do;
- max in window / L: the simulator's ``max_in_window``; it counts only the requests it admitted,
  so it cannot pass 1 and excess shows as upstream 429s instead;
- sent in window / L: the most requests sent upstream in any interval of WINDOW, from the sender's
  side (the naive replicas' own clocks; for the proxy, each forwarded request's log line: start +
  ``admit_ms`` + ``wait_ms``). This is the figure that shows the naive buckets reaching ~2·N·L;
- admit p50 / p99 ms: ``admit_ms`` from the proxies' JSON log lines (admitted and waited requests:
  refusals carry no ``admit_ms``; ``store ≤ 2 ms`` in the JSON covers every decision, from the
  ``defender_proxy_quota_store_duration_seconds`` histogram); for the naive buckets, the in-process
  decision;
- Redis calls / request: the delta of ``cmdstat_evalsha`` + ``cmdstat_eval`` calls over the run,
  divided by the request log lines written (requests that reached a proxy);
- proxy 429s: answers the proxy (or the naive bucket) refused itself.

After the table, the scenario "Redis killed and restarted empty twice under saturating load with
3 replicas": a private redis-server of its own, three replicas, ``RESTART_LOAD`` × the limit
offered for ``SECONDS``; at a quarter and at three fifths of the run Redis is SIGKILLed and
started again, empty, ``RESTART_DOWN`` seconds later. Printed per run and as the median of
``BENCH_RESTART_RUNS`` runs (default 3; 0 skips it): upstream 429s (target 0) and the admitted
share of the limit (the utilisation above), with the fallbacks the replicas counted.

Settings from the environment: ``BENCH_ROUNDS`` (default 1; medians over rounds), ``BENCH_SECONDS``
(12), ``BENCH_MARGIN`` (0.1 s, see ``MARGIN``), ``BENCH_MAX_WAIT`` (9 s), ``BENCH_REPLICAS``
("1,3,8"), ``BENCH_LOADS`` ("1,3,10"), ``BENCH_LOG_DIR`` (keep the proxies' configs and logs
there instead of in a temporary directory). The table is also written to
``bench/results/quota.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from bisect import insort
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as redis

from bench.load import Offered, offer
from bench.quota_naive import NaiveReplicas, max_in_window
from bench.services import (
    ROOT,
    Service,
    SimulatorClient,
    request_lines,
    scrape,
    scratch_dir,
    services,
    start_proxies,
    start_redis,
    start_simulator,
    unwind_on_sigterm,
)
from bench.stats import finite, medians, meets, percentile, write_json
from proxy.errors import PROXY_HEADER
from proxy.quota.schedule import Window, earliest

LIMIT = 30
WINDOW = 3.0
SECONDS = float(os.environ.get("BENCH_SECONDS", "12"))
# The proxy's default margin is 500 ms, sized for Defender's one-minute windows (0.8 % of one).
# Against a 3 s window it would cost 1/7 of the quota (1× load: 87.5 % at best over 12 s), so the
# bench scales it to the hop it covers here: on loopback the proxy-to-simulator round trip stays
# under ~20 ms even on a busy machine (``upstream_ms_max`` in the JSON), and 100 ms leaves a factor
# of five. With no margin at all the simulator does answer 429 (BENCH_MARGIN=0 shows it).
MARGIN = float(os.environ.get("BENCH_MARGIN", "0.1"))
MAX_WAIT = float(os.environ.get("BENCH_MAX_WAIT", str(3 * WINDOW)))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1"))
RESTART_RUNS = int(os.environ.get("BENCH_RESTART_RUNS", "3"))
#: The restart scenario's offered load (× LIMIT / WINDOW) and how long Redis stays down.
RESTART_LOAD = 3.0
RESTART_DOWN = 1.5
REPLICAS = tuple(int(n) for n in os.environ.get("BENCH_REPLICAS", "1,3,8").split(","))
LOADS = tuple(float(k) for k in os.environ.get("BENCH_LOADS", "1,3,10").split(","))
PATH = "/api/machines"
ROUTE = "machines.list"
#: Open loop, but bounded: a request due while this many are unanswered is skipped and counted.
MAX_IN_FLIGHT = 1000
MICROS = 1_000_000

SHARED, NAIVE = "shared", "naive"
FIGURES = (
    ("upstream_429s", "upstream 429s", "{:.0f}"),
    ("utilisation_pct", "util %", "{:.1f}"),
    ("max_in_window_ratio", "max in win/L", "{:.2f}"),
    ("sent_in_window_ratio", "sent in win/L", "{:.2f}"),
    ("admit_p50_ms", "admit p50 ms", "{:.3f}"),
    ("admit_p99_ms", "admit p99 ms", "{:.3f}"),
    ("redis_calls_per_request", "Redis calls/req", "{:.3f}"),
    ("proxy_429s", "proxy 429s", "{:.0f}"),
)
#: The shared quota's targets: (figure, comparison, bound).
TARGETS = (
    ("upstream_429s", "==", 0.0),
    ("utilisation_pct", ">=", 97.0),
    ("admit_p99_ms", "<=", 2.0),
    ("redis_calls_per_request", "==", 1.0),
)

#: Commandstats entries that are no round trip of a proxy: the commands the Lua scripts call,
#: the bench's own, and the figures ``Bench.commands`` adds.
_NOT_ROUND_TRIPS = frozenset(
    {"evalsha", "eval", "time", "get", "set", "zremrangebyscore", "zrange", "zadd", "pexpireat",
     "zscore", "zrem", "pttl", "pexpire", "info", "flushall", "evalsha_usec", "connections"}
)  # fmt: skip

Row = dict[str, float]


def most_allowed(seconds: float) -> int:
    """The most a sliding window of LIMIT per WINDOW admits in ``seconds``, starting empty."""
    # Every half-open stretch of WINDOW holds at most LIMIT, and ceil(D / W) of them cover D;
    # bursts of LIMIT at 0, W, 2W, … reach it. The epsilon keeps 12 / 3 from rounding up to 5.
    return LIMIT * math.ceil(seconds / WINDOW - 1e-9)


def ceiling_pct(load: float) -> float:
    """Utilisation an exact sliding log over WINDOW + MARGIN reaches with the bench's arrivals."""
    window = Window(LIMIT, round((WINDOW + MARGIN) * MICROS))
    rate = load * LIMIT / WINDOW
    log: list[int] = []
    inside = 0
    for index in range(round(rate * SECONDS)):
        arrival = round(index / rate * MICROS)
        slot = earliest([log], [window], 0.0, arrival)
        if slot - arrival <= MAX_WAIT * MICROS:
            insort(log, slot)
            inside += slot < SECONDS * MICROS
    return 100.0 * inside / most_allowed(SECONDS)


# -- processes -------------------------------------------------------------------------------


def replicas_config(
    replicas: int, store: int, namespace: str, cooldown: str = "", routes: Sequence[str] = (ROUTE,)
) -> str:
    """The replicas' shared config, every route in ``routes`` at ``LIMIT``/``WINDOW``; upstream,
    ports and JSON logs come from ``start_proxies``."""
    limited = "".join(
        f'    - name: {route}\n      limits: ["{LIMIT}/{WINDOW:g}s"]\n' for route in routes
    )
    return f"""\
shutdown_grace: 2s
throttle:
  store: redis://127.0.0.1:{store}/0
  namespace: {namespace}
  max_wait: {MAX_WAIT:g}s
  margin: {MARGIN * 1000:g}ms
  fallback:
    expected_replicas: {replicas}
{f"    cooldown: {cooldown}{chr(10)}" if cooldown else ""}  routes:
{limited}"""


def start_replicas(
    count: int, sim: int, store: int, namespace: str, workdir: Path, cooldown: str = ""
) -> list[Service]:
    """``count`` proxy processes sharing ``namespace`` in the Redis on port ``store``, each
    logging to ``workdir/<namespace>-<index>.log`` (``cooldown``: the breaker's, if given)."""
    logs = [workdir / f"{namespace}-{index}.log" for index in range(count)]
    return start_proxies(sim, replicas_config(count, store, namespace, cooldown), logs)


# -- measuring -------------------------------------------------------------------------------


#: The proxies' store figures, summed over replicas: fallbacks, decisions, ≤ 2 ms ones.
_STORE_METRICS = {
    "fallbacks": r"^defender_proxy_quota_store_fallbacks_total (\S+)$",
    "decisions": r"^defender_proxy_quota_store_duration_seconds_count\{[^}]*\} (\S+)$",
    "within_2ms": r"^defender_proxy_quota_store_duration_seconds_bucket"
    r'\{[^}]*le="0\.002"[^}]*\} (\S+)$',
}


class Bench:
    """The long-lived pieces: the simulator, the Redis client, one HTTP session."""

    def __init__(self, sim: Service, store: Service, session: aiohttp.ClientSession) -> None:
        self.sim_port = sim.port
        self.sim = SimulatorClient(session, sim.url)
        self.store_port = store.port
        self.redis = redis.Redis(host="127.0.0.1", port=store.port, socket_timeout=5)
        self.session = session

    async def commands(self) -> dict[str, float]:
        """Calls per Redis command so far, server time in EVALSHA (µs) and connections accepted."""
        stats = await self.redis.info("commandstats")
        calls: dict[str, float] = {
            key.removeprefix("cmdstat_"): float(value["calls"]) for key, value in stats.items()
        }
        calls["evalsha_usec"] = float(stats.get("cmdstat_evalsha", {}).get("usec", 0))
        calls["connections"] = float((await self.redis.info("stats"))["total_connections_received"])
        return calls


def _sent_at(line: dict[str, Any]) -> float:
    """When a forwarded request left the proxy: its start, plus the decision, plus the wait."""
    end = datetime.fromisoformat(line["timestamp"]).timestamp()
    ms = float(line.get("admit_ms", 0.0)) + float(line.get("wait_ms", 0.0))
    return end + (ms - float(line["duration_ms"])) / 1000


def _common(stats_end: dict[str, Any], stats_final: dict[str, Any], sent: list[float]) -> Row:
    return {
        "upstream_429s": float(stats_final["throttled"]),
        "utilisation_pct": 100.0 * stats_end["admitted"] / most_allowed(SECONDS),
        "max_in_window_ratio": max(stats_final["max_in_window"].values()) / LIMIT,
        "sent_in_window_ratio": max_in_window(sent, WINDOW) / LIMIT,
        "admitted_in_duration": float(stats_end["admitted"]),
        "admitted_total": float(stats_final["admitted"]),
        "upstream_requests": float(stats_final["requests"]),
    }


async def _offer(
    bench: Bench, send: Callable[[int], Awaitable[tuple[int, str]]], load: float
) -> Offered:
    """``load`` × LIMIT / WINDOW requests/s for SECONDS; the simulator's stats taken at the end."""
    rate = load * LIMIT / WINDOW
    return await offer(send, rate, SECONDS, bench.sim.stats, MAX_IN_FLIGHT, MAX_WAIT + 30)


async def run_shared(bench: Bench, replicas: list[Service], load: float) -> Row:
    """One run of the shared quota: N proxies, one Redis."""
    await bench.redis.flushall()  # private server: nothing but this run's quota lives there
    await bench.sim.reset()
    offsets = [replica.log.stat().st_size for replica in replicas]
    commands_before = await bench.commands()
    scraped_before = await scrape(bench.session, replicas, _STORE_METRICS)
    urls = [f"{replica.url}{PATH}" for replica in replicas]
    timeout = aiohttp.ClientTimeout(total=MAX_WAIT + 15)

    async def send(index: int) -> tuple[int, str]:
        async with bench.session.get(urls[index % len(urls)], timeout=timeout) as response:
            await response.read()
            return response.status, "proxy" if PROXY_HEADER in response.headers else "upstream"

    loadavg = os.getloadavg()[0]
    offered = await _offer(bench, send, load)
    final = await bench.sim.stats()
    commands_after = await bench.commands()
    scraped_after = await scrape(bench.session, replicas, _STORE_METRICS)
    lines = [
        line
        for replica, at in zip(replicas, offsets, strict=True)
        for line in request_lines(replica, at, ROUTE)
    ]
    forwarded = [line for line in lines if line["source"] == "upstream"]
    admit_ms = [line["admit_ms"] for line in lines if "admit_ms" in line]
    calls = {name: n - commands_before.get(name, 0.0) for name, n in commands_after.items()}
    admissions = calls.get("evalsha", 0.0) + calls.get("eval", 0.0)
    scraped = {k: v - scraped_before.get(k, 0.0) for k, v in scraped_after.items()}
    reached = len(lines)
    row = _common(offered.at_end, final, [_sent_at(line) for line in forwarded])
    row.update(
        {
            "admit_p50_ms": percentile(admit_ms, 50),
            "admit_p99_ms": percentile(admit_ms, 99),
            "admit_max_ms": max(admit_ms, default=math.nan),
            "redis_calls_per_request": admissions / reached if reached else math.nan,
            "proxy_429s": float(
                sum(1 for line in lines if line["status"] == 429 and line["source"] == "proxy")
            ),
            "requests": float(reached),
            "loadavg_1m": loadavg,
            "offered": float(sum(offered.answers.values()) + offered.skipped),
            "skipped": float(offered.skipped),
            "client_errors": float(offered.answers[(0, "client")]),
            "waited": float(sum(1 for line in lines if line.get("quota") == "waited")),
            "wait_max_ms": max((line.get("wait_ms", 0.0) for line in lines), default=0.0),
            "upstream_ms_p50": percentile([line["upstream_ms"] for line in forwarded], 50),
            "upstream_ms_p99": percentile([line["upstream_ms"] for line in forwarded], 99),
            "upstream_ms_max": max((line["upstream_ms"] for line in forwarded), default=math.nan),
            "store_fallbacks": scraped.get("fallbacks", 0.0),
            "store_within_2ms_pct": 100.0 * scraped["within_2ms"] / scraped["decisions"]
            if scraped.get("decisions")
            else math.nan,
            # Commands sent by a client, not by a script and not by this bench: any is an
            # extra round trip (SCRIPT LOAD after a restart, a PING, a new connection's HELLO).
            "redis_other_calls": sum(
                n for name, n in calls.items() if name not in _NOT_ROUND_TRIPS
            ),
            "redis_connections": calls["connections"],
            "evalsha_server_us": calls["evalsha_usec"] / admissions if admissions else math.nan,
        }
    )
    return row


async def run_naive(bench: Bench, count: int, load: float) -> Row:
    """One run of N unshared buckets in this process, straight to the simulator."""
    await bench.sim.reset()
    loadavg = os.getloadavg()[0]
    async with NaiveReplicas(count, LIMIT, WINDOW, f"{bench.sim.url}{PATH}") as naive:
        offered = await _offer(bench, naive.send, load)
    final = await bench.sim.stats()
    row = _common(offered.at_end, final, naive.sent)
    refused = sum(n for (status, who), n in offered.answers.items() if who == "proxy")
    row.update(
        {
            "admit_p50_ms": percentile(naive.decide_ms, 50),
            "admit_p99_ms": percentile(naive.decide_ms, 99),
            "redis_calls_per_request": math.nan,
            "proxy_429s": float(refused),
            "requests": float(sum(offered.answers.values())),
            "loadavg_1m": loadavg,
            "offered": float(sum(offered.answers.values()) + offered.skipped),
            "skipped": float(offered.skipped),
            "client_errors": float(offered.answers[(0, "client")]),
        }
    )
    return row


async def _warm(bench: Bench, replicas: list[Service]) -> None:
    """Open each proxy's connections (Redis, upstream) and load the scripts, off the measured
    route, then forget those requests upstream."""
    for replica in replicas:
        for _ in range(3):
            async with bench.session.get(f"{replica.url}/api/alerts") as response:
                await response.read()
    await bench.sim.reset()


# -- Redis killed and restarted empty ---------------------------------------------------------


async def _kill_and_restart(store: list[Service], workdir: Path, begin: float) -> None:
    """SIGKILL the Redis at a quarter and at three fifths of the run; start it again, empty,
    on the same port RESTART_DOWN seconds later each time."""
    loop = asyncio.get_running_loop()
    for at in (0.25 * SECONDS, 0.6 * SECONDS):
        await asyncio.sleep(max(0.0, begin + at - loop.time()))
        store[0].proc.kill()
        store[0].proc.wait()
        await asyncio.sleep(RESTART_DOWN)
        store[0] = start_redis(workdir, store[0].port)  # --save "": nothing survives


async def run_restarts(session: aiohttp.ClientSession, sim: Service, workdir: Path) -> Row:
    """One run of the restart scenario: 3 replicas, saturating load, Redis killed twice."""
    store = [start_redis(workdir)]
    try:
        namespace = f"restart-{os.getpid()}-{time.monotonic_ns()}"
        # A short cooldown, so every replica is back on the shared store before the next kill.
        replicas = start_replicas(3, sim.port, store[0].port, namespace, workdir, "500ms")
        with services(*replicas):
            client = SimulatorClient(session, sim.url)
            warm = Bench(sim, store[0], session)
            try:
                await _warm(warm, replicas)
            finally:
                await warm.redis.aclose()
            urls = [f"{replica.url}{PATH}" for replica in replicas]
            timeout = aiohttp.ClientTimeout(total=MAX_WAIT + 15)

            async def send(index: int) -> tuple[int, str]:
                async with session.get(urls[index % len(urls)], timeout=timeout) as response:
                    await response.read()
                    return response.status, "proxy" if PROXY_HEADER in response.headers else "up"

            rate = RESTART_LOAD * LIMIT / WINDOW
            begin = asyncio.get_running_loop().time()
            chaos = asyncio.create_task(_kill_and_restart(store, workdir, begin))
            try:
                offered = await offer(
                    send, rate, SECONDS, client.stats, MAX_IN_FLIGHT, MAX_WAIT + 30
                )
                await chaos
            finally:
                chaos.cancel()
            final = await client.stats()
            scraped = await scrape(session, replicas, _STORE_METRICS)
    finally:
        store[0].stop()
    return {
        "upstream_429s": float(final["throttled"]),
        "utilisation_pct": 100.0 * offered.at_end["admitted"] / most_allowed(SECONDS),
        "max_in_window_ratio": max(final["max_in_window"].values()) / LIMIT,
        "store_fallbacks": scraped.get("fallbacks", 0.0),
        "client_errors": float(offered.answers[(0, "client")]),
    }


async def _restarts(sim: Service, workdir: Path) -> list[Row]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        runs = []
        for number in range(1, RESTART_RUNS + 1):
            await SimulatorClient(session, sim.url).reset()
            row = await run_restarts(session, sim, workdir)
            shown = ", ".join(f"{key}={value:.3g}" for key, value in row.items())
            print(f"restart run {number}: {shown}", flush=True)
            runs.append(row)
        return runs


# -- the table -------------------------------------------------------------------------------


def _missed(row: Row) -> list[str]:
    return [
        key.split("_")[0] if key != "admit_p99_ms" else "p99"
        for key, op, bound in TARGETS
        if not meets(row[key], op, bound)
    ]


def _table(summary: list[dict[str, Any]]) -> str:
    head = f"{'algorithm':<10}{'replicas':>9}{'load':>6}" + "".join(
        f"{title:>{max(len(title), 8) + 2}}" for _, title, _ in FIGURES
    )
    rows = [head + "  targets"]
    for entry in summary:
        row = entry["median"]
        cells = "".join(
            f"{('-' if math.isnan(row[key]) else fmt.format(row[key])):>{max(len(title), 8) + 2}}"
            for key, title, fmt in FIGURES
        )
        verdict = ""
        if entry["algorithm"] == SHARED:
            missed = _missed(row)
            verdict = "met" if not missed else "MISSED " + ",".join(missed)
        rows.append(
            f"{entry['algorithm']:<10}{entry['replicas']:>9}{entry['load']:>5g}×{cells}  {verdict}"
        )
    return "\n".join(rows)


def _notes(rounds: list[list[tuple[str, int, float, Row]]]) -> list[str]:
    """What a median hides: runs where the breaker opened, or the load was not all delivered."""
    notes = []
    for number, results in enumerate(rounds, 1):
        for algorithm, count, load, row in results:
            run = f"round {number}, {algorithm} N={count} {load:g}×"
            if row.get("store_fallbacks", 0.0) > 0:
                notes.append(
                    f"{run}: the store breaker opened {row['store_fallbacks']:.0f} time(s); "
                    f"{row['upstream_429s']:.0f} upstream 429s, sent in window "
                    f"{row['sent_in_window_ratio']:.2f}·L, {row['redis_connections']:.0f} new "
                    "Redis connections"
                )
            if row["skipped"] or row["client_errors"]:
                notes.append(
                    f"{run}: {row['skipped']:.0f} requests skipped (in-flight bound), "
                    f"{row['client_errors']:.0f} failed at the client"
                )
    return notes


def _describe(algorithm: str, count: int, load: float, row: Row) -> str:
    keys = [key for key, _, _ in FIGURES] + ["requests", "skipped", "client_errors", "loadavg_1m"]
    if algorithm == SHARED:
        keys += ["store_fallbacks", "store_within_2ms_pct", "evalsha_server_us"]
        keys += ["redis_other_calls", "redis_connections", "upstream_ms_max", "wait_max_ms"]
    shown = ", ".join(f"{key}={row[key]:.3g}" for key in keys)
    return f"{algorithm} N={count} load={load:g}×: {shown}"


async def _round(bench: Bench, number: int, workdir: Path) -> list[tuple[str, int, float, Row]]:
    results: list[tuple[str, int, float, Row]] = []
    for count in REPLICAS:
        for load in LOADS:
            # Fresh processes per run: a breaker left open (or a local fallback log) by one run
            # must not leak into the next.
            namespace = f"bench-{os.getpid()}-{number}-{count}-{load:g}"
            replicas = start_replicas(count, bench.sim_port, bench.store_port, namespace, workdir)
            with services(*replicas):
                await _warm(bench, replicas)
                row = await run_shared(bench, replicas, load)
            print(f"round {number}: {_describe(SHARED, count, load, row)}", flush=True)
            results.append((SHARED, count, load, row))
        for load in LOADS:
            row = await run_naive(bench, count, load)
            print(f"round {number}: {_describe(NAIVE, count, load, row)}", flush=True)
            results.append((NAIVE, count, load, row))
    return results


async def _main(
    sim: Service, store: Service, workdir: Path
) -> list[list[tuple[str, int, float, Row]]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        bench = Bench(sim, store, session)
        try:
            return [await _round(bench, number, workdir) for number in range(1, ROUNDS + 1)]
        finally:
            await bench.redis.aclose()


def main() -> None:
    """Run the rounds, print the table, write the JSON."""
    unwind_on_sigterm()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(scratch_dir("bench-quota-"))
        store = start_redis(workdir)
        stack.callback(store.stop)
        sim = start_simulator(None, f"{LIMIT}/{WINDOW:g}s")
        stack.callback(sim.stop)
        rounds = asyncio.run(_main(sim, store, workdir))
    summary: list[dict[str, Any]] = [
        {"algorithm": a, "replicas": n, "load": k, "median": medians([r[i][3] for r in rounds])}
        for i, (a, n, k, _) in enumerate(rounds[0])
    ]
    ceilings = {load: ceiling_pct(load) for load in LOADS}
    print(
        f"\nmedians of {ROUNDS} round(s): limit {LIMIT}/{WINDOW:g}s, {SECONDS:g} s of load per "
        f"run, margin {MARGIN * 1000:g} ms, max_wait {MAX_WAIT:g} s, "
        f"load 1× = {LIMIT / WINDOW:g} req/s"
    )
    print(_table(summary))
    print(
        "\ntargets (shared): upstream 429s = 0, utilisation ≥ 97 %, admit p99 ≤ 2 ms, "
        "Redis calls/request = 1"
    )
    print(
        f"utilisation = admitted by the API during the load ÷ {most_allowed(SECONDS)} "
        f"(= {LIMIT}·ceil({SECONDS:g}/{WINDOW:g})); ceiling with the {MARGIN * 1000:g} ms margin: "
        + ", ".join(f"{load:g}× {pct:.1f} %" for load, pct in ceilings.items())
    )
    for note in _notes(rounds):
        print(f"note: {note}")
    restarts: list[Row] = []
    if RESTART_RUNS > 0:
        print(
            f"\nRedis killed and restarted empty twice under saturating load with 3 replicas "
            f"({RESTART_LOAD:g}× offered, down {RESTART_DOWN:g} s each time):"
        )
        with contextlib.ExitStack() as stack:
            workdir = stack.enter_context(scratch_dir("bench-quota-restart-"))
            sim = start_simulator(None, f"{LIMIT}/{WINDOW:g}s")
            stack.callback(sim.stop)
            restarts = asyncio.run(_restarts(sim, workdir))
        middle = medians(restarts)
        print(
            f"median of {len(restarts)} runs: upstream 429s {middle['upstream_429s']:.0f} "
            f"(target 0), admitted {middle['utilisation_pct']:.1f} % of the limit, "
            f"{middle['store_fallbacks']:.0f} fallbacks over the 3 replicas"
        )
    elapsed = time.monotonic() - started
    print(f"whole run: {elapsed:.0f} s")
    out = write_json(
        "quota.json",
        finite(
            {
                "settings": {
                    "limit": LIMIT,
                    "window_s": WINDOW,
                    "seconds": SECONDS,
                    "margin_s": MARGIN,
                    "max_wait_s": MAX_WAIT,
                    "rounds": ROUNDS,
                    "most_allowed": most_allowed(SECONDS),
                },
                "ceiling_pct": {f"{load:g}": pct for load, pct in ceilings.items()},
                "elapsed_s": elapsed,
                "rounds": [
                    [{"algorithm": a, "replicas": n, "load": k, **row} for a, n, k, row in results]
                    for results in rounds
                ],
                "median": summary,
                "restarts": {"runs": restarts, "median": medians(restarts) if restarts else {}},
            }
        ),
    )
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
