"""Tests for the bounds of every configured number and for hostile config files.

Every number has a documented ceiling (and a floor where one is needed); values past it, values
too large for a float, NaN, infinity, booleans and text that merely ends in a newline are each one
problem with the file and key path — never an exception from deep inside the proxy. The property
test at the end feeds ``check-config`` whole documents built from the schema's own keys.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import ssl
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import trustme
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy import cli
from proxy.config import _SCHEMA, ConfigError, load_settings, parse_settings
from proxy.units import parse_limit, shown

HUGE = "9" * 400


def problems_of(data: object) -> list[str]:
    """The problems ``parse_settings`` reports for ``data`` (fails if it accepts it)."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, "contoso.yaml", {})
    return caught.value.problems


def nested(path: str, value: object) -> dict[str, object]:
    """``{"a": {"b": value}}`` for the dotted ``path`` ``a.b``."""
    data: object = value
    for key in reversed(path.split(".")):
        data = {key: data}
    assert isinstance(data, dict)
    return data


def accepted(path: str, value: object) -> object:
    """The parsed value of the key at dotted ``path`` given ``value`` (fails if refused)."""
    parsed: object = parse_settings(nested(path, value), "contoso.yaml", {})
    for key in path.split("."):
        parsed = getattr(parsed, key)
    return parsed


# The ceiling of every bounded key: (key path, the largest value accepted, the parsed value, the
# smallest value refused, the problem it gives).
CEILINGS = [
    ("timeouts.connect", "5m", 300.0, "301s", "must be at most 5m, got '301s'"),
    ("timeouts.read", "1h", 3600.0, "3601s", "must be at most 1h, got '3601s'"),
    ("timeouts.caller", "1h", 3600.0, "61m", "must be at most 1h, got '61m'"),
    ("timeouts.pool", "10m", 600.0, "601s", "must be at most 10m, got '601s'"),
    ("timeouts.caller_keepalive", "1h", 3600.0, 3601, "must be at most 1h, got 3601"),
    ("shutdown_grace", "1h", 3600.0, "2h", "must be at most 1h, got '2h'"),
    ("limits.max_body", "16GiB", 16 << 30, (16 << 30) + 1, f"must be at most 16GiB, got {(16 << 30) + 1}"),
    ("limits.error_body_cap", "64MiB", 64 << 20, "65MiB", "must be at most 64MiB, got '65MiB'"),
    ("limits.max_header_size", "1MiB", 1 << 20, "1025KiB", "must be at most 1MiB, got '1025KiB'"),
    ("limits.caller_connections", 1 << 20, 1 << 20, (1 << 20) + 1, f"expected a whole number from 1 to {1 << 20}, got {(1 << 20) + 1}"),
    ("limits.recent_errors", 10_000, 10_000, 10_001, "expected a whole number from 0 to 10000, got 10001"),
    ("pool.max_connections", 10_000, 10_000, 10_001, "expected a whole number from 1 to 10000, got 10001"),
    ("pool.keepalive", "1h", 3600.0, "1d", "must be at most 1h, got '1d'"),
    ("throttle.max_wait", "1h", 3600.0, "3600.5s", "must be at most 1h, got '3600.5s'"),
    ("throttle.store_timeout", "5s", 5.0, "6s", "must be at most 5s, got '6s'"),
    ("throttle.max_pause", "1d", 86400.0, "25h", "must be at most 1d, got '25h'"),
    ("throttle.fallback.expected_replicas", 1000, 1000, 1001, "expected a whole number from 1 to 1000, got 1001"),
    ("throttle.fallback.cooldown", "1h", 3600.0, "3601s", "must be at most 1h, got '3601s'"),
]  # fmt: skip

NUMERIC_KEYS = [ceiling[0] for ceiling in CEILINGS] + ["throttle.margin", "throttle.bulk_reserve"]


