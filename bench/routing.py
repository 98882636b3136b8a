"""Routing time per request, ordinary and adversarial paths: the tree of segment matchers against
the regular expression it replaced.

Run with ``make bench`` (or ``python -m bench.routing``). For each request below, ``Router.match``
of ``proxy.routing`` and of the old expression (``tests/regex_router.py``, kept only as the
tests' oracle) are each timed over ``BENCH_ROUTING_ROUNDS`` (7) interleaved rounds of enough calls
to fill about 20 ms; printed: the median µs per match, and the route each named (they agree). The
adversarial paths are as long as the guard lets through (``guard.MAX_PATH``, 4,096 characters)
and, for the report's own case, 16 KiB (what the request line limit allows; the guard now refuses
it with 414 before routing). The new router folds spellings the old expression did not (repeated
slashes, ``;params``, OData keys, Graph namespaces): the two name the same route for the path's
canonical spelling, and the old one's time is for the path as sent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from bench.stats import median, write_json
from proxy.canonical import canonical_path
from proxy.catalogue import RouteSpec
from proxy.guard import MAX_PATH
from proxy.routing import Router
from tests.regex_router import RegexRouter

ROUNDS = int(os.environ.get("BENCH_ROUTING_ROUNDS", "7"))
ROUND_SECONDS = 0.02


def _fill(piece: str, length: int, prefix: str = "/api/machines/") -> str:
    return prefix + piece * ((length - len(prefix)) // len(piece))


#: (kind, label, method, path)
REQUESTS: tuple[tuple[str, str, str, str], ...] = (
    ("ordinary", "isolate", "POST", "/api/machines/1e5a2b3c4d5e6f/isolate"),
    ("ordinary", "findbyip", "GET", "/api/machines/findbyip(ip='10.1.1.1',timestamp=2024-05-02T10:11:12Z)"),
    ("ordinary", "machines.list", "GET", "/api/machines"),
    ("ordinary", "v1.0 alias", "GET", "/api/v1.0/alerts/da637551227677560813_-961444813"),
    ("ordinary", "export tail", "GET", "/api/machines/SoftwareInventoryExport/files/part-1"),
    ("ordinary", "graph", "PATCH", "/beta/security/incidents/12"),
    ("ordinary", "percent-encoded", "POST", "/api/machines/x/%69solate"),
    ("ordinary", "unknown", "GET", "/api/nothing-here/at-all"),
    ("ordinary", "slashes, trailing", "POST", "//api/machines//1e5a2b3c4d5e6f/isolate/"),
    ("ordinary", "OData key", "GET", "/api/machineactions('7f3c')/getPackageUri"),
    ("ordinary", "Graph namespace", "POST", "/v1.0/security/microsoft.graph.security.runHuntingQuery"),
    ("adversarial", "Export( ×2,330 (16 KiB)", "GET", "/api/machines/" + "Export(" * 2330),
    ("adversarial", "Export( to MAX_PATH", "GET", _fill("Export(", MAX_PATH)),
    ("adversarial", "'(' to MAX_PATH", "GET", _fill("(", MAX_PATH)),
    ("adversarial", "'()' to MAX_PATH", "GET", _fill("()", MAX_PATH)),
    ("adversarial", "findbyip( to MAX_PATH", "GET", _fill("findbyip(", MAX_PATH - 1) + ")"),
    ("adversarial", "long glob + call", "GET", _fill("x", MAX_PATH - 9) + "Export(()"),
    ("adversarial", "2,046 segments", "GET", _fill("/a", MAX_PATH, "/api")),
    ("adversarial", "segments under **", "POST", _fill("/a", MAX_PATH, "/v1.0/security")),
    ("adversarial", "ſ to MAX_PATH", "GET", _fill("ſ", MAX_PATH)),
    ("adversarial", "%41 to MAX_PATH", "GET", _fill("%41", MAX_PATH)),
    ("adversarial", "'//' to MAX_PATH", "GET", _fill("//", MAX_PATH)),
    ("adversarial", "';x' to MAX_PATH", "GET", _fill(";x", MAX_PATH)),
    ("adversarial", "('x') to MAX_PATH", "GET", _fill("('x')", MAX_PATH, "/api/machineactions")),
)  # fmt: skip


def _time(match: Callable[[str, str], RouteSpec], method: str, path: str, calls: int) -> float:
    """Seconds for ``calls`` matches of one request."""
    started = time.perf_counter()
    for _ in range(calls):
        match(method, path)
    return time.perf_counter() - started


def _calls(match: Callable[[str, str], RouteSpec], method: str, path: str) -> int:
    """How many matches of one request fill about ROUND_SECONDS."""
    calls = 1
    while (took := _time(match, method, path, calls)) < ROUND_SECONDS / 4:
        calls *= 2
    return max(1, round(calls * ROUND_SECONDS / took))


def main() -> None:
    """Time every request with both routers and print the medians."""
    new, old = Router(), RegexRouter()
    print(f"routing: µs per match, median of {ROUNDS} rounds (new tree / old regular expression)")
    print(f"{'':12} {'request':28} {'chars':>6} {'new µs':>9} {'old µs':>11} {'old/new':>8}  route")
    rows: list[dict[str, object]] = []
    for kind, label, method, path in REQUESTS:
        route = new.match(method, path).name
        # The old expression knew no canonical form: it agrees on the path's canonical spelling.
        assert route == old.match(method, canonical_path(path)).name, (label, route)
        matches = {"new": new.match, "old": old.match}
        calls = {name: _calls(match, method, path) for name, match in matches.items()}
        times: dict[str, list[float]] = {name: [] for name in matches}
        for _ in range(ROUNDS):
            for name, match in matches.items():
                seconds = _time(match, method, path, calls[name])
                times[name].append(seconds / calls[name] * 1e6)
        new_us, old_us = median(times["new"]), median(times["old"])
        rows.append(
            {"kind": kind, "request": label, "chars": len(path), "new_us": new_us,
             "old_us": old_us, "route": route}
        )  # fmt: skip
        print(
            f"{kind:12} {label:28} {len(path):>6} {new_us:>9.2f} {old_us:>11.2f}"
            f" {old_us / new_us:>7.1f}×  {route}"
        )
    print(f"results: {write_json('routing.json', rows)}")


if __name__ == "__main__":
    main()
