"""Parsing the units people write in config and headers: durations, byte sizes, rate limits.

Durations are written ``500ms``, ``2s``, ``1m``, ``1h`` (a bare number means seconds); sizes
``512``, ``64KiB``, ``1MiB``, ``1GiB`` (also ``KB``/``MB``/``GB``, decimal); limits ``100/1m``
(requests per window). Each parser raises ``ValueError`` with a message fit to show a user.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS: Final = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "k": 1 << 10,
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


def parse_duration(value: object) -> float:
    """Seconds from ``500ms``, ``2s``, ``1m``, ``1h``, ``1d`` or a non-negative number."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 500ms, 2s, 1m or 1h, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite number ≥ 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            if match.group(2) == "ms":  # divide, so that 9ms is exactly 0.009
                return float(match.group(1)) / 1000
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"expected a duration like 500ms, 2s, 1m or 1h, got {value!r}")


def parse_size(value: object) -> int:
    """Bytes from ``512``, ``64KiB``, ``1MiB``, ``1GiB`` (or decimal ``KB``/``MB``/``GB``)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 64KiB or 1MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError(f"expected a size like 64KiB or 1MiB, got {value!r}")


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` requests in any interval of ``window`` seconds."""

    count: int
    window: float

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.window)}"


def parse_limit(value: object) -> Limit:
    """A limit from ``100/1m``, ``1500/1h``, ``45/60s``."""
    if isinstance(value, str) and "/" in value:
        count_text, _, window_text = value.partition("/")
        try:
            count = int(count_text.strip()) if count_text.strip().isdigit() else 0
            window = parse_duration(window_text)
        except ValueError:
            pass
        else:
            if count > 0 and window > 0:
                return Limit(count, window)
    raise ValueError(f"expected a limit like 100/1m (requests per window), got {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: ``1h``, ``1m``, ``30s``, ``250ms``."""
    seconds = float(seconds)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    millis = round(seconds * 1000, 6)
    if millis.is_integer():
        return f"{int(millis)}ms"
    return f"{millis:f}".rstrip("0").rstrip(".") + "ms"
