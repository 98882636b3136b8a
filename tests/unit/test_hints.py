"""Tests for proxy.hints: Retry-After, message hints, back-off and jitter, and never raising."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.hints import (
    Hint,
    backoff,
    jittered,
    parse_message,
    parse_retry_after,
    stated_limit,
    upstream_hint,
)

# 1999-12-31 23:59:59 UTC, the instant every date form below names.
MOMENT = datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
DATE_FORMS = [
    "Fri, 31 Dec 1999 23:59:59 GMT",  # IMF-fixdate
    "Friday, 31-Dec-99 23:59:59 GMT",  # obsolete RFC 850
    "Fri Dec 31 23:59:59 1999",  # asctime, no zone: GMT
]
CPU_MESSAGE = (
    "You have exceeded processing resources allocated to this tenant. "
    "You can run queries again in 00:12:34."
)
WINDOW_MESSAGE = "API calls quota exceeded! maximum allowed 45 per 00:01:00"
SOURCES = {
    "retry-after",
    "retry-after-date",
    "message-seconds",
    "message-duration",
    "message-window",
    "none",
}
REASONS = {"calls", "cpu", "unknown"}


def test_delay_seconds() -> None:
    """Retry-After delay-seconds is read as is, surrounding spaces ignored."""
    assert parse_retry_after("120", MOMENT) == 120.0
    assert parse_retry_after(" 7 ", MOMENT) == 7.0
    assert parse_retry_after("0", MOMENT) == 0.0


def test_absurdly_large_delay_is_returned_as_is() -> None:
    """A delay longer than a day is not capped here: capping is the caller's job."""
    assert parse_retry_after("31536000", MOMENT) == 31536000.0


def test_date_in_the_future() -> None:
    """An HTTP-date ahead of ``now`` waits until that instant."""
    assert parse_retry_after(DATE_FORMS[0], MOMENT - 90) == pytest.approx(90.0)


def test_date_in_the_past_is_zero() -> None:
    """An HTTP-date already gone means retry now, not a negative wait or None."""
    assert parse_retry_after(DATE_FORMS[0], MOMENT + 3600) == 0.0


@pytest.mark.parametrize("value", DATE_FORMS)
def test_all_three_date_forms(value: str) -> None:
    """IMF-fixdate, RFC 850 and asctime all name the same instant, taken as GMT."""
    assert parse_retry_after(value, MOMENT - 30) == pytest.approx(30.0)


def test_asctime_is_gmt_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """asctime carries no zone; it is read as GMT, not as the host's local time."""
    monkeypatch.setenv("TZ", "EST+5")  # a POSIX rule: needs no tz database
    time.tzset()
    try:
        assert parse_retry_after(DATE_FORMS[2], MOMENT - 30) == pytest.approx(30.0)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_date_with_a_numeric_zone() -> None:
    """A date with a zone offset is converted to UTC before subtracting."""
    when = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("Tue, 01 Jan 2030 14:00:00 +0200", when - 5) == pytest.approx(5.0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "soon",
        "-5",
        "+5",
        "NaN",
        "inf",
        "1e3",
        "12abc",
        "1_000",
        "9" * 400,  # overflows to infinity
        "Fri, 31 Dec 99999 23:59:59 GMT",
        "Fri, 32 Foo 1999 25:61:61 GMT",
    ],
)
def test_garbage_retry_after_is_none(value: str | None) -> None:
    """Garbage, signed, non-finite and impossible values give None, never an exception."""
    assert parse_retry_after(value, MOMENT) is None


def test_message_seconds() -> None:
    """'Try again in 17 seconds' is a 17-second wait on the call-count quota."""
    assert parse_message("Rate limit is exceeded. Try again in 17 seconds.") == (
        17,
        "message-seconds",
        "calls",
    )
    assert parse_message("Try again in 17 seconds") == (17, "message-seconds", "calls")


def test_message_seconds_singular_any_case() -> None:
    """'TRY AGAIN IN 1 SECOND' matches too: case and plural do not matter."""
    assert parse_message("TRY AGAIN IN 1 SECOND") == (1, "message-seconds", "calls")


