"""How long the shared quota must pause after the upstream says "too many requests".

``upstream_hint`` reads a 429 (or a 503 carrying ``Retry-After``) and returns a ``Hint``: the
seconds the upstream asked for, where that figure came from, and whether the call-count quota or
the hunting CPU allotment ran out. ``backoff`` covers the 429 that gives no hint at all, and
``jittered`` spreads replicas so they do not all come back in the same instant. All of them are
pure (the clock and the random source are passed in) and never raise.

Where the figure comes from, the first that applies wins::

    retry-after        Retry-After: 120 (RFC 9110 delay-seconds)
    retry-after-date   Retry-After: Fri, 31 Dec 1999 23:59:59 GMT (also RFC 850 and asctime)
    message-seconds    "... Try again in 17 seconds."
    message-duration   "... You can run queries again in 00:12:34." (hh:mm:ss[.f], d.hh:mm:ss)
    message-window     "API calls quota exceeded! maximum allowed 45 per 00:01:00"
    none               nothing usable: the caller backs off

Apart from the wait, ``stated_limit`` reads the limit a 429 states ("maximum allowed 45 per
00:01:00"), which the quota compares with the configured one (``Hint.stated``).

The message is free text that Microsoft may reword, so it is only read when the header is silent,
and the reason read from it ("cpu", "calls" or "unknown") only labels the pause. The window form
names the length of the counting window, not when a slot frees: the upstream's window started
whenever it started, so the wait is anywhere from nothing to the whole window. Waiting the whole
window is the safe upper bound, never an exact figure.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

RETRY_AFTER: Final = "retry-after"
RETRY_AFTER_DATE: Final = "retry-after-date"
MESSAGE_SECONDS: Final = "message-seconds"
MESSAGE_DURATION: Final = "message-duration"
MESSAGE_WINDOW: Final = "message-window"
NONE: Final = "none"

CALLS: Final = "calls"
CPU: Final = "cpu"
UNKNOWN: Final = "unknown"

# Only the head of a message is read: a hint sits in the first sentence or two, and a body's
# message can be long (classify caps it at 256 characters, other callers may not).
MESSAGE_SCAN: Final = 1000
JITTER: Final = 0.1

_DELAY: Final = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_NUMBER: Final = r"(\d+(?:\.\d+)?)"
# .NET TimeSpan text: [d.]hh:mm:ss[.fffffff]; the lookahead keeps "00:01:00:00" from matching.
_DURATION: Final = r"(?:(\d{1,8})\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?![\d:])"
_WAIT: Final = r"\b(?:again|retry)\s+(?:in|after)\s+"
_FLAGS: Final = re.IGNORECASE | re.ASCII
_SECONDS: Final = re.compile(_WAIT + _NUMBER + r"\s*sec(?:ond)?s?\b", _FLAGS)
_WAIT_DURATION: Final = re.compile(_WAIT + _DURATION, _FLAGS)
_WINDOW: Final = re.compile(r"\bper\s+" + _DURATION, _FLAGS)
_STATED: Final = re.compile(r"\bmaximum\s+allowed\s+(\d{1,9})\s+per\s+" + _DURATION, _FLAGS)
_CPU_WORDS: Final = re.compile(r"processing\s+resources|\bcpu\b", _FLAGS)
_CALL_WORDS: Final = re.compile(
    r"\b(?:quota|calls?|rate|ratelimit\w*|throttl\w*|too\s+many\s+requests)\b", _FLAGS
)


@dataclass(frozen=True, slots=True)
class Hint:
    """How long the upstream asked us to wait (None: it did not say), from where, and why."""

    seconds: float | None
    source: str
    reason: str
    #: the limit the answer states, (count, window seconds), when it states one
    stated: tuple[int, float] | None = None


NO_HINT: Final = Hint(None, NONE, UNKNOWN)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value at UNIX time ``now``; None if unusable."""
    return _retry_after(value, now)[0]


