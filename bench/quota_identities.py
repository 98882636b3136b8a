"""Quotas per identity under load: 2 tenants × 2 apps through 2 replicas on one Redis.

Run with ``python -m bench.quota_identities`` (part of ``make bench``). The simulator counts like
Microsoft (``--per-identity``): ``LIMIT`` per ``WINDOW`` for each (route, app + tenant), and per
tenant on the hunting route. Both proxies share the quotas through Redis, with ``machines.list``
(scope ``app``, the default) and ``advancedhunting.run`` (scope ``tenant``, the default) limited to
the same LIMIT/WINDOW. Every app of every tenant sends GET /api/machines at ``load`` × LIMIT/WINDOW
and POST /api/advancedhunting/run at half that (two apps per tenant: the tenant's hunting quota
is offered ``load`` × its rate), spread over both replicas, open loop for ``SECONDS``.

Figures per load (medians over ``BENCH_ROUNDS``, default 3): upstream 429s (the simulator's
``throttled``, drain included) and, for each of the six quotas (4 × machines.list per app +
tenant, 2 × hunting per tenant), the utilisation: what the simulator admitted in it during the
load ÷ ``LIMIT · ceil(SECONDS / WINDOW)``, as in ``bench.quota``. Targets: 0 upstream 429s and
≥ 97 % for every quota, at 1× and 3×. Windows are scaled down (30 per 3 s, margin 100 ms, see
``bench.quota``) so one run takes about 15–25 s. The table is also written to
``bench/results/quota_identities.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as redis

from bench.load import offer
from bench.quota import (
    LIMIT,
    MARGIN,
    MAX_IN_FLIGHT,
    MAX_WAIT,
    SECONDS,
    WINDOW,
    most_allowed,
    replicas_config,
)
from bench.services import (
    ROOT,
    SimulatorClient,
    scratch_dir,
    services,
    start_proxies,
    start_redis,
    start_simulator,
    unwind_on_sigterm,
)
from bench.stats import median, write_json
from proxy.simulator.tokens import bearer

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
LOADS = tuple(float(k) for k in os.environ.get("BENCH_IDENTITY_LOADS", "1,3").split(","))
REPLICAS = 2
TENANTS = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222")
APPS = ("aaaaaaaa-0000-4000-8000-000000000001", "aaaaaaaa-0000-4000-8000-000000000002")
CALLERS = tuple((tid, app) for tid in TENANTS for app in APPS)
#: One cycle of the load: each caller's machines.list, then one hunting call per tenant (its two
#: apps taking turns cycle by cycle), so hunting is offered per tenant what an app gets per app.
CYCLE = len(CALLERS) + len(TENANTS)


def config(store: int, namespace: str) -> str:
    """The replicas' shared config: both routes at ``LIMIT``/``WINDOW``."""
    return replicas_config(
        REPLICAS, store, namespace, routes=("machines.list", "advancedhunting.run")
    )


def _call(index: int) -> tuple[str, str, str]:
    """(method, path, Authorization) of the ``index``-th request of the load."""
    cycle, slot = divmod(index, CYCLE)
    if slot < len(CALLERS):
        return "GET", "/api/machines", bearer(*CALLERS[slot])
    tid = TENANTS[slot - len(CALLERS)]
    return "POST", "/api/advancedhunting/run", bearer(tid, APPS[cycle % len(APPS)])


def _quota_keys() -> list[str]:
    keys = [f"machines.list {tid}.{app}" for tid, app in CALLERS]
    return keys + [f"advancedhunting.run {tid}" for tid in TENANTS]


async def run(
    session: aiohttp.ClientSession, sim: SimulatorClient, urls: list[str], load: float
) -> dict[str, float]:
    """One run at ``load``: upstream 429s and each quota's utilisation."""
    timeout = aiohttp.ClientTimeout(total=MAX_WAIT + 15)

    async def send(index: int) -> tuple[int, str]:
        method, path, authorization = _call(index)
        url = urls[(index + index // CYCLE) % len(urls)] + path
        headers = {"Authorization": authorization}
        async with session.request(method, url, headers=headers, timeout=timeout) as response:
            await response.read()
            return response.status, "upstream"

    await sim.reset()
    rate = load * LIMIT / WINDOW * CYCLE
    offered = await offer(send, rate, SECONDS, sim.stats, MAX_IN_FLIGHT, MAX_WAIT + 30)
    final = await sim.stats()
    quotas: dict[str, Any] = offered.at_end["quotas"]
    row = {"upstream_429s": float(final["throttled"])}
    for key in _quota_keys():
        admitted = quotas.get(key, {}).get("admitted", 0)
        row[key] = 100.0 * admitted / most_allowed(SECONDS)
    row["min_utilisation_pct"] = min(row[key] for key in _quota_keys())
    row["client_errors"] = float(offered.answers[(0, "client")] + offered.skipped)
    return row


async def _main(store_port: int, sim_port: int, workdir: Path) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sim = SimulatorClient(session, f"http://127.0.0.1:{sim_port}")
        store = redis.Redis(host="127.0.0.1", port=store_port)
        try:
            for number in range(1, ROUNDS + 1):
                for load in LOADS:
                    await store.flushall()
                    namespace = f"identities-{os.getpid()}-{number}-{load:g}"
                    logs = [workdir / f"{namespace}-{i}.log" for i in range(REPLICAS)]
                    replicas = start_proxies(sim_port, config(store_port, namespace), logs)
                    with services(*replicas):
                        urls = [replica.url for replica in replicas]
                        for url in urls:  # connections to Redis and upstream, scripts loaded
                            async with session.get(f"{url}/api/alerts") as response:
                                await response.read()
                        row = await run(session, sim, urls, load)
                    shown = ", ".join(f"{key}={value:.1f}" for key, value in row.items())
                    print(f"round {number}, load {load:g}×: {shown}", flush=True)
                    results.append({"round": number, "load": load, **row})
        finally:
            await store.aclose()
    return results


def main() -> None:
    """Run the rounds, print the medians, write the JSON."""
    unwind_on_sigterm()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(scratch_dir("bench-identities-"))
        store = start_redis(workdir)
        stack.callback(store.stop)
        sim = start_simulator(None, f"{LIMIT}/{WINDOW:g}s", per_identity=True)
        stack.callback(sim.stop)
        results = asyncio.run(_main(store.port, sim.port, workdir))
    print(
        f"\nmedians of {ROUNDS} round(s): {len(TENANTS)} tenants × {len(APPS)} apps through "
        f"{REPLICAS} replicas on Redis; limit {LIMIT}/{WINDOW:g}s per app + tenant "
        f"(machines.list) and per tenant (advancedhunting.run), {SECONDS:g} s of load, margin "
        f"{MARGIN * 1000:g} ms"
    )
    summary = []
    for load in LOADS:
        rows = [row for row in results if row["load"] == load]
        figures = {key: median([row[key] for row in rows]) for key in rows[0] if key != "round"}
        summary.append(figures)
        met = figures["upstream_429s"] == 0 and figures["min_utilisation_pct"] >= 97.0
        print(
            f"load {load:g}×: upstream 429s {figures['upstream_429s']:.0f}, utilisation per "
            f"quota min {figures['min_utilisation_pct']:.1f} % ("
            + ", ".join(f"{figures[key]:.1f}" for key in _quota_keys())
            + f")  {'met' if met else 'MISSED'}"
        )
    print("targets: upstream 429s = 0, every quota ≥ 97 % of its limit")
    print(f"whole run: {time.monotonic() - started:.0f} s")
    out = write_json("quota_identities.json", {"rounds": results, "median": summary})
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
