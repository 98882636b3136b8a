"""What a request's spans cost, in CPU µs per request, apart from the rest of the proxy.

``bench.overhead`` measures the whole proxy with tracing on and off, but on a shared machine its
latencies move with the neighbours' load. This one isolates the span work, which is CPU alone: a
process makes the calls the handler makes for one request (``proxy.spans``: the caller's
``traceparent`` read, the server span, the quota span when asked, the upstream exchange and its
``traceparent``, the end with the outcome's attributes, the log line's ids) ``BENCH_REQUESTS``
times (20,000), with the SDK exporting over OTLP/HTTP to the stand-in collector
(``tests.otlp_collector``, in its own process), then stops the SDK (the last export included).
Its CPU time, every thread counted, divided by the requests, is the figure; the best of
``BENCH_ROUNDS`` (5) runs of each case, in fresh processes, the cases interleaved.

Cases: every request sampled (two spans; three with a quota wait), none sampled (the caller's
``traceparent`` says 00: nothing recorded, the trace still propagated), and one request in ten
sampled (``parentbased_traceidratio`` 0.1, no caller ``traceparent``). Tracing off is not a case:
the handler then makes none of these calls (``tests/integration/test_imports.py`` pins that not
even the modules load), and its cost is ``bench.overhead``'s ``proxy-memory`` column.

With ``BENCH_BASELINE`` naming another checkout of the project (``git worktree add /tmp/base
main``), it then measures tracing off against that checkout's proxy, both in front of the
simulator, pinned to core 0 (the simulator, ``wrk`` and the load generator on core 1), taking
turns ``BENCH_PAIRS`` (6) times, the first of each pair alternating: CPU µs per request at a
fixed 500 req/s for 4 s (``bench.overhead``'s open-loop generator), and CPU ms per 1,000 requests
under ``wrk`` on ``bench.overhead``'s mix for 4 s; medians. Pairs in quick succession see the same
neighbours, which ``bench.overhead``'s rounds of five systems do not.

Run with ``python -m bench.tracing``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.services import ROOT, Service, start_collector, start_proxy, start_simulator, stop_all
from bench.stats import cpu_seconds

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
BASELINE = os.environ.get("BENCH_BASELINE", "")
PAIRS = int(os.environ.get("BENCH_PAIRS", "6"))
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
#: name → (the caller's traceparent or "", whether the quota made it wait, OTEL_* of the case)
CASES: dict[str, tuple[str, bool, dict[str, str]]] = {
    "sampled, admitted at once (2 spans)": (SAMPLED, False, {}),
    "sampled, waited (3 spans)": (SAMPLED, True, {}),
    "caller did not sample (0 spans)": (UNSAMPLED, False, {}),
    "ratio 0.1, no traceparent": (
        "",
        False,
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    ),
}


def _one(traceparent: str, waited: bool) -> dict[str, float]:
    """In a fresh process: make the spans of ``REQUESTS`` requests; CPU µs per request."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from proxy.outcome import Outcome
    from proxy.spans import Spans

    spans = Spans(["otlp"])
    listener = spans.listener("default", "http://127.0.0.1:9000", "http")
    headers = CIMultiDictProxy(CIMultiDict({"traceparent": traceparent} if traceparent else {}))
    started = time.process_time()
    for _ in range(REQUESTS):
        outcome = Outcome("GET", "/api/machines", "0f8fad5b-d9cb-469f-a165-70867728950e")
        trace = listener.request(headers, outcome)
        trace.admitting()
        trace.admitted("waited" if waited else "admitted", 0.25 if waited else 0.0)
        trace.sending()
        trace.answered(200)
        outcome.status = 200
        trace.end(outcome)
        trace.ids()
    made = time.process_time()
    spans.shutdown()
    ended = time.process_time()
    return {
        "request_us": (made - started) / REQUESTS * 1e6,
        "total_us": (ended - started) / REQUESTS * 1e6,
    }


def _spans_received(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
        stats: dict[str, int] = json.load(response)
    return stats["spans"]


def _off_against_baseline(baseline: Path) -> None:
    """Tracing off here against ``baseline``'s proxy, in pairs; print the medians."""
    from bench import overhead

    overhead.SATURATION_SECONDS = 4
    running: list[Service] = []
    figures: dict[str, dict[str, list[float]]] = {
        "this checkout": {"fixed": [], "saturated": []},
        str(baseline): {"fixed": [], "saturated": []},
    }
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as work:
        script = Path(work) / "mix.lua"
        script.write_text(overhead.MIX_LUA)
        try:
            running.append(sim := start_simulator(1))
            running.append(here := start_proxy(sim.port, 0))
            running.append(there := start_proxy(sim.port, 0, cwd=baseline))
            for number in range(PAIRS):
                pair = [("this checkout", here), (str(baseline), there)]
                if number % 2:
                    pair.reverse()
                for name, proxy in pair:
                    cpu = cpu_seconds(proxy.pid)
                    (result,) = overhead._fixed_rate([(proxy.port, 500.0, 4.0, 0)])
                    used = cpu_seconds(proxy.pid) - cpu
                    figures[name]["fixed"].append(used / result["answers"] * 1e6)
                for name, proxy in pair:
                    mix = overhead._saturate(proxy.port, proxy.pid, sim.pid, script)
                    figures[name]["saturated"].append(mix["cpu_ms_per_1000"])
        finally:
            stop_all(running)
    print(f"\ntracing off against {baseline}: medians of {PAIRS} pairs")
    print(f"{'proxy':<40}{'CPU µs/request at 500/s':>26}{'CPU ms/1,000 saturated':>26}")
    for name, measured in figures.items():
        fixed = statistics.median(measured["fixed"])
        saturated = statistics.median(measured["saturated"])
        print(f"{name:<40}{fixed:>26.0f}{saturated:>26.0f}")


def main() -> None:
    """Run every case ``ROUNDS`` times, interleaved; print the best of each (and, with
    ``BENCH_BASELINE``, tracing off against that checkout)."""
    if sys.argv[1:2] == ["one"]:
        print(json.dumps(_one(sys.argv[2], sys.argv[3] == "1")))
        return
    collector = start_collector(1 if (os.cpu_count() or 1) >= 2 else None)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CASES}
    try:
        for _ in range(ROUNDS):
            for name, (traceparent, waited, otel) in CASES.items():
                before = _spans_received(collector.url)
                env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
                env |= {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                    "OTEL_BSP_MAX_QUEUE_SIZE": str(REQUESTS * 3),
                    **otel,
                }
                out = subprocess.run(
                    [sys.executable, "-m", "bench.tracing", "one", traceparent, str(int(waited))],
                    capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=True,
                )  # fmt: skip
                figures: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
                figures["spans"] = (_spans_received(collector.url) - before) / REQUESTS
                results[name].append(figures)
    finally:
        stop_all([collector])
    print(f"CPU per request (every thread, the export included), µs: best of {ROUNDS} runs")
    print(f"{'case':<40}{'CPU µs':>10}{'of it after the last request':>30}{'spans/request':>15}")
    for name, runs in results.items():
        best = min(runs, key=lambda run: run["total_us"])
        after = best["total_us"] - best["request_us"]
        print(f"{name:<40}{best['total_us']:>10.1f}{after:>30.1f}{best['spans']:>15.2f}")
    if BASELINE:
        _off_against_baseline(Path(BASELINE))


if __name__ == "__main__":
    main()
