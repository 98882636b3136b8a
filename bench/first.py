"""First benchmark of the proxy core: added latency, saturation, idle RSS, RSS while streaming 1 GiB.

Run with ``make bench`` (or ``python -m bench.first``). The simulator and the load generator share
one core and the proxy gets the other (taskset), several rounds are run and medians are printed,
and the table is also written to ``bench/results/first.json``.
"""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp

from bench.load import fixed_rate, wrk
from bench.services import ROOT, services, start_proxy, start_simulator
from bench.stats import medians, meets, percentile, rss_mib, write_json

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
RATE = 200.0  # requests/s to each of the direct and the proxied URL
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
SATURATION_SECONDS = int(os.environ.get("BENCH_SATURATION_SECONDS", "8"))
STREAM_BYTES = 2**30


async def _stream_through(url: str, pid: int) -> tuple[float, float, float]:
    """(RSS before, peak RSS, seconds) while 1 GiB streams through the proxy and is discarded."""
    before = rss_mib(pid)
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    received = 0
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(url, headers={"X-Simulate": f"download={STREAM_BYTES}"}) as response:
            async for chunk in response.content.iter_chunked(2**16):
                received += len(chunk)
    elapsed = time.perf_counter() - started
    done.set()
    await sampler
    if received != STREAM_BYTES:
        raise RuntimeError(f"streamed {received} bytes, expected {STREAM_BYTES}")
    return before, peak, elapsed


async def _warm(url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(url) as response:
                await response.read()


def main() -> None:
    """Run the rounds and print the table."""
    sim = start_simulator(cpu=1)
    proxy = start_proxy(sim.port, cpu=0)
    direct_url = f"http://127.0.0.1:{sim.port}/api/machines"
    proxy_url = f"http://127.0.0.1:{proxy.port}/api/machines"
    rounds: list[dict[str, float]] = []
    with services(proxy, sim):
        asyncio.run(_warm(proxy_url, 300))
        time.sleep(1.0)
        idle = rss_mib(proxy.pid)
        for number in range(1, ROUNDS + 1):
            latencies = asyncio.run(fixed_rate([direct_url, proxy_url], RATE * 2, SECONDS))
            direct, proxied = latencies[direct_url], latencies[proxy_url]
            saturation = wrk(proxy_url, SATURATION_SECONDS, connections=32, cpu=1)
            direct_saturation = wrk(direct_url, SATURATION_SECONDS, connections=32, cpu=1)
            before, peak, stream_s = asyncio.run(_stream_through(proxy_url, proxy.pid))
            row = {
                "added_p50_ms": percentile(proxied, 50) - percentile(direct, 50),
                "added_p99_ms": percentile(proxied, 99) - percentile(direct, 99),
                "direct_p50_ms": percentile(direct, 50),
                "proxy_p50_ms": percentile(proxied, 50),
                "saturation_rps": saturation,
                "direct_saturation_rps": direct_saturation,
                "stream_growth_mib": peak - before,
                "stream_mib_per_s": 1024 / stream_s,
            }
            rounds.append(row)
            print(
                f"round {number}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items()), flush=True
            )
    summary = medians(rounds)
    summary["idle_rss_mib"] = idle
    targets = {
        "added_p50_ms": ("<=", 1.0),
        "added_p99_ms": ("<=", 3.0),
        "saturation_rps": (">=", 2000.0),
        "idle_rss_mib": ("<=", 60.0),
        "stream_growth_mib": ("<=", 20.0),
    }
    print(
        f"\nmedians of {ROUNDS} rounds ({RATE:.0f} req/s each to direct and proxy, {SECONDS:.0f} s)"
    )
    print(f"{'figure':<24}{'median':>12}  target")
    for key, value in summary.items():
        target = targets.get(key)
        verdict = ""
        if target is not None:
            op, bound = target
            met = meets(value, op, bound)
            verdict = f"{op} {bound:g}  {'met' if met else 'MISSED'}"
        print(f"{key:<24}{value:>12.3f}  {verdict}")
    out = write_json("first.json", {"rounds": rounds, "median": summary})
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
