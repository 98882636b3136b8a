"""Parsing the units people write in config and headers: durations, byte sizes, rate limits.

Durations are written ``500ms``, ``2s``, ``1m``, ``1h`` (a bare number means seconds); sizes
``512``, ``64KiB``, ``1MiB``, ``1GiB`` (also ``KB``/``MB``/``GB``, decimal); limits ``100/1m``
(requests per window). Each parser raises ``ValueError`` with a message fit to show a user, and
``shown`` spells a value for such a message whatever it is (a 5,000-digit number, a megabyte of
text, a list nested a thousand deep). Digits are ASCII only, and nothing but blanks may come
before or after a value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*\Z")
_DURATION_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*\Z")
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
_LIMIT = re.compile(r"\s*([0-9]+)\s*/(.*)\Z", re.DOTALL)
#: The largest count a limit may have. Every store keeps one log entry per admission in each
#: window (in this process, or a sorted set in Redis), so the count bounds that log; the
#: Defender API's own limits are in the hundreds or thousands.
MAX_LIMIT_COUNT: Final = 100_000
#: The widest and the narrowest window of a limit. The API's quotas are per minute, hour and day;
#: a window under a millisecond would have no exact name in metrics and RateLimit headers.
MAX_LIMIT_WINDOW: Final = 86400.0
MIN_LIMIT_WINDOW: Final = 0.001
#: Long enough for any file path (PATH_MAX on Linux).
PATH_CHARACTERS: Final = 4096
# Past these a value is described rather than shown.
_SHOWN_CHARACTERS: Final = 80
_SHOWN_DIGITS: Final = 40


def shown(value: object, characters: int = _SHOWN_CHARACTERS) -> str:
    """``value`` as a problem message shows it: its repr, bounded in length and never raising.

    Text is cut short (past ``characters`` of it, or of its repr, where escapes such as
    ``\\x00`` make it up to ten times longer); numbers too long to print are given by their
    length; lists and mappings by their kind, since their repr may be huge (aliases in YAML) or
    nested past the recursion limit.
    """
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        if value == 0 or math.log10(abs(value)) < _SHOWN_DIGITS:
            return repr(value)
        return f"a number of about {int(math.log10(abs(value))) + 1} digits"
    if isinstance(value, str | bytes):
        text = repr(value[:characters])
        if len(text) > characters + 3:  # the quotes and a bytes prefix
            text = text[:characters] + "…"
        elif len(value) <= characters:
            return text
        else:
            text += "…"
        return f"{text} ({len(value)} characters)"
    if isinstance(value, list | tuple | set | frozenset | dict):
        return f"a {type(value).__name__} of {len(value)} items"
    return repr(value)[:_SHOWN_CHARACTERS]


def shown_key(key: object) -> str:
    """A mapping key as a problem's key path shows it: as written when plain, else as ``shown``.

    A colon is escaped (``\\x3a``): a problem reads ``file: key.path: message``, and a colon in
    the path would split it in the wrong place."""
    if (
        isinstance(key, str)
        and key.isprintable()
        and 0 < len(key) <= 64
        and not {" ", ":"} & set(key)
    ):
        return key
    return shown(key).replace(":", "\\x3a")


def parse_duration(value: object, at_most: float = math.inf) -> float:
    """Seconds from ``500ms``, ``2s``, ``1m``, ``1h``, ``1d`` or a non-negative number.

    A value past ``at_most`` seconds is refused with the bound in the message; without a bound,
    a number too large for a float (400 digits, say) reads as infinity, never as an error.
    """
    expected = f"expected a duration like 500ms, 2s, 1m or 1h, got {shown(value)}"
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite number ≥ 0, got {shown(value)}")
        seconds = value
    elif isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration must be a finite number ≥ 0, got {shown(value)}")
        seconds = float(value) if value < 2**1023 else math.inf
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        if match.group(2) == "ms":  # divide, so that 9ms is exactly 0.009
            seconds = float(match.group(1)) / 1000
        else:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(expected)
    if seconds > at_most:
        raise ValueError(f"must be at most {format_duration(at_most)}, got {shown(value)}")
    return seconds


def parse_size(value: object, at_most: int = 2**53) -> int:
    """Bytes from ``512``, ``64KiB``, ``1MiB``, ``1GiB`` (or decimal ``KB``/``MB``/``GB``).

    A size past ``at_most`` bytes is refused with the bound in the message.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 64KiB or 1MiB, got {shown(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {shown(value)}")
        size: float = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        # A float: 400 digits make infinity here, which the bound refuses, not an OverflowError.
        size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a size like 64KiB or 1MiB, got {shown(value)}")
    if size > at_most:
        raise ValueError(f"must be at most {format_size(at_most)}, got {shown(value)}")
    return int(size)


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` requests in any interval of ``window`` seconds."""

    count: int
    window: float

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.window)}"


def parse_limit(value: object) -> Limit:
    """A limit from ``100/1m``, ``1500/1h``, ``45/60s``, within the bounds above."""
    expected = f"expected a limit like 100/1m (requests per window), got {shown(value)}"
    match = _LIMIT.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(expected)
    digits = match.group(1).lstrip("0")
    try:
        window = parse_duration(match.group(2))
    except ValueError:
        raise ValueError(expected) from None
    if not digits or window <= 0:
        raise ValueError(expected)
    if len(digits) > len(str(MAX_LIMIT_COUNT)) or int(digits) > MAX_LIMIT_COUNT:
        raise ValueError(f"the count must be at most {MAX_LIMIT_COUNT}, got {shown(value)}")
    if window > MAX_LIMIT_WINDOW:
        limit = format_duration(MAX_LIMIT_WINDOW)
        raise ValueError(f"the window must be at most {limit}, got {shown(value)}")
    if window < MIN_LIMIT_WINDOW:
        limit = format_duration(MIN_LIMIT_WINDOW)
        raise ValueError(f"the window must be at least {limit}, got {shown(value)}")
    return Limit(int(digits), window)


def format_size(size: int) -> str:
    """The shortest exact spelling of a size in binary units: ``16GiB``, ``64KiB``, ``1000``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


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
