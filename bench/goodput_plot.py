"""The picture of ``bench.goodput``: when the API admitted a bulk job's calls, through the proxy
and through the best direct strategy, against the quota. ``python -m bench.goodput_plot FILE``
draws it again from the ``picture`` a run saved in its JSON (``bench/results/goodput.json``).

At the top, the calls admitted in each stretch of the shortest window (0–2 s, 2–4 s, …) against
its limit, and the calls answered 429 (dotted): no stretch can hold more than the limit, so a
line at the limit uses the whole quota and a gap is quota left unused. In the middle, the calls
admitted so far against the floor (``bench.floor``): the closer, the sooner the jobs end. At the
bottom, when each tool's last call ended (its workers in brackets): how far apart the tools
finish, whether one starves another.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: the picture is a file

import matplotlib.pyplot as plt  # after the backend is chosen

from proxy.units import Limit, parse_limit

#: One colour per series, in the order given; the floor is drawn in black.
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def per_window(times: Sequence[float], width: float, end: float) -> list[int]:
    """How many of ``times`` fall in each stretch ``[k·width, (k+1)·width)`` up to ``end``."""
    counts = [0] * max(1, math.ceil(end / width))
    for at in times:
        index = min(len(counts) - 1, max(0, int(at // width)))
        counts[index] += 1
    return counts


@dataclass(frozen=True, slots=True)
class Series:
    """One strategy's run, in seconds from the start of the jobs."""

    label: str
    #: when the API admitted each call, and when it answered 429
    admitted: Sequence[float]
    throttled: Sequence[float]
    #: when each tool's last call ended, with its number of workers
    finishes: Sequence[tuple[float, int]]


def draw(
    path: Path,
    series: Sequence[Series],
    limits: Sequence[Limit],
    floor: Sequence[float],
    title: str,
) -> None:
    """Draw the runs of ``series`` against the quota and its ``floor`` schedule to ``path``."""
    short = min(limits, key=lambda limit: limit.window)
    ends = [max([*one.admitted, *one.throttled], default=0.0) for one in series]
    end = max([*floor, *ends]) + short.window
    edges = [k * short.window for k in range(math.ceil(end / short.window) + 1)]
    fig, (above, middle, below) = plt.subplots(
        3, 1, figsize=(9, 9), sharex=True, height_ratios=(3, 3, 2)
    )
    for place, (colour, one) in enumerate(zip(COLOURS, series, strict=False)):
        # Wider lines first: where two strategies admit alike, both stay visible.
        above.stairs(
            per_window(one.admitted, short.window, end),
            edges,
            color=colour,
            label=f"{one.label}: admitted" + ("" if one.throttled else " (no 429 answered)"),
            linewidth=3.5 - 1.5 * min(place, 1),
            alpha=0.7 if place == 0 else 1.0,
        )
        if one.throttled:
            above.stairs(
                per_window(one.throttled, short.window, end),
                edges,
                color=colour,
                linestyle=":",
                label=f"{one.label}: answered 429",
                linewidth=1.2,
            )
        ordered = sorted(one.admitted)
        middle.step(
            ordered, range(1, len(ordered) + 1), where="post", color=colour, label=one.label
        )
    above.axhline(short.count, color="black", linestyle="--", linewidth=1, label=f"limit {short}")
    above.set_ylabel(f"calls per {short.window:g} s")
    above.legend(loc="upper right", fontsize="small")
    middle.step(
        floor,
        range(1, len(floor) + 1),
        where="post",
        color="black",
        linestyle="--",
        linewidth=1,
        label="floor (the quota's own pace)",
    )
    middle.set_ylabel("calls admitted so far")
    middle.legend(loc="lower right", fontsize="small")
    tools = max(len(one.finishes) for one in series)
    for place, (colour, one) in enumerate(zip(COLOURS, series, strict=False)):
        offset = (place - (len(series) - 1) / 2) * 0.2
        below.scatter(
            [at for at, _ in one.finishes],
            [tool + offset for tool in range(len(one.finishes))],
            color=colour,
            marker="o",
            s=18,
            label=one.label,
        )
    below.set_yticks(
        range(tools), [f"tool {i} ({w}w)" for i, (_, w) in enumerate(series[0].finishes)]
    )
    below.set_ylabel("last call ended")
    below.set_xlabel("seconds from the start of the jobs")
    below.invert_yaxis()
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def saved(
    path: Path,
    series: Sequence[Series],
    limits: Sequence[Limit],
    floor: Sequence[float],
    title: str,
) -> dict[str, Any]:
    """What ``draw`` was given, as JSON can hold it (``path`` as given: relative to the checkout)."""
    return {
        "path": str(path),
        "series": [asdict(one) for one in series],
        "limits": [str(limit) for limit in limits],
        "floor": list(floor),
        "title": title,
    }


def redraw(picture: Mapping[str, Any], root: Path) -> Path:
    """Draw a ``saved`` picture again, to its path under ``root``; returns that path."""
    series = [
        Series(
            one["label"],
            one["admitted"],
            one["throttled"],
            [(float(at), int(workers)) for at, workers in one["finishes"]],
        )
        for one in picture["series"]
    ]
    path: Path = root / str(picture["path"])
    limits = [parse_limit(text) for text in picture["limits"]]
    draw(path, series, limits, picture["floor"], picture["title"])
    return path


if __name__ == "__main__":
    ROOT = Path(__file__).resolve().parent.parent
    print(redraw(json.loads(Path(sys.argv[1]).read_text())["picture"], ROOT))