@pytest.mark.parametrize(
    ("path", "largest", "parsed", "refused", "problem"), CEILINGS, ids=[c[0] for c in CEILINGS]
)
def test_each_number_has_a_ceiling_stated_in_its_problem(
    path: str, largest: object, parsed: object, refused: object, problem: str
) -> None:
    """The ceiling itself is accepted; one step past it is one problem that states the bound."""
    assert accepted(path, largest) == parsed
    assert problems_of(nested(path, refused)) == [f"contoso.yaml: {path}: {problem}"]


FLOORS = [
    ("limits.max_header_size", "1023", "must be at least 1KiB, got '1023'"),
    ("limits.max_body", 0, "must be at least 1, got 0"),
    ("limits.caller_connections", 0, "expected a whole number from 1 to 1048576, got 0"),
    ("limits.recent_errors", -1, "expected a whole number from 0 to 10000, got -1"),
    ("timeouts.caller", "0s", "must be greater than 0, got '0s'"),
    ("timeouts.pool", 0, "must be greater than 0, got 0"),
    ("timeouts.caller_keepalive", "0ms", "must be greater than 0, got '0ms'"),
]


@pytest.mark.parametrize(("path", "refused", "problem"), FLOORS, ids=[f[0] for f in FLOORS])
def test_numbers_below_their_floor_are_problems(path: str, refused: object, problem: str) -> None:
    """A value under a key's floor is one problem that states the floor."""
    assert problems_of(nested(path, refused)) == [f"contoso.yaml: {path}: {problem}"]


HOSTILE_NUMBERS: list[object] = [
    HUGE,
    f"{HUGE}s",
    f"{HUGE}KiB",
    f"{HUGE}.5",
    int(HUGE),
    -int(HUGE),
    2**64,
    float("nan"),
    float("inf"),
    float("-inf"),
    "inf",
    "nan",
    "1e400",
    -1,
    True,
    "5s\n5s",
    "１２",
    [[[1]]],
]


@pytest.mark.parametrize("value", HOSTILE_NUMBERS, ids=lambda value: shown(value)[:30])
@pytest.mark.parametrize("path", NUMERIC_KEYS)
def test_hostile_numbers_are_one_problem_each(path: str, value: object) -> None:
    """Huge, infinite, NaN, negative, boolean or non-ASCII numbers are one problem under the key."""
    (problem,) = problems_of(nested(path, value))
    assert problem.startswith(f"contoso.yaml: {path}: ")
    assert len(problem) < 300


def test_a_400_digit_size_is_refused_not_an_overflow() -> None:
    """A size of 400 digits with a unit is refused with the bound (it once raised OverflowError)."""
    (problem,) = problems_of({"limits": {"max_body": f"{HUGE}KiB"}})
    assert problem.startswith("contoso.yaml: limits.max_body: must be at most 16GiB, got '999")
    assert "(403 characters)" in problem


def test_a_400_digit_max_wait_is_refused() -> None:
    """throttle.max_wait of 400 nines is refused (it once made every request a 500)."""
    (problem,) = problems_of({"throttle": {"max_wait": f"{HUGE}s"}})
    assert problem.startswith("contoso.yaml: throttle.max_wait: must be at most 1h, got '999")


@pytest.mark.parametrize(
    ("limit", "problem"),
    [
        (f"1/{HUGE}s", "the window must be at most 1d, got '1/999"),
        ("1/86401s", "the window must be at most 1d, got '1/86401s'"),
        ("1/0.5ms", "the window must be at least 1ms, got '1/0.5ms'"),
        ("100001/1h", "the count must be at most 100000, got '100001/1h'"),
        (f"{HUGE}/1m", "the count must be at most 100000, got '999"),
        ("1/1m\n/1m", "expected a limit like 100/1m"),
    ],
)
def test_route_limits_are_bounded(limit: str, problem: str) -> None:
    """A route limit's count and window are bounded (1/9…9s once passed check-config)."""
    data = {"throttle": {"routes": [{"name": "machines.get", "limits": [limit]}]}}
    (found,) = problems_of(data)
    assert found.startswith(f"contoso.yaml: throttle.routes[0].limits[0]: {problem}")


