"""What scrubbing costs: ``proxy.logs.scrub`` per call, and the redaction step of one request line.

Run with ``python -m bench.scrub``. Each figure is the best of several rounds of timeit, in µs per
call, on one core; no processes, no network. The texts are the kinds the proxy logs: request paths
(every request), upstream error messages (every error), and ones that carry a secret.
"""

from __future__ import annotations

import functools
import os
import timeit
from collections.abc import Callable
from typing import Any

from proxy import logs

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
NUMBER = int(os.environ.get("BENCH_NUMBER", "20000"))

TEXTS: dict[str, str] = {
    "path, short": "/api/alerts",
    "path, machine GUID": "/api/machines/1e5ad6b8-52a3-4bb6-bd2a-0a5b1b9a2d41/isolate",
    "path, file name": "/api/files/4b6f0c3e8f9a2d1c7e5b3a9f0d2c4e6a8b1c3d5e/stats.json",
    "message, short": "Machine not found",
    "message, 96 chars": (
        "Invalid ODataQuery: $filter=lastSeen gt 2024-01-01 is not supported for this entity set"
    ),
    "message, 256 chars": (
        "The request is invalid. Details: the property 'computerDnsName' does not exist on type "
        "'microsoft.windowsDefenderATP.api.PublicMachineDto'. Make sure to only use property names "
        "that are defined by the type or mark the type as open type; see the documentation."
    ),
    "message with a cookie": "Rejected header Cookie: session=4f8a2c1e9b7d3a5f; theme=dark",
    "message with a JSON secret": 'Bad body {"client_secret": "Qx7~aB3.9fK_2mZ", "scope": "x"}',
    "message with a bearer JWT": (
        "Token rejected: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9."
        "eyJhdWQiOiJodHRwczovL2FwaSJ9.c2lnbmF0dXJlLXNlY3JldA"
    ),
}

REQUEST_LINE: dict[str, Any] = {
    "method": "GET",
    "route": "machines.get",
    "path": "/api/machines/1e5ad6b8-52a3-4bb6-bd2a-0a5b1b9a2d41",
    "status": 200,
    "source": "upstream",
    "duration_ms": 1.234,
    "upstream_ms": 1.1,
    "bytes_in": 0,
    "bytes_out": 512,
    "request_id": "9b1c2d3e-4f50-4617-8283-94a5b6c7d8e9",
    "quota": "admitted",
    "admit_ms": 0.012,
    "event": "request",
    "level": "info",
    "timestamp": "2026-01-01T00:00:00.000000Z",
}
ERROR_LINE: dict[str, Any] = {
    **REQUEST_LINE,
    "status": 404,
    "code": "ResourceNotFound",
    "message": "Machine not found",
    "target": "6c1f7a2e-0b3d-4e5f-8a9b-0c1d2e3f4a5b",
}


def _best(call: Callable[[], object]) -> float:
    """µs per call: the best of ``ROUNDS`` rounds of ``NUMBER`` calls."""
    return min(timeit.repeat(call, number=NUMBER, repeat=ROUNDS)) / NUMBER * 1e6


def main() -> None:
    """Print µs per call for each text and for the redaction of a whole request line."""
    width = max(map(len, TEXTS)) + 2
    print(f"{'scrub(text)':<{width}} µs per call")
    for name, text in TEXTS.items():
        print(f"{name:<{width}} {_best(functools.partial(logs.scrub, text)):6.2f}")
    for name, line in (("request line, 200", REQUEST_LINE), ("request line, 404", ERROR_LINE)):
        cost = _best(functools.partial(_redact_copy, line))
        copy = _best(functools.partial(dict, line))
        print(f"{'redaction, ' + name:<{width}} {cost - copy:6.2f}")


def _redact_copy(line: dict[str, Any]) -> object:
    """The redaction step of the log chain on a fresh copy of ``line`` (it edits what it gets)."""
    redact: Any = logs._redact
    return redact(None, "info", dict(line))


if __name__ == "__main__":
    main()