def test_cpu_message() -> None:
    """The hunting CPU message gives its hh:mm:ss duration and the reason cpu."""
    assert parse_message(CPU_MESSAGE) == (754, "message-duration", "cpu")


def test_duration_with_fraction() -> None:
    """A duration with fractional seconds keeps the fraction."""
    message = CPU_MESSAGE.replace("00:12:34", "00:00:30.5")
    assert parse_message(message) == (30.5, "message-duration", "cpu")


def test_duration_with_days() -> None:
    """The .NET d.hh:mm:ss form counts the days."""
    message = CPU_MESSAGE.replace("00:12:34", "1.02:03:04")
    assert parse_message(message) == (93784, "message-duration", "cpu")


def test_impossible_duration_is_no_hint() -> None:
    """Minutes or seconds past 59 are not a duration."""
    assert parse_message("You can run queries again in 00:75:00.")[:2] == (None, "none")
    assert parse_message("You can run queries again in 1.25:00:00.")[:2] == (None, "none")


def test_window_message() -> None:
    """'45 per 00:01:00' hints only at the window: 60 seconds, call-count quota."""
    assert parse_message(WINDOW_MESSAGE) == (60, "message-window", "calls")


def test_zero_window_is_no_hint() -> None:
    """A window of 00:00:00 says nothing about how long to wait."""
    assert parse_message("quota exceeded: 45 per 00:00:00") == (None, "none", "calls")


def test_explicit_wait_beats_window() -> None:
    """A message naming both a wait and a window gives the wait."""
    message = WINDOW_MESSAGE + ". Try again in 12 seconds."
    assert parse_message(message) == (12, "message-seconds", "calls")


@pytest.mark.parametrize(
    "message",
    ["API calls quota exceeded!", "Rate limit hit", "Too many requests", "request was throttled"],
)
def test_quota_words_without_figure(message: str) -> None:
    """Quota, calls or rate without a figure: no seconds, but the reason is calls."""
    assert parse_message(message) == (None, "none", "calls")


@pytest.mark.parametrize("message", ["", "Internal server error", "accurate calibration"])
def test_other_text_is_unknown(message: str) -> None:
    """Text with neither a figure nor quota words gives no hint and reason unknown."""
    assert parse_message(message) == (None, "none", "unknown")


def test_only_the_first_thousand_characters_are_read() -> None:
    """A hint past the first 1,000 characters is ignored; one just inside is found."""
    hint = " Try again in 17 seconds"
    assert parse_message("x" * (1000 - len(hint)) + hint + " tail" * 500)[0] == 17
    # Pushed 10 characters further, the cut leaves "Try again in 1" and no unit.
    assert parse_message("x" * (1010 - len(hint)) + hint) == (None, "none", "unknown")


def test_header_wins_over_message() -> None:
    """Retry-After delay-seconds wins over a figure in the message."""
    assert upstream_hint("5", "Try again in 17 seconds", MOMENT) == Hint(5, "retry-after", "calls")


def test_header_date_wins_over_message() -> None:
    """A Retry-After date wins too, and says it came from the date form."""
    hint = upstream_hint(DATE_FORMS[0], WINDOW_MESSAGE, MOMENT - 42)
    assert (hint.source, hint.reason) == ("retry-after-date", "calls")
    assert hint.seconds == pytest.approx(42.0)


def test_cpu_message_with_retry_after() -> None:
    """With Retry-After present, seconds come from it but the reason is still cpu."""
    assert upstream_hint("30", CPU_MESSAGE, MOMENT) == Hint(30, "retry-after", "cpu")


def test_message_when_header_missing_or_garbage() -> None:
    """Without a usable Retry-After the message's figure is used."""
    assert upstream_hint(None, CPU_MESSAGE, MOMENT) == Hint(754, "message-duration", "cpu")
    assert upstream_hint("soon", WINDOW_MESSAGE, MOMENT) == Hint(
        60, "message-window", "calls", (45, 60.0)
    )


def test_no_hint_at_all() -> None:
    """No header and an empty message: no seconds, source none, reason unknown."""
    assert upstream_hint(None, "", MOMENT) == Hint(None, "none", "unknown")