def test_two_windows_with_one_name_are_one_window() -> None:
    """Windows that differ below a millisecond share a name, so the second is a problem."""
    data = {
        "throttle": {
            "routes": [{"name": "machines.get", "limits": ["1/1.0000000001s", "2/1.0000000002s"]}]
        }
    }
    assert problems_of(data) == [
        "contoso.yaml: throttle.routes[0].limits[1]: limits[0] already limits the 1000ms window"
    ]


@pytest.mark.parametrize(
    ("key", "most"),
    [("match", 100), ("limits", 16)],
)
def test_lists_in_a_route_are_bounded(key: str, most: int) -> None:
    """A route's match and limits lists have a ceiling, stated in the problem."""
    items = [f"GET /api/x{i}" for i in range(most + 1)] if key == "match" else ["1/1m"] * (most + 1)
    data = {"throttle": {"routes": [{"name": "machines.get", key: items}]}}
    assert problems_of(data) == [
        f"contoso.yaml: throttle.routes[0].{key}: at most {most} {'patterns' if key == 'match' else 'limits'}, got {most + 1}"
    ]


def test_the_number_of_routes_is_bounded() -> None:
    """throttle.routes holds at most 1000 entries."""
    routes = [{"name": f"r{i}", "match": [f"GET /r{i}"], "limits": ["1/1m"]} for i in range(1001)]
    assert problems_of({"throttle": {"routes": routes}}) == [
        "contoso.yaml: throttle.routes: at most 1000 routes, got 1001"
    ]


def test_allow_from_is_bounded() -> None:
    """allow_from holds at most 1000 networks."""
    assert problems_of({"allow_from": ["10.0.0.0/8"] * 1001}) == [
        "contoso.yaml: allow_from: at most 1000 networks, got 1001"
    ]


# Trailing newlines and other text that only looks right


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("throttle.namespace", "prod\n"),
        ("listen", "127.0.0.1:8080\n"),
        ("admin_listen", "0.0.0.0:9464\n"),
        ("listen", "127.0.0.1:８０８０"),
        ("throttle.store", "redis://cache:6379/\n0"),
        ("upstream", "https://api.security.micro\nsoft.com"),
    ],
    ids=repr,
)
def test_a_newline_or_non_ascii_digit_is_a_problem(path: str, value: str) -> None:
    """Names, addresses and URLs with a newline (even a trailing one) or non-ASCII digits are refused."""
    (problem,) = problems_of(nested(path, value))
    assert problem.startswith(f"contoso.yaml: {path}: ")


def test_a_route_name_with_a_trailing_newline_is_a_problem() -> None:
    """throttle.routes[].name ending in a newline is refused ($ once let it through)."""
    data = {"throttle": {"routes": [{"name": "machines.get\n", "limits": ["1/1m"]}]}}
    assert problems_of(data) == [
        "contoso.yaml: throttle.routes[0].name: expected 1-64 characters of A-Z a-z 0-9 _ . -, "
        "got 'machines.get\\n'"
    ]


@pytest.mark.parametrize("pattern", ["GET /api/x\n", "GET /api/{id}\n/x", "GET /api/\tx"])
def test_a_route_pattern_with_a_control_character_is_a_problem(pattern: str) -> None:
    """A match pattern holding a newline or a tab is refused, not silently trimmed."""
    data = {"throttle": {"routes": [{"name": "new.route", "match": [pattern], "limits": ["1/1m"]}]}}
    (problem,) = problems_of(data)
    assert problem.startswith("contoso.yaml: throttle.routes[0].match[0]: expected at most 1000")


@pytest.mark.parametrize("host", ["a..b", "a" * 64 + ".example", ".example", "x." * 127 + "x"])
def test_host_names_the_resolver_would_refuse_are_problems(host: str) -> None:
    """Empty labels, labels over 63 characters and names over 253 are refused for every URL."""
    for path, value in (
        ("upstream", f"https://{host}"),
        ("listen", f"{host}:8080"),
        ("throttle.store", f"redis://{host}:6379/0"),
    ):
        (problem,) = problems_of(nested(path, value))
        assert problem.startswith(f"contoso.yaml: {path}: "), problem


