"""Reloads: how long one takes, what reloads cost a steady load, and a limit lowered under load.

Run with ``python -m bench.reload`` (part of ``make bench``; ``BENCH_ROUNDS``, ``BENCH_SECONDS``).

1. **Time to apply**: the proxy with 1, 200 or 1,000 routes in ``throttle.routes`` (the bound);
   ``SIGHUP`` with the file changed in one limit, ``BENCH_ROUNDS`` times; the time from the signal
   to the ``reloaded`` line's timestamp, median and slowest, and the slowest answer of
   ``/healthz`` (the same event loop, asked every 10 ms) meanwhile: how long the loop stood still.
2. **A steady load through reloads**: 200 requests/s for ``BENCH_SECONDS`` (fixed rate, each with
   its own ``client-request-id``), once with a ``SIGHUP`` every 0.5 s (the limit switching between
   100000/1s and 99999/1s) and once without; answers by status, requests the simulator never saw
   or saw twice (its journal), latency p50 and p99 of both runs.
3. **A limit lowered under load**: the simulator enforcing 6/2s, the proxy 6/2s (margin 200ms);
   30 callers at once, the limit lowered to 3/2s once the first six are through, then 9 more
   callers; answers, requests lost or repeated, upstream 429s, and the most requests the simulator
   received in any 2 s window before and after the reload.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.services import (
    Service,
    scratch_dir,
    services,
    start_proxy,
    start_simulator,
    unwind_on_sigterm,
)
from bench.stats import percentile, write_json

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
RATE = 200.0


def config(added: int, limit: str) -> str:
    """The proxy's config: machines.get limited to ``limit`` and ``added`` routes of its own."""
    lines = ["throttle:", "  margin: 200ms", "  routes:"]
    lines.append(f"    - {{name: machines.get, limits: ['{limit}']}}")
    lines += [
        f"    - {{name: bench.r{i}, match: ['GET /api/bench{i}/{{id}}'], limits: ['100/1m']}}"
        for i in range(added)
    ]
    return "\n".join(lines) + "\n"


def _lines_since(log: Path, offset: int, event: str) -> tuple[list[dict[str, Any]], int]:
    with log.open("rb") as file:
        file.seek(offset)
        data = file.read()
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    found = [json.loads(raw) for raw in data[:end].splitlines() if raw.strip()]
    return [line for line in found if line.get("event") == event], offset + end


async def _reload(proxy: Service, config: str, offset: int) -> tuple[float, int]:
    """Write ``config``, send SIGHUP; (seconds to the ``reloaded`` line, the log's new offset)."""
    proxy.log.with_suffix(".yaml").write_text(config)
    sent = time.time()
    proxy.proc.send_signal(signal.SIGHUP)
    for _ in range(1000):
        found, offset = _lines_since(proxy.log, offset, "reloaded")
        if found:
            stamp = datetime.fromisoformat(found[-1]["timestamp"].replace("Z", "+00:00"))
            return stamp.timestamp() - sent, offset
        await asyncio.sleep(0.01)
    raise RuntimeError("no reloaded line within 10 s")


async def _ping(session: aiohttp.ClientSession, url: str, out: list[float]) -> None:
    """GET ``url`` every 10 ms until cancelled, each answer's time (ms) into ``out``."""
    # The admin port is served by the proxy's one event loop: its answers show the loop's stalls.
    while True:
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
        out.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.01)


async def _time_to_apply(simulator: Service, workdir: Path) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for added in (0, 199, 999):
        log = workdir / f"apply-{added}.log"
        proxy = start_proxy(simulator.port, config=config(added, "100/1m"), log=log)
        with services(proxy):
            async with aiohttp.ClientSession() as session:
                pings: list[float] = []
                healthz = f"http://127.0.0.1:{proxy.admin}/healthz"
                pinger = asyncio.create_task(_ping(session, healthz, pings))
                took: list[float] = []
                offset = 0
                for index in range(ROUNDS):
                    limit = f"{101 - index % 2}/1m"
                    seconds, offset = await _reload(proxy, config(added, limit), offset)
                    took.append(seconds * 1000)
                pinger.cancel()
        figures[str(added + 1)] = {
            "median_ms": statistics.median(took),
            "max_ms": max(took),
            "longest_healthz_ms": max(pings, default=0.0),
        }
    return figures


async def _journal(session: aiohttp.ClientSession, simulator: Service) -> list[dict[str, Any]]:
    async with session.get(f"{simulator.url}/_sim/requests") as response:
        listed: list[dict[str, Any]] = (await response.json())["requests"]
    return listed


