"""What rewriting paging links costs: throughput on a large page, plain and gzip, and the memory
it holds while it streams.

Run with ``python -m bench.links``. One core, no network: a page of ``BENCH_ITEMS`` machines (about
200 bytes each) with its ``@odata.nextLink`` at the end, fed in 64 KiB chunks as the upstream sends
them. Prints MB/s for a plain copy of the chunks (the floor), the rewrite, and gzip
decode-rewrite-encode against a gzip decode-encode alone; the most bytes carried between chunks;
and the peak memory tracemalloc saw while streaming the gzip page.
"""

from __future__ import annotations

import gzip
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator

import orjson

from proxy.codings import Recoder
from proxy.links import Links

ITEMS = int(os.environ.get("BENCH_ITEMS", "50000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CHUNK = 64 * 1024
UPSTREAM = "https://api.security.microsoft.com"
CALLER = "http://127.0.0.1:8080"


def _page() -> bytes:
    items = [
        {
            "id": f"{n:040x}",
            "computerDnsName": f"host-{n:06d}.contoso.com",
            "osPlatform": "Windows11",
            "healthStatus": "Active",
            "lastIpAddress": "10.1.2.3",
            "riskScore": "Low",
        }
        for n in range(ITEMS)
    ]
    link = f"{UPSTREAM}/api/machines?$top={ITEMS}&$skip={ITEMS}"
    return orjson.dumps({"value": items, "@odata.nextLink": link})


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), CHUNK):
        yield body[start : start + CHUNK]


def _best(run: Callable[[], int], size: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return size / best / 1e6


def main() -> None:
    """Print the figures."""
    links = Links(UPSTREAM)
    body = _page()
    coded = gzip.compress(body, 6)
    carried = [0]

    def copy() -> int:
        return sum(len(bytes(chunk)) for chunk in _chunks(body))

    def rewrite() -> int:
        rewriter = links.rewriter(CALLER)
        total = 0
        for chunk in _chunks(body):
            total += len(rewriter.feed(chunk))
            carried[0] = max(carried[0], rewriter.carried)
        return total + len(rewriter.flush())

    def recode(transform: bool) -> Callable[[], int]:
        def run() -> int:
            rewriter = links.rewriter(CALLER)
            recoder = (
                Recoder("gzip", rewriter.feed, rewriter.flush)
                if transform
                else Recoder("gzip", lambda b: b, lambda: b"")
            )
            total = sum(len(p) for chunk in _chunks(coded) for p in recoder.feed(chunk))
            return total + sum(len(p) for p in recoder.finish())

        return run

    print(f"page: {len(body) / 1e6:.1f} MB plain, {len(coded) / 1e6:.2f} MB gzip, link at the end")
    print(f"copy of the chunks            {_best(copy, len(body)):8.0f} MB/s (plain bytes)")
    print(f"rewrite, plain                {_best(rewrite, len(body)):8.0f} MB/s (plain bytes)")
    print(
        f"gzip decode+encode alone      {_best(recode(False), len(body)):8.0f} MB/s (plain bytes)"
    )
    print(f"gzip decode+rewrite+encode    {_best(recode(True), len(body)):8.0f} MB/s (plain bytes)")
    print(f"most bytes carried between chunks: {carried[0]} (bound {links.tail_bound})")
    tracemalloc.start()
    recode(True)()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"peak memory while streaming the gzip page: {peak / 1e6:.2f} MB (page is in memory already)"
    )


if __name__ == "__main__":
    main()