# Redis URLs


@pytest.mark.parametrize(
    ("store", "database"),
    [
        ("redis://cache:6379/2147483646", 2147483646),
        ("redis://cache:6379/0?db=15", 15),
        ("unix:///run/redis.sock?db=2147483646", 2147483646),
    ],
)
def test_the_highest_redis_database_is_accepted(store: str, database: int) -> None:
    """Database indexes up to 2**31 - 2 (the most any server can have) are accepted."""
    assert accepted("throttle.store", store) == store


@pytest.mark.parametrize(
    "store",
    [
        "redis://cache:6379/99999999999999999999",
        "redis://cache:6379/2147483647",
        "rediss://cache:6380/0?db=2147483647",
        "unix:///run/redis.sock?db=99999999999999999999",
    ],
)
def test_a_redis_database_past_the_bound_is_a_problem(store: str) -> None:
    """A database index no Redis server can have is refused (it once meant fallback for ever)."""
    (problem,) = problems_of({"throttle": {"store": store}})
    assert problem.startswith("contoso.yaml: throttle.store: ")
    assert "the database must be at most 2147483646, got " in problem


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        ("redis://cache/0?socket_timeout=nan", "unknown URL option 'socket_timeout'"),
        ("unix:///run/redis.sock?db=x", "the URL option db: the database must be a number"),
        ("unix:///run/redis.sock?db=1&db=2", "the URL option db is given 2 times"),
        ("rediss://cache/0?ssl_cert_reqs=maybe", "the URL option ssl_cert_reqs: expected none"),
        (
            "redis://cache/0?ssl_cert_reqs=none",
            "the URL option ssl_cert_reqs needs a rediss:// URL",
        ),
        ("unix:///run/redis.sock?ssl_ca_certs=/x", "the URL option ssl_ca_certs needs a rediss://"),
        ("redis+cluster://node:7000?db=3", "Redis Cluster has only database 0"),
        ("redis://cache/٣", "must be printable ASCII without spaces or control characters"),
    ],
)
def test_redis_url_options_are_checked(store: str, problem: str) -> None:
    """Query options redis-py would choke on at the first connect are problems at check time."""
    (found,) = problems_of({"throttle": {"store": store}})
    assert found.startswith(f"contoso.yaml: throttle.store: {problem}")


# Files the config names


