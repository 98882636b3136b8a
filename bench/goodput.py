"""Bulk jobs of several tools on one quota: through the proxy, against the retry strategies tools
use today. Run with ``python -m bench.goodput`` (``--quick`` for a smoke run of a minute or two).

What a security team feels is how long a bulk job takes when several tools share one quota, how
many 429s they eat, and whether one tool starves another. N tools (``--tools``, default 1, 3 and
8) each run a bulk job of M GETs of ``/api/machines``, M·N = ``--calls`` in all (rounded up to a
multiple of N), against the simulator enforcing ``--limit`` (default 20 per 2 s and 300 per
minute: Defender's 100 per minute and 1,500 per hour, sped up). The strict API answers 429 with
Retry-After the moment a sliding window is over. The total exceeds the long limit's count, so
both limits bind. Tools differ as real ones do: tool i has ``WORKERS[i mod 4]`` concurrent
workers (1, 4, 2, 8, 1, 4, …); each sends its own ``User-Agent`` and
``X-Defender-Proxy-Client: tool-<i>``.

Variants, each against a simulator of its own (their quotas are independent, so the variants of
one N and round run at the same time; the calls are a few per second, not CPU-bound):

- ``proxy``: one proxy (in-process store) with the same limits on ``machines.list``,
  ``throttle.margin`` ``--margin`` (100 ms: the loopback hop, as in ``bench/quota.py``) and
  ``max_wait`` twice the longest window. No caller ever waits that long here: at most ``W``
  callers (30 for N = 8) wait at once, and a waiter's slot is at most the long window plus
  ``ceil(W / short count)`` short windows away (64 s for the defaults). Callers send plain
  requests, no retry; any 429 they get is counted;
- ``proxy-3-redis``: three proxies on one private Redis, tool i calling replica i mod 3, as
  sidecars are spread;
- ``urllib3-retry``, ``tenacity``, ``kiota-retry``, ``azure-core-retry``: straight to the
  simulator, each strategy as ``bench.goodput_tools`` describes;
- ``floor``: computed, not run (``bench.floor``): the calls at exactly the quota's pace.

Every variant's tools run in a process of their own (``bench.goodput_tools``), stopped after
``--timeout-factor`` × the floor; calls unanswered by then count as failed.

Figures per variant and N, medians over ``--rounds``: the time until the last tool's last call
ended (and × the floor); upstream 429s (the simulator's ``throttled``); calls failed after all
retries (a final non-2xx, an exception, or unfinished); the spread of the tools' finish times,
(latest − earliest) / latest in %; and the 429s the clients saw on the wire (for a direct
strategy, every one its library retried or gave up on; through the proxy, any it passed on). Targets for
the proxy's variants: 0 upstream 429s, time ≤ 1.03 × floor, spread ≤ 10 %. Last, the goodput:
calls answered 2xx per second until the last tool finished (a strategy that gives calls up can
finish before the floor; its goodput shows what it delivered).

The table is written to ``bench/results/goodput.json`` (``goodput-quick.json``) and the picture
of the largest N's last round to ``docs/goodput.png`` (``bench/results/goodput-quick.png``):
calls the simulator admitted per short window (from its journal, ``GET /_sim/requests``), the
proxy against the direct strategy of the highest goodput (calls answered 2xx per second until
the last tool finished).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.floor import floor_seconds, schedule
from bench.goodput_settings import (
    PATH,
    WORKERS,
    Settings,
    Variant,
    parse_args,
    proxy_config,
    workers,
)
from bench.services import (
    ROOT,
    Service,
    SimulatorClient,
    scrape,
    scratch_dir,
    start_proxies,
    start_proxy,
    start_redis,
    start_simulator,
    stop_all,
    unwind_on_sigterm,
)
from bench.stats import finite, median, meets, write_json
from proxy.units import Limit

#: The simulator keeps its last 10,000 requests (proxy.simulator.journal.MAX_ENTRIES).
JOURNAL_ENTRIES = 10_000

Row = dict[str, float]


FIGURES = (
    ("time_s", "time s", "{:.1f}"),
    ("time_x_floor", "× floor", "{:.3f}"),
    ("upstream_429s", "upstream 429s", "{:.0f}"),
    ("failed", "failed calls", "{:.0f}"),
    ("spread_pct", "spread %", "{:.1f}"),
    ("client_429s", "client 429s", "{:.0f}"),
    ("goodput", "goodput /s", "{:.2f}"),
)
#: The proxy's targets: (figure, comparison, bound).
TARGETS = (("upstream_429s", "==", 0.0), ("time_x_floor", "<=", 1.03), ("spread_pct", "<=", 10.0))


# -- processes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """A variant's running processes: its simulator and the proxies in front of it, if any."""

    sim: Service
    proxies: list[Service]

    @property
    def origins(self) -> list[str]:
        """What the tools call: the proxies, else the simulator."""
        return [proxy.url for proxy in self.proxies] or [self.sim.url]


