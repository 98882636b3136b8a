"""The quota's Redis call from the client's side: CPU per admission, lean client against redis-py.

Run with ``make bench`` (or ``python -m bench.redis_client``). A private ``redis-server`` (pinned
to core 1) and this process (core 0) on 127.0.0.1; each client makes ``BENCH_REDIS_CALLS`` (5,000)
admissions with the real admit script through ``RedisStore``, once one call at a time and once
32 in flight, in several interleaved rounds. Printed: this process's CPU time per call (user +
system, ``time.process_time``) and the wall time per call, medians over the rounds.
"""

from __future__ import annotations

import asyncio
import os
import time

import uvloop

from bench.services import scratch_dir, start_redis, stop_all
from bench.stats import median, write_json
from proxy.quota.redis_store import RedisStore
from proxy.quota.store import Quota, as_windows

CALLS = int(os.environ.get("BENCH_REDIS_CALLS", "5000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
IN_FLIGHT = 32
CLIENTS = {"lean": "", "redis-py": "?client_name=bench"}
# Large enough never to hold: every call is the full decision, none a refusal.
QUOTA = Quota("dp:{bench:redis}", as_windows([(100_000_000, 3600.0)], 0.0))


async def _calls(store: RedisStore, in_flight: int) -> tuple[float, float]:
    """(CPU µs per call, wall µs per call) for CALLS admissions, ``in_flight`` at a time."""
    done = 0

    async def worker(index: int) -> None:
        nonlocal done
        while done < CALLS:
            done += 1
            await store.admit(QUOTA, f"m{index}-{done}", 0.0, 0.0, False)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    return (
        (time.process_time() - cpu) / CALLS * 1e6,
        (time.perf_counter() - wall) / CALLS * 1e6,
    )


async def _round(url: str) -> dict[str, float]:
    row: dict[str, float] = {}
    for name, options in CLIENTS.items():
        store = RedisStore(url + options, timeout=2.0)
        await store.warm()
        await _calls(store, 1)  # warm-up: connections, caches
        for in_flight in (1, IN_FLIGHT):
            cpu, wall = await _calls(store, in_flight)
            row[f"{name} cpu {in_flight}"] = cpu
            row[f"{name} wall {in_flight}"] = wall
        await store.close()
    return row


def main() -> None:
    """Rounds, then the table of medians."""
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    with scratch_dir("redis-client") as work:
        redis = start_redis(work, cpu=1)
        try:
            rows = []
            for number in range(1, ROUNDS + 1):
                rows.append(uvloop.run(_round(f"redis://127.0.0.1:{redis.port}/0")))
                print(f"round {number}: " + ", ".join(f"{k} {v:.0f}" for k, v in rows[-1].items()))
        finally:
            stop_all([redis])
    table = {key: median([row[key] for row in rows]) for key in rows[0]}
    print(f"\nmedians of {ROUNDS} rounds, {CALLS} admissions each (µs per admission)")
    print(f"{'client':10} {'CPU, 1 in flight':>18} {'CPU, 32 in flight':>18} {'wall, 1':>9}")
    for name in CLIENTS:
        print(
            f"{name:10} {table[f'{name} cpu 1']:18.0f} {table[f'{name} cpu {IN_FLIGHT}']:18.0f} "
            f"{table[f'{name} wall 1']:9.0f}"
        )
    ratio = table["lean cpu 1"] / table["redis-py cpu 1"]
    print(f"lean client's CPU per call, one in flight: {ratio:.2f}× redis-py's")
    write_json("redis_client.json", {"calls": CALLS, "rounds": ROUNDS, "medians": table})


if __name__ == "__main__":
    main()