@pytest.fixture
def ca_pem(tmp_path: Path) -> Path:
    """A PEM file with one CA certificate."""
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.mark.parametrize(
    "content",
    [b"", b"not a certificate\n", b"-----BEGIN CERTIFICATE-----\n", b"\x30\x82\x01\x0a\x02"],
    ids=["empty", "text", "truncated-pem", "der"],
)
def test_a_ca_bundle_without_a_pem_certificate_is_a_problem(tmp_path: Path, content: bytes) -> None:
    """tls.ca_bundle is loaded as certificates by check-config; no certificate is one problem."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(content)
    (problem,) = problems_of({"tls": {"ca_bundle": str(bundle)}})
    assert problem.startswith(
        f"contoso.yaml: tls.ca_bundle: {str(bundle)!r} holds no PEM certificate"
    )
    assert "-----BEGIN CERTIFICATE-----" in problem


def test_a_private_key_is_not_a_ca_bundle(tmp_path: Path) -> None:
    """A PEM private key given as tls.ca_bundle is refused: it holds no certificate."""
    key = tmp_path / "key.pem"
    trustme.CA().private_key_pem.write_to_path(str(key))
    (problem,) = problems_of({"tls": {"ca_bundle": str(key)}})
    assert "holds no PEM certificate" in problem


def test_a_pem_ca_bundle_is_accepted_and_loads(ca_pem: Path) -> None:
    """A real PEM CA certificate is accepted, and the TLS context the proxy builds loads it."""
    assert accepted("tls.ca_bundle", str(ca_pem)) == str(ca_pem)
    ssl.create_default_context(cafile=str(ca_pem))


def test_store_url_certificate_files_are_loaded(tmp_path: Path, ca_pem: Path) -> None:
    """ssl_ca_certs in a store URL is loaded like tls.ca_bundle."""
    bad = tmp_path / "bad.pem"
    bad.write_text("nope\n", encoding="utf-8")
    assert accepted("throttle.store", f"rediss://cache:6380/0?ssl_ca_certs={ca_pem}")
    (problem,) = problems_of({"throttle": {"store": f"rediss://cache:6380/0?ssl_ca_certs={bad}"}})
    assert problem.startswith("contoso.yaml: throttle.store: the URL option ssl_ca_certs: ")
    assert "holds no PEM certificate" in problem


# Hostile YAML files


def write(tmp_path: Path, text: str) -> str:
    """``text`` as the config file ``contoso.yaml`` under ``tmp_path``; its path."""
    path = tmp_path / "contoso.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("listen: 2024-02-30\n", "invalid YAML: a value cannot be read: 'day is out of range for month'"),
        ("listen: !!float ''\n", "invalid YAML: a value cannot be read: 'string index out of range'"),
        ("listen: !!timestamp ''\n", "invalid YAML: a value cannot be read: "),
        ("listen: " + "[" * 5000 + "]" * 5000 + "\n", "invalid YAML: nested too deeply"),
        ("listen: " + "9" * 5000 + "\n", "invalid YAML: a value cannot be read: 'Exceeds the limit"),
        ("listen: 0x" + "f" * 5000 + "\n", "listen: expected host:port, got a number of about 6021 digits"),
        ("0x" + "f" * 900 + ": 1\n", "a number of about 1084 digits: unknown key"),
        ('"a\\nb": 1\n', "'a\\nb': unknown key"),
        ("a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nlisten: [*c, *c, *c, *c, *c, *c, *c, *c]\n",
         "listen: expected host:port, got a list of 8 items"),
        ("".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}" if i else "lol"] * 9) + "]\n"
                 for i in range(10)) + "listen: *a9\n",
         "invalid YAML at line 6, column 10: its aliases stand for more than 100,000 values"),
        ("m: &m {" + ", ".join(f"k{i}: 1" for i in range(500)) + "}\n"
         "throttle: {routes: [" + ", ".join(["*m"] * 1000) + "]}\n",
         "invalid YAML at line 2, column 417: its aliases stand for more than 100,000 values"),
        ("a: &a {x: 1, y: 2}\n" + "".join(
            f"b{i}: &b{i} {{<<: [" + ", ".join([f"*b{i - 1}" if i else "*a"] * 9) + "]}\n"
            for i in range(8)) + "listen: *b7\n",
         "its aliases stand for more than 100,000 values"),
    ],
    ids=["no-such-date", "empty-float", "empty-timestamp", "deep", "5000-digits", "huge-hex", "huge-key", "newline-key", "aliases", "billion-laughs", "aliased-unknown-keys", "merge-keys"],
)  # fmt: skip
def test_hostile_yaml_is_a_problem_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    """What the YAML loader or a message would choke on is a problem naming the file, not a crash."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert any(line.startswith(f"{path}: ") and problem in line for line in caught.value.problems)
    assert all(len(line) < len(path) + 300 for line in caught.value.problems)


def test_aliases_a_route_table_shares_are_read(tmp_path: Path) -> None:
    """1,000 routes (the bound) sharing one anchored list of limits is a valid file."""
    routes = "".join(
        f"    - {{name: r{i}, match: ['GET /api/r{i}'], limits: *limits}}\n" for i in range(1000)
    )
    text = f"shared: &limits [100/1m, 1500/1h]\nthrottle:\n  routes:\n{routes}"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    # The anchor's own key is unknown, which is the one problem: the aliases themselves are read.
    assert caught.value.problems == [f"{path}: shared: unknown key (known: {', '.join(_SCHEMA)})"]