async def _steady(simulator: Service, proxy: Service, reloads: bool, run: str) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(f"{simulator.url}/_sim/reset"):
            pass

        async def one(request_id: str) -> None:
            started = time.perf_counter()
            headers = {"client-request-id": request_id}
            async with session.get(f"{proxy.url}/api/machines/m1", headers=headers) as response:
                await response.read()
                statuses[response.status] += 1
            latencies.append((time.perf_counter() - started) * 1000)

        async def signals() -> int:
            sent, offset = 0, proxy.log.stat().st_size
            while True:
                await asyncio.sleep(0.5)
                limit = "99999/1s" if sent % 2 == 0 else "100000/1s"
                _, offset = await _reload(proxy, config(0, limit), offset)
                sent += 1

        signaller = asyncio.create_task(signals()) if reloads else None
        total = int(RATE * SECONDS)
        begin = time.perf_counter()
        tasks = []
        for index in range(total):
            delay = begin + index / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(f"{run}-{index}")))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=SECONDS + 30)
        if signaller is not None:
            signaller.cancel()
        seen = Counter(entry["id"] for entry in await _journal(session, simulator))
    sent_ids = {f"{run}-{index}" for index in range(total)}
    return {
        "requests": total,
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "never_seen": len(sent_ids - seen.keys()),
        "seen_twice": sum(1 for count in seen.values() if count > 1),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def _busiest(times: list[float], ends: list[float], window: float = 2.0) -> int:
    return max((sum(1 for t in times if end - window < t <= end) for end in ends), default=0)


async def _lowered(workdir: Path) -> dict[str, Any]:
    simulator = start_simulator(None, "6/2s")
    log = workdir / "lowered.log"
    proxy = start_proxy(simulator.port, config=config(0, "6/2s"), log=log)
    with services(simulator, proxy):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(request_id: str) -> int:
                headers = {"client-request-id": request_id}
                url = f"{proxy.url}/api/machines/m1"
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    return response.status

            first = [asyncio.create_task(one(f"first-{i}")) for i in range(30)]
            for _ in range(500):
                if len(await _journal(session, simulator)) >= 6:
                    break
                await asyncio.sleep(0.02)
            took, _ = await _reload(proxy, config(0, "3/2s"), 0)
            second = [asyncio.create_task(one(f"second-{i}")) for i in range(9)]
            statuses = Counter(await asyncio.gather(*first, *second))
            journal = await _journal(session, simulator)
            async with session.get(f"{simulator.url}/_sim/stats") as response:
                throttled = (await response.json())["throttled"]
    seen = Counter(entry["id"] for entry in journal)
    sent = {f"first-{i}" for i in range(30)} | {f"second-{i}" for i in range(9)}
    times = [entry["at"] for entry in journal]
    later = [entry["at"] for entry in journal if entry["id"].startswith("second-")]
    earlier = [entry["at"] for entry in journal if entry["id"].startswith("first-")]
    return {
        "reload_ms": took * 1000,
        "statuses": {str(status): count for status, count in statuses.items()},
        "never_seen": len(sent - seen.keys()),
        "seen_twice": sum(1 for count in seen.values() if count > 1),
        "upstream_429s": throttled,
        "most_in_2s_queued_before": _busiest(earlier, earlier),
        "most_in_2s_sent_after": _busiest(times, later),
        "span_s": max(times) - min(times),
    }


async def _run(workdir: Path) -> dict[str, Any]:
    simulator = start_simulator()
    with services(simulator):
        applied = await _time_to_apply(simulator, workdir)
        proxy = start_proxy(simulator.port, config=config(0, "100000/1s"), log=workdir / "s.log")
        with services(proxy):
            quiet = await _steady(simulator, proxy, reloads=False, run="quiet")
            reloaded = await _steady(simulator, proxy, reloads=True, run="reloaded")
    lowered = await _lowered(workdir)
    return {"apply": applied, "steady": quiet, "steady_reloads": reloaded, "lowered": lowered}


def main() -> None:
    unwind_on_sigterm()
    with scratch_dir("bench-reload-") as workdir:
        result = asyncio.run(_run(workdir))
    out = write_json("reload.json", result)
    print(f"reload: SIGHUP to the 'reloaded' line, {ROUNDS} rounds")
    for routes, row in result["apply"].items():
        print(
            f"  {routes:>4} routes in throttle.routes: median {row['median_ms']:.1f} ms, "
            f"max {row['max_ms']:.1f} ms; slowest /healthz meanwhile "
            f"{row['longest_healthz_ms']:.1f} ms"
        )
    print(f"steady {RATE:g} req/s for {SECONDS:g}s, without and with a SIGHUP every 0.5 s")
    for name in ("steady", "steady_reloads"):
        row = result[name]
        print(
            f"  {name:>14}: {row['requests']} sent, statuses {row['statuses']}, "
            f"never seen {row['never_seen']}, seen twice {row['seen_twice']}, "
            f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
        )
    row = result["lowered"]
    print("6/2s lowered to 3/2s with 24 of 30 callers queued, then 9 more callers")
    print(
        f"  statuses {row['statuses']}, never seen {row['never_seen']}, seen twice "
        f"{row['seen_twice']}, upstream 429s {row['upstream_429s']}, most in 2 s: "
        f"{row['most_in_2s_queued_before']} (queued before), {row['most_in_2s_sent_after']} "
        f"(sent after), reload {row['reload_ms']:.1f} ms, {row['span_s']:.1f} s in all"
    )
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