def start_variant(
    variant: Variant, settings: Settings, workdir: Path, tag: str, started: list[Service]
) -> Setup:
    """The variant's simulator and proxies (each added to ``started`` once it runs); the proxies
    log to ``workdir`` (kept with ``BENCH_LOG_DIR``)."""
    sim = start_simulator(None, *(str(limit) for limit in settings.limits))
    started.append(sim)
    logs = [workdir / f"{tag}-{variant.name}-{i}.log" for i in range(variant.replicas)]
    if variant.replicas == 0:
        return Setup(sim, [])
    if variant.replicas == 1:
        proxy = start_proxy(sim.port, config=proxy_config(settings), log=logs[0])
        started.append(proxy)
        return Setup(sim, [proxy])
    store = start_redis(workdir)
    started.append(store)
    config = proxy_config(settings, store.port, variant.replicas, f"goodput-{tag}")
    proxies = start_proxies(sim.port, config, logs)
    started.extend(proxies)
    return Setup(sim, proxies)


async def run_tools(
    strategy: str, origins: list[str], settings: Settings, n: int, deadline: float
) -> dict[str, Any]:
    """``bench.goodput_tools`` for one variant; its JSON report. Killed if it outlives the
    deadline by a minute (its own deadline stops it first)."""
    args = [sys.executable, "-m", "bench.goodput_tools", "--strategy", strategy]
    for origin in origins:
        args += ["--url", origin]
    args += ["--path", PATH, "--tools", ",".join(map(str, workers(n)))]
    args += ["--calls", str(settings.per_tool(n)), "--deadline", f"{deadline:.3f}"]
    args += ["--timeout", f"{settings.max_wait + 30:g}"]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), deadline + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy} tools exited {proc.returncode}: {err.decode()[-2000:]}")
    report: dict[str, Any] = json.loads(out)
    return report


# -- one case: every variant for one N and round -------------------------------------------------


@dataclass
class Outcome:
    """What one variant did in one case: its figures and the simulator's admission times."""

    row: Row
    #: seconds from the start when the simulator admitted each call, and answered 429
    admitted: list[float]
    throttled: list[float]
    #: each tool's last call's end and its workers
    finishes: list[tuple[float, int]]
    journal_complete: bool


def figures(report: dict[str, Any], stats: dict[str, Any], floor: float) -> Row:
    """A variant's figures from its tools' report and its simulator's counters."""
    tools = report["tools"]
    finishes = [float(tool["finish_s"]) for tool in tools]
    latest, earliest = max(finishes), min(finishes)
    return {
        "time_s": latest,
        "time_x_floor": latest / floor if floor > 0 else math.nan,
        "upstream_429s": float(stats["throttled"]),
        "failed": float(sum(tool["failed"] + tool["unfinished"] for tool in tools)),
        "spread_pct": 100.0 * (latest - earliest) / latest if latest > 0 else 0.0,
        "client_429s": float(sum(tool["throttled_seen"] for tool in tools)),
        "goodput": sum(tool["ok"] for tool in tools) / latest if latest > 0 else math.nan,
        "unfinished": float(sum(tool["unfinished"] for tool in tools)),
        "raised": float(sum(tool["raised"] for tool in tools)),
        "ok": float(sum(tool["ok"] for tool in tools)),
        "upstream_requests": float(stats["requests"]),
        "admitted": float(stats["admitted"]),
        "earliest_tool_s": earliest,
    }


#: The proxies' figures a run reports, summed over replicas: the store breaker's openings.
_PROXY_METRICS = {"store_fallbacks": r"^defender_proxy_quota_store_fallbacks_total (\S+)$"}