def test_a_file_over_the_bound_is_a_problem_not_read_whole(tmp_path: Path) -> None:
    """A config file over 1 MiB is refused by its size, the same by check-config."""
    path = write(tmp_path, "# padding\n" * (1 << 17) + "log_level: debug\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.problems == [
        f"{path}: cannot read the config file: it is over the limit of 1MiB"
    ]


def test_a_file_at_the_bound_is_read(tmp_path: Path) -> None:
    """A config file of exactly 1 MiB is read."""
    line = "log_level: debug\n"
    path = write(tmp_path, "#" * ((1 << 20) - len(line) - 1) + "\n" + line)
    assert os.path.getsize(path) == 1 << 20
    assert load_settings(path, environ={}).log_level == "debug"


def _load_in_a_thread(path: str) -> list[str]:
    """load_settings(path)'s problems, read in a thread that a FIFO left waiting is freed from."""
    problems: list[str] = []

    def load() -> None:
        try:
            load_settings(path, environ={})
        except ConfigError as error:
            problems.extend(error.problems)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        # Free a thread blocked opening the FIFO: a writer opens it and leaves.
        with open(path, "w", encoding="utf-8"):
            pass
        thread.join(10)
        pytest.fail("reading the config file blocked")
    return problems


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """A FIFO where the config file should be is a problem at once, not a start that never ends."""
    path = str(tmp_path / "contoso.yaml")
    os.mkfifo(path)
    assert _load_in_a_thread(path) == [f"{path}: cannot read the config file: not a regular file"]


def test_a_directory_is_refused_and_closed_again(tmp_path: Path) -> None:
    """A directory where the config file should be is not a regular file, and checking it
    leaves no descriptor open (a reload checks the path again each time)."""
    path = tmp_path / "contoso.yaml"
    path.mkdir()
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), environ={})
    assert caught.value.problems == [f"{path}: cannot read the config file: not a regular file"]
    assert set(os.listdir("/proc/self/fd")) <= before


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_is_refused(tmp_path: Path, device: str) -> None:
    """A symlink to a device where the config file should be is refused, never read."""
    path = tmp_path / "contoso.yaml"
    path.symlink_to(device)
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), environ={})
    assert caught.value.problems == [f"{path}: cannot read the config file: not a regular file"]


