"""What reading a request body's top-level keys costs, per MiB of body, while it streams upstream.

Run with ``python -m bench.body_keys``. One core, no network: each body is fed to a fresh
``proxy.body_keys.KeyCollector`` in chunks (64 KiB, as aiohttp hands on a body that arrives
fast, unless the row says otherwise) and finished. Each figure is the median of ``BENCH_ROUNDS``
runs: milliseconds per MiB of body and per body. The first rows are bodies as callers send them
(an indicators import: thousands of small values; an action with one long comment; deep
nesting; a body four times the scan bound, of which only the first MiB is read); the last rows
are the worst a caller can shape, each stopped by a bound of the collector (``MAX_STEPS``), and
the small isolate body the API documents.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import orjson

from proxy.body_keys import MAX_SCAN, KeyCollector

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))
CHUNK = 64 * 1024
MIB = 2**20


def _indicators(size: int) -> bytes:
    indicator = {
        "indicatorValue": "9f2b4c7e1a3d5f60718293a4b5c6d7e8f9012345",
        "indicatorType": "FileSha1",
        "action": "Alert",
        "title": "Known bad file from the threat feed",
        "description": "Seen on three hosts; blocked at the gateway on the first attempt.",
        "severity": "High",
        "recommendedActions": "Isolate the machine and collect an investigation package.",
        "rbacGroupNames": ["Servers", "Workstations"],
        "generateAlert": True,
        "expirationTime": "2027-01-01T00:00:00Z",
    }
    count = size // (len(orjson.dumps(indicator)) + 1)
    return orjson.dumps({"Indicators": [indicator] * count})


def _long_string(size: int) -> bytes:
    return orjson.dumps({"IsolationType": "Full", "Comment": "x" * size})


def _nested(size: int) -> bytes:
    depth = 1000
    inner = b"[" * depth + b"1" + b"]" * depth
    return b'{"Comment": [' + b",".join([inner] * (size // len(inner))) + b"]}"


def _tiny_members(size: int) -> bytes:
    return b"{" + b",".join([b'"a":1'] * (size // 6)) + b"}"


def _tiny_objects(size: int) -> bytes:
    return b'{"a": [' + b",".join([b'{"a":[]}'] * (size // 9)) + b"]}"


#: name -> (body, chunk size)
BODIES: dict[str, Callable[[], tuple[bytes, int]]] = {
    "indicators import, many small values": lambda: (_indicators(MIB - 64), CHUNK),
    "one long string value": lambda: (_long_string(MIB - 64), CHUNK),
    "nested arrays, 1,000 deep": lambda: (_nested(MIB - 64), CHUNK),
    f"{4 * MAX_SCAN // MIB} MiB, the first {MAX_SCAN // MIB} read": lambda: (
        _long_string(4 * MAX_SCAN),
        CHUNK,
    ),
    "worst: one long string in 64 B chunks": lambda: (_long_string(MIB - 64), 64),
    "worst: top-level members a:1": lambda: (_tiny_members(MIB), CHUNK),
    "worst: nested {a:[]} objects": lambda: (_tiny_objects(MIB), CHUNK),
}


def _collect(body: bytes, chunk: int) -> None:
    collector = KeyCollector()
    for start in range(0, len(body), chunk):
        collector.feed(body[start : start + chunk])
    collector.finish()
    collector.result()


def _median_seconds(body: bytes, chunk: int, repeat: int = 1) -> float:
    runs = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(repeat):
            _collect(body, chunk)
        runs.append((time.perf_counter() - started) / repeat)
    return statistics.median(runs)


def main() -> None:
    """Print the cost of the key collector for each body."""
    width = max(map(len, BODIES)) + 2
    print(f"{'body':<{width}} {'size':>9}  ms per MiB   ms per body")
    for name, make in BODIES.items():
        body, chunk = make()
        seconds = _median_seconds(body, chunk)
        per_mib = seconds * 1000 / (len(body) / MIB)
        print(f"{name:<{width}} {len(body) / MIB:7.2f}Mi  {per_mib:9.2f}  {seconds * 1000:11.2f}")
    small = orjson.dumps({"Comment": "Isolating after the alert", "IsolationType": "Full"})
    seconds = _median_seconds(small, CHUNK, repeat=2000)
    print(f"{'the isolate body':<{width}} {len(small):8d}B  {'':>9}  {seconds * 1000:11.4f}")


if __name__ == "__main__":
    main()
