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

Run with ``python -m bench.tracing``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

from bench.common import ROOT, start_collector, stop_all

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
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


def main() -> None:
    """Run every case ``ROUNDS`` times, interleaved; print the best of each."""
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


if __name__ == "__main__":
    main()
