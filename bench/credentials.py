"""What holding the credential costs: per request, per mint, and under a burst of tokenless calls.

Run with ``python -m bench.credentials``. The simulator's identity provider in a process of its own
(``defender-proxy simulate --idp-*``, on core 1) on an HTTPS port of 127.0.0.1 (a trustme
certificate), and here, on uvloop, a ``TokenSource`` pointed at it:

- per request: ``TokenSource.token()`` with a token in hand (the path of every tokenless request
  once the first is minted), and the upstream header list built with and without the injected
  ``Authorization`` (``forward.request_headers``), each over ``BENCH_CALLS`` calls;
- per mint: ``BENCH_MINTS`` mints one after the other, with a client secret and with a
  certificate (an RS256-signed assertion), each a fresh azure-identity credential and a new TLS
  connection, as the proxy mints; and the longest the event loop went without running a task
  meanwhile (a 1 ms ticker), the pause every request in flight would see;
- single flight: ``BENCH_BURST`` concurrent ``token()`` calls with no token in hand: how many
  token requests they made (the target is 1) and how long the last one waited.

Prints the medians over ``BENCH_ROUNDS`` rounds; writes ``bench/results/credentials.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import trustme
import uvloop

from bench.services import Service, scratch_dir, services, unwind_on_sigterm, wait_port
from bench.stats import medians, write_json
from proxy import forward
from proxy.credentials import Credentials
from proxy.metrics import Metrics
from proxy.tokens import TokenSource
from tests.support.ports import free_port

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CALLS = int(os.environ.get("BENCH_CALLS", "200000"))
MINTS = int(os.environ.get("BENCH_MINTS", "50"))
BURST = int(os.environ.get("BENCH_BURST", "1000"))
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "0ba0c3a5-1111-4b2d-9c1e-0000000000a1"
SECRET = "bench-secret~value"
SCOPE = "https://api.securitycenter.microsoft.com/.default"
HEADERS = [(b"Host", b"127.0.0.1:8080"), (b"User-Agent", b"bench"), (b"Accept", b"*/*")]


def _start_idp(root: Path) -> tuple[Service, Path, Path]:
    """The identity provider knowing the app: the service, the CA bundle, the app's PEM."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, bundle = root / "idp.crt", root / "idp.key", root / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    rsa = trustme.KeyType.RSA
    app = trustme.CA(key_type=rsa).issue_cert("app.example", key_type=rsa)
    pem, registered = root / "app.pem", root / "app.crt"
    pem.write_bytes(app.private_key_and_cert_chain_pem.bytes())
    app.cert_chain_pems[0].write_to_path(str(registered))
    apps = root / "apps.yaml"
    apps.write_text(
        f"apps:\n  - {{tenant: {TENANT}, client_id: {APP}, roles: [Machine.Read.All],"
        f" secrets: [{{value: {SECRET}}}], certificates: [{registered}]}}\n",
        encoding="utf-8",
    )
    port, idp_port = free_port(), free_port()
    args = ["--port", str(port), "--idp-port", str(idp_port), "--idp-cert", str(cert)]
    args += ["--idp-key", str(key), "--idp-apps", str(apps)]
    proc = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-m", "proxy", "simulate", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    service = Service(proc, idp_port)
    wait_port(idp_port, proc)
    return service, bundle, pem


def _token_requests(url: str, bundle: Path) -> int:
    context = ssl.create_default_context(cafile=str(bundle))
    with urllib.request.urlopen(f"{url}/_sim/identity", context=context, timeout=10) as answer:
        return int(json.load(answer)["token_requests"])


def _source(url: str, bundle: Path, kind: str, file: Path | None) -> TokenSource:
    credentials = Credentials(
        TENANT,
        APP,
        kind,
        None if file is None else str(file),
        authority=url,
        scope=SCOPE,
        secret=SECRET if kind == "secret" else None,
    )
    return TokenSource(credentials, ["default"], Metrics(), str(bundle))


async def _per_request(source: TokenSource) -> dict[str, float]:
    minted = await source.token()
    started = time.perf_counter()
    for _ in range(CALLS):
        await source.token()
    token = (time.perf_counter() - started) / CALLS * 1e6
    started = time.perf_counter()
    for _ in range(CALLS):
        forward.request_headers(HEADERS, "id", None, None, minted.authorization)
    injected = (time.perf_counter() - started) / CALLS * 1e6
    started = time.perf_counter()
    for _ in range(CALLS):
        forward.request_headers(HEADERS, "id", None, None, None)
    plain = (time.perf_counter() - started) / CALLS * 1e6
    return {"token_us": token, "headers_added_us": injected - plain}


async def _mint_ms(source: TokenSource) -> tuple[float, float]:
    """The median time of a mint, and the longest the event loop went without running a task
    during them (what every request in flight waits while a mint holds the loop)."""
    timings = []
    stalls = [0.0]

    async def ticker() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append((time.perf_counter() - started) * 1000 - 1.0)

    ticking = asyncio.create_task(ticker())
    for _ in range(MINTS):
        source._current = None  # each call below mints
        started = time.perf_counter()
        await source.token()
        timings.append((time.perf_counter() - started) * 1000)
    ticking.cancel()
    return statistics.median(timings), max(stalls)


async def _burst(url: str, bundle: Path) -> dict[str, float]:
    source = _source(url, bundle, "secret", None)
    before = await asyncio.to_thread(_token_requests, url, bundle)
    started = time.perf_counter()
    await asyncio.gather(*(source.token() for _ in range(BURST)))
    elapsed = (time.perf_counter() - started) * 1000
    after = await asyncio.to_thread(_token_requests, url, bundle)
    return {"burst_token_requests": after - before, "burst_ms": elapsed}


async def _round(url: str, bundle: Path, pem: Path) -> dict[str, float]:
    secret = _source(url, bundle, "secret", None)
    row = await _per_request(secret)
    row["mint_secret_ms"], row["loop_stall_secret_ms"] = await _mint_ms(secret)
    certificate = _source(url, bundle, "certificate", pem)
    row["mint_certificate_ms"], row["loop_stall_certificate_ms"] = await _mint_ms(certificate)
    row.update(await _burst(url, bundle))
    return row


async def main() -> None:
    unwind_on_sigterm()
    with scratch_dir("bench-credentials-") as root:
        idp, bundle, pem = _start_idp(root)
        url = f"https://127.0.0.1:{idp.port}"
        with services(idp):
            rows = []
            for number in range(1, ROUNDS + 1):
                row = await _round(url, bundle, pem)
                rows.append(row)
                print(f"round {number}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    figures = medians(rows)
    print(
        f"medians of {ROUNDS} rounds: token() with a token in hand {figures['token_us']:.3f} µs, "
        f"the injected header {figures['headers_added_us']:.3f} µs per request; a mint "
        f"{figures['mint_secret_ms']:.1f} ms (secret), {figures['mint_certificate_ms']:.1f} ms "
        f"(certificate), the loop held at most {figures['loop_stall_secret_ms']:.1f} / "
        f"{figures['loop_stall_certificate_ms']:.1f} ms by one; {BURST} concurrent tokenless "
        f"calls: {figures['burst_token_requests']:.0f} token request(s) in "
        f"{figures['burst_ms']:.1f} ms"
    )
    write_json("credentials.json", {"rounds": rows, "medians": figures})


if __name__ == "__main__":
    uvloop.run(main())
