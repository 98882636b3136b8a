"""The long fuzz run: the properties of tests/unit/test_fuzz.py and the differential framing
property of tests/functional/test_framing_diff.py, with many more examples.

``make fuzz`` (``python -m fuzz.run``) runs each property in its own pytest process, two at a time
by default, with ``FUZZ_EXAMPLES`` set to its share below: the classifier and the guard get
100,000 cases each, the framing property 50,000 (in two processes of 25,000, one per core), the
router and the label budget fewer (they are cheap and narrow). It prints
how many examples hypothesis ran for each property (its own statistics), how long each took, and
the totals; it exits non-zero if any property failed. ``--scale 0.01`` makes a quick trial run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILE = "tests/unit/test_fuzz.py"
FRAMING = "tests/functional/test_framing_diff.py::test_upstream_parses_exactly_what_the_proxy_read"

#: (area, pytest node, examples): what ``make fuzz`` runs. The framing property runs in two
#: processes (each draws its own random cases), so both cores send conversations through a proxy.
SHARES: tuple[tuple[str, str, int], ...] = (
    ("framing", FRAMING, 25_000),
    ("framing", FRAMING, 25_000),
    ("classifier", f"{FILE}::test_classify_never_raises_and_bounds_every_field", 80_000),
    ("classifier", f"{FILE}::test_classify_reads_an_encoded_envelope_as_its_plain_bytes", 20_000),
    ("guard", f"{FILE}::test_guard_returns_a_safe_path_or_refuses", 80_000),
    ("guard", f"{FILE}::test_guard_refuses_every_other_origin", 20_000),
    ("router", f"{FILE}::test_router_never_raises_and_names_a_known_route", 20_000),
    ("router", f"{FILE}::test_router_reads_percent_encoded_letters_as_the_letters", 10_000),
    ("labels", f"{FILE}::test_code_labels_stay_within_the_budget", 10_000),
)
_PASSING = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")


@dataclass
class Result:
    """One property's run."""

    area: str
    name: str
    asked: int
    passing: int
    seconds: float
    ok: bool
    output: str


async def _run(area: str, node: str, examples: int, gate: asyncio.Semaphore) -> Result:
    name = node.rpartition("::")[2]
    async with gate:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=0",
            "--hypothesis-show-statistics", node,
            cwd=ROOT, env={**os.environ, "FUZZ_EXAMPLES": str(examples)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        seconds = time.perf_counter() - started
    text = out.decode(errors="replace")
    # Hypothesis's statistics: "N passing, M failing, and K invalid test cases" per phase.
    passing = sum(int(found[0]) for found in _PASSING.findall(text))
    result = Result(area, name, examples, passing, seconds, proc.returncode == 0, text)
    mark = "ok" if result.ok else "FAILED"
    rate = passing / seconds if seconds else 0.0
    print(
        f"{mark:6} {passing:>9,} of {examples:,} cases {seconds:>7.1f} s {rate:>7.0f}/s  {name}",
        flush=True,
    )
    return result


async def _main(scale: float, jobs: int) -> int:
    gate = asyncio.Semaphore(jobs)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(_run(area, name, max(1, round(n * scale)), gate) for area, name, n in SHARES)
    )
    wall = time.perf_counter() - started
    for result in results:
        if not result.ok:
            print(f"\n--- {result.name} ---\n{result.output}")
    total = sum(result.passing for result in results)
    by_area: dict[str, int] = {}
    for result in results:
        by_area[result.area] = by_area.get(result.area, 0) + result.passing
    areas = ", ".join(f"{area} {count:,}" for area, count in by_area.items())
    summed = sum(result.seconds for result in results)
    print(f"total  {total:>9,} cases in {wall:.1f} s ({summed:.1f} s of runs summed); {areas}")
    return 0 if all(result.ok for result in results) else 1


def main(argv: list[str] | None = None) -> int:
    """Run every property with its share of examples; 0 when all passed."""
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every share")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    return asyncio.run(_main(args.scale, max(1, args.jobs)))


if __name__ == "__main__":
    sys.exit(main())
