"""What HTTPS on the proxy port adds to a call: the same proxy with and without ``listen_tls``.

Run with ``python -m bench.listen_tls``. The simulator on core 1, two proxies on core 0 (every
feature on, logs to a file), one plain and one serving a trustme certificate (ECDSA P-256, the
key cert-manager's Certificate in the gateway overlay asks for), all on 127.0.0.1. Each round
times, for each system in turn (the order alternating), ``BENCH_CALLS`` sequential GETs on one
kept-alive connection, and ``BENCH_HANDSHAKES`` GETs each on a new connection (TCP, and for HTTPS
the TLS 1.3 handshake, in the time). A call is timed from the request's write to the answer's last
byte by ``http.client``, the client a script would use. Prints the medians over ``BENCH_ROUNDS``
rounds of p50 and p99 per system and what HTTPS adds; writes ``bench/results/listen_tls.json``.
Each proxy first serves ``BENCH_CALLS`` untimed calls, so neither round meets a cold process.
"""

from __future__ import annotations

import http.client
import os
import ssl
import time
from pathlib import Path

import trustme

from bench.services import (
    BENCH_THROTTLE,
    scratch_dir,
    services,
    start_proxy,
    start_simulator,
    unwind_on_sigterm,
)
from bench.stats import medians, percentile, write_json

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CALLS = int(os.environ.get("BENCH_CALLS", "2000"))
HANDSHAKES = int(os.environ.get("BENCH_HANDSHAKES", "300"))
PATH = "/api/machines"
SYSTEMS = ("http", "https")


def _connection(system: str, port: int, trust: ssl.SSLContext) -> http.client.HTTPConnection:
    if system == "https":
        return http.client.HTTPSConnection("127.0.0.1", port, context=trust, timeout=10)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def _call(connection: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    connection.request("GET", PATH)
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{PATH} answered {response.status}")
    return (time.perf_counter() - started) * 1000


def _kept_alive(system: str, port: int, trust: ssl.SSLContext) -> list[float]:
    connection = _connection(system, port, trust)
    _call(connection)  # the connection (and handshake) before the clock
    try:
        return [_call(connection) for _ in range(CALLS)]
    finally:
        connection.close()


def _fresh(system: str, port: int, trust: ssl.SSLContext) -> list[float]:
    timings = []
    for _ in range(HANDSHAKES):
        started = time.perf_counter()
        connection = _connection(system, port, trust)
        _call(connection)
        timings.append((time.perf_counter() - started) * 1000)
        connection.close()
    return timings


def _round(number: int, ports: dict[str, int], trust: ssl.SSLContext) -> dict[str, float]:
    row: dict[str, float] = {}
    order = SYSTEMS if number % 2 else SYSTEMS[::-1]
    for system in order:
        kept = _kept_alive(system, ports[system], trust)
        fresh = _fresh(system, ports[system], trust)
        row[f"{system} kept-alive p50"] = percentile(kept, 50)
        row[f"{system} kept-alive p99"] = percentile(kept, 99)
        row[f"{system} new connection p50"] = percentile(fresh, 50)
        row[f"{system} new connection p99"] = percentile(fresh, 99)
    for kind in ("kept-alive p50", "kept-alive p99", "new connection p50", "new connection p99"):
        row[f"added by https, {kind}"] = row[f"https {kind}"] - row[f"http {kind}"]
    return row


def main() -> None:
    unwind_on_sigterm()
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    with scratch_dir("bench-listen-tls-") as work:
        cert, key = Path(work) / "tls.crt", Path(work) / "tls.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        sim = start_simulator(1)
        with services(sim):
            plain = start_proxy(sim.port, 0, log=Path(work) / "http.log")
            tls = f"listen_tls: {{cert: '{cert}', key: '{key}'}}\n"
            with services(plain):
                secure = start_proxy(
                    sim.port, 0, BENCH_THROTTLE + tls, log=Path(work) / "https.log"
                )
                with services(secure):
                    ports = {"http": plain.port, "https": secure.port}
                    for system in SYSTEMS:  # both processes warm before the clock
                        _kept_alive(system, ports[system], trust)
                    rows = [_round(number, ports, trust) for number in range(1, ROUNDS + 1)]
    summary = medians(rows)
    print(f"\nms per call, medians of {ROUNDS} rounds ({CALLS} kept-alive, {HANDSHAKES} new)")
    for name, value in summary.items():
        print(f"  {name:<36} {value:8.3f}")
    path = write_json(
        "listen_tls",
        {
            "settings": {"rounds": ROUNDS, "calls": CALLS, "handshakes": HANDSHAKES},
            "medians_ms": summary,
            "rounds_ms": rows,
        },
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