# shown, the one way a value reaches a message


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text() | st.binary(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
@example(b"\x00" * 50)
@example("\U0010ffff" * 30)
def test_shown_never_raises_and_stays_short(value: object) -> None:
    """Any value YAML can produce is shown in a bounded number of characters."""
    assert len(shown(value)) < 200


def test_shown_describes_numbers_too_large_to_print() -> None:
    """A number past Python's digit limit for str() is described by its length."""
    assert shown(16**5000) == "a number of about 6021 digits"


def test_a_limit_with_unicode_digits_is_refused() -> None:
    """Limit counts are ASCII digits: a full-width '１' is not a count."""
    with pytest.raises(ValueError, match="expected a limit"):
        parse_limit("１/1m")


# The whole schema, fed arbitrary and hostile values


def _leaves(schema: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from _leaves(spec, (*path, key))
        else:
            yield (*path, key)


LEAVES = tuple(_leaves(_SCHEMA))
SECTIONS = tuple(key for key, spec in _SCHEMA.items() if isinstance(spec, dict))

HOSTILE_TEXT = [
    HUGE,
    f"{HUGE}s",
    f"{HUGE}KiB",
    f"1/{HUGE}s",
    f"{HUGE}/1m",
    "inf",
    "-inf",
    "nan",
    "1e400",
    "",
    " ",
    "\n",
    "memory\n",
    "prod\n",
    "127.0.0.1:8080\n",
    "redis://127.0.0.1:6379/99999999999999999999",
    "redis://127.0.0.1:6379/0?db=x",
    "unix:///x?socket_timeout=nan",
    "https://a..b",
    "/dev/null",
    "/etc/hostname",
    "/",
    "\x00",
    "１２",
    "٣s",
    "5s\n5s",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, 2**64, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
routes = st.lists(
    st.dictionaries(
        st.sampled_from(["name", "match", "limits", "priority", "mode", "bogus"]),
        st.one_of(
            values,
            st.sampled_from(["machines.get", "new.route", "other", "GET /x/{id}", "bulk"]),
            st.lists(
                st.one_of(st.sampled_from(["1/1m", f"1/{HUGE}s", "0/1m", "GET /api/x"]), values),
                max_size=3,
            ),
        ),
        max_size=5,
    ),
    max_size=3,
)
upstreams = st.lists(
    st.dictionaries(
        st.sampled_from(["name", "origin", "listen", "catalogue", "bogus"]),
        st.one_of(
            values,
            st.sampled_from(
                ["graph", "all", "defender", "https://graph.microsoft.com", "127.0.0.1:0", "a:1"]
            ),
        ),
        max_size=5,
    ),
    max_size=3,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    """A config document: some of the schema's keys, each with an arbitrary or hostile value."""
    document: dict[str, object] = {}
    for path in draw(st.lists(st.sampled_from(LEAVES), max_size=8, unique=True)):
        value = draw({"routes": routes, "upstreams": upstreams}.get(path[-1], values))
        target = document
        for key in path[:-1]:
            section = target.setdefault(key, {})
            assert isinstance(section, dict)
            target = section
        target[path[-1]] = value
    if draw(st.booleans()):  # a whole section replaced by something that is not a mapping
        document[draw(st.sampled_from(SECTIONS))] = draw(scalars)
    return document


LINE = re.compile(r"(?P<file>[^:]+): (?P<key>[^:]+): .+\Z")
TOP_KEYS = tuple(_SCHEMA)


def check_config(text: str) -> tuple[int, str, str]:
    """``defender-proxy check-config`` run in-process on ``text``: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEFENDER_PROXY_")}
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "contoso.yaml")
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        with (
            mock.patch.dict(os.environ, environ, clear=True),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = cli.main(["check-config", path])
        return (
            code,
            out.getvalue().replace(path, "contoso.yaml"),
            err.getvalue().replace(path, "contoso.yaml"),
        )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_check_config_never_raises_on_any_document(document: dict[str, object]) -> None:
    """Any document of the schema's keys is accepted (exit 0) or refused with exit 2, every line
    naming the file and a key path of the document; nothing raises."""
    code, out, err = check_config(yaml.safe_dump(document, allow_unicode=True))
    assert code in (0, 2)
    if code == 0:
        assert out.startswith("contoso.yaml: ok")
        return
    lines = err.splitlines()
    assert lines
    for line in lines:
        match = LINE.match(line)
        assert match is not None, line
        assert match["file"] == "contoso.yaml"
        assert match["key"].split(".")[0].split("[")[0] in TOP_KEYS, line


YAML_PIECES = st.sampled_from(
    [
        *(f"{key}: " for key in TOP_KEYS),
        "\n  connect: ",
        "\n  routes:\n    - name: ",
        "[", "]", "{", "}", ", ", ": ", "\n", "  ", "- ", "? ", "'", '"', "&a ", "*a", "<<: ",
        "!!binary ", "!!timestamp ", "!!float ", "!!int ", "!!set ", "!!omap ", "!!str ",
        "0x", "0o", "1_000", "190:20:30", "2024-13-45", "2024-02-30", "1e400", ".nan", ".inf",
        "9" * 50, "%YAML 1.1\n", "---\n", "...\n", "\\u", "\\x", "#",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(YAML_PIECES, st.text(max_size=4)), max_size=30).map("".join))
def test_load_settings_never_raises_on_any_yaml_text(text: str) -> None:
    """Any text, YAML or not, gives settings or a ConfigError whose lines all name the file."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "contoso.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as file:
            file.write(text)
        try:
            load_settings(path, environ={})
        except ConfigError as error:
            problems = error.problems
        else:
            problems = []
    assert all(problem.startswith(f"{path}: ") for problem in problems)