def parse_message(message: str) -> tuple[float | None, str, str]:
    """``(seconds, source, reason)`` read from the head of an error message."""
    text = message[:MESSAGE_SCAN]
    seconds, source = _message_seconds(text)
    if _CPU_WORDS.search(text):
        reason = CPU
    elif seconds is not None or _CALL_WORDS.search(text):
        reason = CALLS
    else:
        reason = UNKNOWN
    return seconds, source, reason


def upstream_hint(retry_after: str | None, message: str, now: float) -> Hint:
    """The pause a throttled answer asks for: ``Retry-After`` first, else the message."""
    try:
        seconds, source, reason = parse_message(message)
        stated = stated_limit(message)
        header, header_source = _retry_after(retry_after, now)
        if header is not None:
            return Hint(header, header_source, reason, stated)
        return Hint(seconds, source, reason, stated)
    except Exception:
        # Runs on every throttled response: an unreadable hint means "back off", not a failure.
        return NO_HINT


def stated_limit(message: str) -> tuple[int, float] | None:
    """``(count, window seconds)`` from "maximum allowed 45 per 00:01:00"; None if not stated."""
    match = _STATED.search(message[:MESSAGE_SCAN])
    if match is None:
        return None
    count = int(match[1])
    window = _duration(match.groups()[1:])
    if not count or not window:
        return None
    return count, window


def backoff(attempt: int, start: float = 1.0, cap: float = 60.0) -> float:
    """Seconds before retry number ``attempt`` (from 1) when the upstream gave no hint."""
    # 2.0 ** 1024 overflows; by then the delay is long past any sensible cap anyway.
    exponent = min(max(attempt, 1) - 1, 1023)
    return max(0.0, min(cap, start * 2.0**exponent))


def jittered(seconds: float, cap: float, rng: random.Random) -> float:
    """``min(cap, seconds)`` plus up to 10% extra, so replicas do not retry in lockstep."""
    base = max(0.0, min(cap, seconds))
    # Jitter only ever adds: retrying before the upstream's figure just earns another 429.
    return min(base + base * JITTER * rng.random(), cap * (1 + JITTER))


def _retry_after(value: str | None, now: float) -> tuple[float | None, str]:
    if value is None:
        return None, NONE
    value = value.strip()
    if _DELAY.fullmatch(value):
        seconds = float(value)
        return (seconds, RETRY_AFTER) if math.isfinite(seconds) else (None, NONE)
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # asctime carries no zone; RFC 9110 says GMT
        seconds = when.timestamp() - now
    except (ValueError, TypeError, IndexError, OverflowError):
        # The stdlib date parser has raised each of these on odd input across versions.
        return None, NONE
    if not math.isfinite(seconds):
        return None, NONE
    return max(0.0, seconds), RETRY_AFTER_DATE


def _message_seconds(text: str) -> tuple[float | None, str]:
    match = _SECONDS.search(text)
    if match:
        seconds = float(match[1])
        if math.isfinite(seconds):
            return seconds, MESSAGE_SECONDS
    match = _WAIT_DURATION.search(text)
    wait = _duration(match.groups()) if match else None
    if wait is not None:
        return wait, MESSAGE_DURATION
    match = _WINDOW.search(text)
    window = _duration(match.groups()) if match else None
    if window:  # a zero-length window says nothing
        return window, MESSAGE_WINDOW
    return None, NONE


def _duration(groups: tuple[str | None, ...]) -> float | None:
    days, hours, minutes, secs, fraction = groups
    # The pattern makes hours, minutes and seconds mandatory; "or 0" only satisfies the types.
    h, m, s = int(hours or 0), int(minutes or 0), int(secs or 0)
    if m > 59 or s > 59 or (days is not None and h > 23):
        return None
    total = (int(days or 0) * 24 + h) * 3600 + m * 60 + s
    return total + (float("0." + fraction) if fraction else 0.0)