async def observe(
    session: aiohttp.ClientSession, setup: Setup, report: dict[str, Any], floor: float
) -> Outcome:
    """The simulator's counters and journal, and the proxies' metrics, after the tools are done."""
    stats = await SimulatorClient(session, setup.sim.url).stats()
    async with session.get(f"{setup.sim.url}/_sim/requests") as response:
        journal = (await response.json())["requests"]
    scraped = await scrape(session, setup.proxies, _PROXY_METRICS)
    start = float(report["started_at"])
    admitted = [float(entry["at"]) - start for entry in journal if not entry["throttled"]]
    throttled = [float(entry["at"]) - start for entry in journal if entry["throttled"]]
    finishes = [(float(tool["finish_s"]), int(tool["workers"])) for tool in report["tools"]]
    complete = stats["requests"] <= JOURNAL_ENTRIES
    row = figures(report, stats, floor)
    row["store_fallbacks"] = scraped.get("store_fallbacks", 0.0)
    return Outcome(row, admitted, throttled, finishes, complete)


async def run_case(settings: Settings, n: int, number: int, workdir: Path) -> dict[str, Outcome]:
    """Every variant for ``n`` tools, at the same time, each on processes of its own."""
    floor = settings.floor(n)
    deadline = settings.timeout_factor * floor
    started: list[Service] = []
    try:
        setups = {
            variant.name: start_variant(variant, settings, workdir, f"{number}-{n}", started)
            for variant in settings.variants
        }
        async with asyncio.TaskGroup() as group:
            tasks = {
                variant.name: group.create_task(
                    run_tools(variant.strategy, setups[variant.name].origins, settings, n, deadline)
                )
                for variant in settings.variants
            }
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return {
                name: await observe(session, setups[name], task.result(), floor)
                for name, task in tasks.items()
            }
    finally:
        stop_all(started)


# -- the table and the picture -----------------------------------------------------------------


def summarise(
    settings: Settings, rounds: list[dict[int, dict[str, Outcome]]]
) -> dict[int, dict[str, Row]]:
    """Per N and variant, each figure's median over the rounds."""
    summary: dict[int, dict[str, Row]] = {}
    for n in settings.tools:
        summary[n] = {}
        for variant in settings.variants:
            rows = [results[n][variant.name].row for results in rounds]
            summary[n][variant.name] = {key: median([row[key] for row in rows]) for key in rows[0]}
    return summary


def verdict(row: Row) -> str:
    """Which of the proxy's targets a row meets."""
    missed = [key for key, op, bound in TARGETS if not meets(row[key], op, bound)]
    if row["failed"]:
        missed.append("failed")
    return "met" if not missed else "MISSED " + ", ".join(missed)


def table(settings: Settings, summary: dict[int, dict[str, Row]]) -> str:
    """The summary as a Markdown table, a block per N led by its floor."""
    head = "| N | variant | " + " | ".join(title for _, title, _ in FIGURES) + " | targets |"
    lines = [head, "|" + "---|" * (len(FIGURES) + 3)]
    for n, rows in summary.items():
        floor = settings.floor(n)
        empty = " | ".join("" for _ in FIGURES[2:-1])
        pace = n * settings.per_tool(n) / floor
        lines.append(f"| {n} | floor | {floor:.1f} | 1.000 | {empty} | {pace:.2f} | |")
        for variant in settings.variants:
            row = rows[variant.name]
            cells = " | ".join(
                "-" if math.isnan(row[key]) else fmt.format(row[key]) for key, _, fmt in FIGURES
            )
            judged = verdict(row) if variant.replicas else ""
            lines.append(f"| {n} | {variant.name} | {cells} | {judged} |")
    return "\n".join(lines)


def best_direct(settings: Settings, rows: dict[str, Row]) -> str | None:
    """The direct strategy of the highest goodput (calls answered 2xx per second), if any ran."""
    direct = [variant.name for variant in settings.variants if variant.replicas == 0]
    return max(direct, key=lambda name: rows[name]["goodput"], default=None)