def test_backoff_sequence() -> None:
    """Back-off doubles from 1 second and stays at the 60-second cap."""
    assert [backoff(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_edges() -> None:
    """Attempts below 1 start at ``start``; huge attempts stay at ``cap`` without overflowing."""
    assert backoff(0) == 1.0
    assert backoff(-3) == 1.0
    assert backoff(10**9) == 60.0
    assert [backoff(n, start=0.5, cap=3.0) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]


def test_jittered_bounds_over_many_seeds() -> None:
    """Jitter adds 0 to 10% of min(cap, seconds) and never goes below the asked wait."""
    under: list[float] = []
    for seed in range(2000):
        rng = random.Random(seed)
        value = jittered(20.0, 60.0, rng)
        assert 20.0 <= value <= 22.0
        under.append(value)
        over = jittered(500.0, 60.0, rng)
        assert 60.0 <= over <= 60.0 * 1.1
        assert jittered(60.0, 60.0, rng) <= 60.0 * 1.1
    # The point is to spread replicas: the values must actually differ and fill the range.
    assert len(set(under)) > 1900
    assert min(under) < 20.1
    assert max(under) > 21.9


def test_jittered_zero_and_negative() -> None:
    """A zero or negative wait stays zero: there is nothing to spread."""
    rng = random.Random(1)
    assert jittered(0.0, 60.0, rng) == 0.0
    assert jittered(-5.0, 60.0, rng) == 0.0


_RETRY_AFTER = st.one_of(
    st.none(),
    st.text(),
    st.from_regex(r"\A\s*[0-9]{1,400}(\.[0-9]{1,20})?\s*\Z"),
    st.datetimes(timezones=st.just(UTC)).map(format_datetime),
    st.datetimes().map(lambda d: d.strftime("%a %b %d %H:%M:%S %Y")),
)
_MESSAGE = st.one_of(
    st.text(),
    st.from_regex(r"again in [0-9]{1,12}(\.[0-9]{1,9})? seconds?"),
    st.from_regex(r"(again in|per) ([0-9]{1,8}\.)?[0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"),
)


@given(_RETRY_AFTER, _MESSAGE, st.floats(allow_nan=False, allow_infinity=False))
def test_upstream_hint_never_raises(retry_after: str | None, message: str, now: float) -> None:
    """Any header and message give a Hint whose seconds are None or finite and >= 0."""
    hint = upstream_hint(retry_after, message, now)
    assert hint.seconds is None or (math.isfinite(hint.seconds) and hint.seconds >= 0)
    assert hint.source in SOURCES
    assert hint.reason in REASONS
    assert (hint.seconds is None) == (hint.source == "none")


@given(_MESSAGE)
def test_parse_message_never_raises(message: str) -> None:
    """Any text gives seconds None or finite >= 0, and a known source and reason."""
    seconds, source, reason = parse_message(message)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
    assert source in SOURCES
    assert reason in REASONS


@pytest.mark.parametrize(
    ("message", "stated"),
    [
        ("API calls quota exceeded! maximum allowed 45 per 00:01:00", (45, 60.0)),
        ("Maximum allowed 1500 per 01:00:00. Try again in 3 seconds.", (1500, 3600.0)),
        ("maximum allowed 10 per 1.00:00:00", (10, 86400.0)),
        ("maximum allowed 0 per 00:01:00", None),
        ("maximum allowed 45 per 00:00:00", None),
        ("maximum allowed 45 per 00:99:00", None),
        ("Too many requests. Try again in 17 seconds.", None),
    ],
)
def test_stated_limit(message: str, stated: tuple[int, float] | None) -> None:
    """The count and window a 429 states are read; a zero or malformed figure is none."""
    assert stated_limit(message) == stated


def test_the_hint_carries_the_stated_limit_whatever_the_wait_came_from() -> None:
    """Retry-After decides the wait; the message's stated limit still comes along."""
    hint = upstream_hint("7", "maximum allowed 45 per 00:01:00", MOMENT)
    assert (hint.seconds, hint.stated) == (7.0, (45, 60.0))


@given(_MESSAGE)
def test_stated_limit_never_raises(message: str) -> None:
    """Any message text gives a stated limit or none, never an error."""
    stated = stated_limit(message)
    assert stated is None or (stated[0] > 0 and stated[1] > 0)
