"""Tests for proxy.units: durations, sizes and limits as people write them, and back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.units import Limit, format_duration, parse_duration, parse_limit, parse_size

# --- durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5m", 90.0),
        ("0.25s", 0.25),
        (" 2 s ", 2.0),
        ("10", 10.0),
        ("0", 0.0),
        (5, 5.0),
        (0, 0.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    """A duration with a unit, or a bare number of seconds, parses to float seconds."""
    parsed = parse_duration(text)
    assert parsed == seconds
    assert isinstance(parsed, float)


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, True, False, "", "   ", "5x", "5 sec", "-1s", "1e3s", "ms", "1h30m", None, [1]],
)
def test_parse_duration_rejects(value: object) -> None:
    """Negatives, booleans, unknown units, empty text and non-numbers are refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("512B", 512),
        ("64KiB", 64 * 1024),
        ("1MiB", 1 << 20),
        ("1GiB", 1 << 30),
        ("1.5KiB", 1536),
        ("1KB", 1000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("8k", 8192),
        ("2M", 2 << 20),
        (" 1 MiB ", 1 << 20),
        (0, 0),
        (4096, 4096),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    """A size with a binary or decimal unit, or a bare number of bytes, parses to int bytes."""
    parsed = parse_size(text)
    assert parsed == size
    assert isinstance(parsed, int)


@pytest.mark.parametrize(
    "value", [-1, True, False, "", "-1KiB", "1TiB", "1 mebibyte", "KiB", "lots", 1.5, None]
)
def test_parse_size_rejects(value: object) -> None:
    """Negatives, booleans, floats, unknown units and garbage are refused."""
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


# --- limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("100/1m", Limit(100, 60.0)),
        ("1500/1h", Limit(1500, 3600.0)),
        ("45/60s", Limit(45, 60.0)),
        (" 10 / 500ms ", Limit(10, 0.5)),
    ],
)
def test_parse_limit(text: str, limit: Limit) -> None:
    """A count and a window separated by '/' parse to a Limit."""
    assert parse_limit(text) == limit


@pytest.mark.parametrize(
    "value",
    ["0/1m", "-5/1m", "100/0s", "100/0", "abc", "100", "/1m", "100/", "x/1m", "100/1x", 100],
)
def test_parse_limit_rejects(value: object) -> None:
    """Zero or negative counts, zero windows, missing parts and non-strings are refused."""
    with pytest.raises(ValueError, match="limit"):
        parse_limit(value)


@pytest.mark.parametrize(
    ("limit", "text"),
    [
        (Limit(100, 60.0), "100/1m"),
        (Limit(1500, 3600.0), "1500/1h"),
        (Limit(5, 86400.0), "5/1d"),
        (Limit(45, 90.0), "45/90s"),
        (Limit(10, 0.5), "10/500ms"),
    ],
)
def test_limit_str(limit: Limit, text: str) -> None:
    """A Limit prints in the same shortest form a config would use."""
    assert str(limit) == text


# --- formatting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (86400.0, "1d"),
        (7200.0, "2h"),
        (120.0, "2m"),
        (90.0, "90s"),
        (1.0, "1s"),
        (0.25, "250ms"),
        (0.0, "0ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    """A duration is spelled in the largest unit that holds it exactly."""
    assert format_duration(seconds) == text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trips_whole_seconds(seconds: int) -> None:
    """Any whole number of seconds reads back from its spelling unchanged."""
    assert parse_duration(format_duration(float(seconds))) == seconds


@settings(max_examples=100, deadline=None)
@given(count=st.integers(min_value=1, max_value=100_000), seconds=st.integers(1, 86_400))
def test_limit_round_trips_through_str(count: int, seconds: int) -> None:
    """A limit with a whole-second window parses back from its own spelling."""
    limit = Limit(count, float(seconds))
    assert parse_limit(str(limit)) == limit


@given(st.integers(min_value=0, max_value=10**8))
def test_whole_milliseconds_round_trip(millis: int) -> None:
    """Every whole number of milliseconds survives format_duration then parse_duration exactly."""
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5])
def test_non_finite_or_negative_durations_are_refused(value: float) -> None:
    """NaN, infinity and negative numbers are not durations."""
    with pytest.raises(ValueError):
        parse_duration(value)


def test_limit_count_must_be_plain_digits() -> None:
    """A count with an underscore or sign is not accepted as a limit."""
    for text in ("1_000/1m", "+5/1m"):
        with pytest.raises(ValueError):
            parse_limit(text)