def picture(
    settings: Settings, last: dict[str, Outcome], n: int, rows: dict[str, Row]
) -> dict[str, Any] | None:
    """Draw the largest N's last round, the proxy against the best direct strategy; what was
    drawn, for the JSON (None when either did not run)."""
    from bench.goodput_plot import Series, draw, saved  # matplotlib is loaded only to draw

    other = best_direct(settings, rows)
    if other is None or "proxy" not in last:
        return None
    path = Path("bench/results/goodput-quick.png" if settings.quick else "docs/goodput.png")
    limits = ", ".join(str(limit) for limit in settings.limits)
    total = n * settings.per_tool(n)
    series = [
        Series(label, last[name].admitted, last[name].throttled, last[name].finishes)
        for label, name in (("proxy", "proxy"), (other, other))
    ]
    floor = schedule(settings.limits, total)
    title = f"{n} tools ({total} calls) on one quota of {limits}: calls the API admitted"
    draw(ROOT / path, series, settings.limits, floor, title)
    return saved(path, series, settings.limits, floor, title)


# -- the run -----------------------------------------------------------------------------------


def describe(n: int, name: str, outcome: Outcome) -> str:
    """One progress line."""
    row = outcome.row
    shown = ", ".join(f"{key}={row[key]:.4g}" for key in row)
    note = "" if outcome.journal_complete else " (journal truncated: picture misses the start)"
    if name.startswith("proxy") and outcome.throttled:
        # What a proxy must never cause: say when, for the proxies' logs (BENCH_LOG_DIR).
        times = ", ".join(f"{at:.3f}" for at in outcome.throttled[:20])
        note += f"\n  upstream 429s at {times} s from the start"
    return f"N={n} {name}: {shown}{note}"


async def _run(settings: Settings, workdir: Path) -> list[dict[int, dict[str, Outcome]]]:
    rounds: list[dict[int, dict[str, Outcome]]] = []
    for number in range(1, settings.rounds + 1):
        results: dict[int, dict[str, Outcome]] = {}
        for n in settings.tools:
            results[n] = await run_case(settings, n, number, workdir)
            for name, outcome in results[n].items():
                print(f"round {number}: {describe(n, name, outcome)}", flush=True)
        rounds.append(results)
    return rounds


def main(argv: list[str] | None = None) -> None:
    """Run the rounds, print the table, write the JSON and the picture."""
    settings = parse_args(argv)
    unwind_on_sigterm()
    began = time.monotonic()
    print(
        f"limits {', '.join(map(str, settings.limits))}; {settings.calls} calls in all; "
        f"N = {', '.join(map(str, settings.tools))}; {settings.rounds} round(s); proxy margin "
        f"{settings.margin * 1000:g} ms, max_wait {settings.max_wait:g} s; workers per tool "
        f"cycle {', '.join(map(str, WORKERS))}",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(scratch_dir("bench-goodput-"))
        rounds = asyncio.run(_run(settings, workdir))
    summary = summarise(settings, rounds)
    elapsed = time.monotonic() - began
    print(f"\nmedians of {settings.rounds} round(s), {os.cpu_count()} cores:")
    print(table(settings, summary))
    widened = [Limit(limit.count, limit.window + settings.margin) for limit in settings.limits]
    for n in settings.tools:
        total = n * settings.per_tool(n)
        print(
            f"N={n}: {settings.per_tool(n)} calls per tool, workers {workers(n)}; floor "
            f"{settings.floor(n):.1f} s, {floor_seconds(widened, total):.1f} s with the proxy's "
            f"{settings.margin * 1000:g} ms margin"
        )
    largest = max(settings.tools)
    drawn = picture(settings, rounds[-1][largest], largest, summary[largest])
    if drawn is not None:
        print(f"picture: {drawn['path']}")
    print(f"whole run {elapsed:.0f} s")
    out = write_json(
        "goodput-quick.json" if settings.quick else "goodput.json",
        finite(
            {
                "settings": {
                    "limits": [str(limit) for limit in settings.limits],
                    "calls": settings.calls,
                    "tools": list(settings.tools),
                    "workers_cycle": list(WORKERS),
                    "rounds": settings.rounds,
                    "margin_s": settings.margin,
                    "max_wait_s": settings.max_wait,
                    "timeout_factor": settings.timeout_factor,
                },
                "floor_s": {str(n): settings.floor(n) for n in settings.tools},
                "elapsed_s": elapsed,
                "rounds": [
                    {str(n): {name: o.row for name, o in case.items()} for n, case in r.items()}
                    for r in rounds
                ],
                "median": {str(n): rows for n, rows in summary.items()},
                "picture": drawn,
            }
        ),
    )
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
