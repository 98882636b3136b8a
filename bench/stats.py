"""Statistics and figures of the benchmarks: percentiles and medians, targets met or not, a
process's RSS and CPU time, and the JSON files under bench/results."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def median(values: list[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over ``rows`` (rounds), keyed and ordered as the first row."""
    return {key: median([row[key] for row in rows]) for key in rows[0]}


def meets(value: float, op: str, bound: float) -> bool:
    """Whether a figure meets its target ``op bound`` (``==``, ``>=`` or ``<=``)."""
    if op == "==":
        return math.isclose(value, bound, abs_tol=1e-9)
    return value <= bound if op == "<=" else value >= bound


def finite(value: Any) -> Any:
    """``value`` with NaN (a figure that does not apply) as null, which JSON can carry."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def write_json(name: str, data: object) -> Path:
    """Write ``data`` to ``bench/results/<name>``, indented; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / name
    out.write_text(json.dumps(data, indent=2))
    return out
