"""Tests for proxy.config: the YAML file, environment overrides, and how problems are reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trustme

from proxy.catalogue import CATALOGUE, OTHER
from proxy.config import (
    Address,
    ConfigError,
    Fallback,
    Limits,
    Pool,
    RouteOverride,
    Settings,
    Throttle,
    Timeouts,
    Tls,
    effective_routes,
    load_settings,
    parse_settings,
    redact_url,
    route_policies,
)
from proxy.routing import PatternError, Router, compile_pattern
from proxy.units import Limit

FULL_EXAMPLE = """\
upstream: https://api.security.microsoft.com
listen: 127.0.0.1:8080
admin_listen: 0.0.0.0:9464
timeouts: {connect: 5s, read: 120s}
log_format: json
log_level: info
shutdown_grace: 25s
tls: {verify: true, ca_bundle: CA_BUNDLE}
limits: {max_body: 32MiB, error_body_cap: 1MiB, max_header_size: 16KiB}
pool: {max_connections: 100, keepalive: 30s}
throttle: {store: memory}
"""


def problems_of(data: object, environ: dict[str, str] | None = None) -> list[str]:
    """The problems ``parse_settings`` reports for ``data`` (fails if it accepts it)."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, "contoso.yaml", environ or {})
    return caught.value.problems


def ca_file(tmp_path: Path) -> Path:
    """A PEM file holding one CA certificate, under ``tmp_path``."""
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def write(tmp_path: Path, text: str, name: str = "contoso.yaml") -> str:
    """Write ``text`` to a config file under ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# Defaults and the full example


def test_no_file_and_no_environment_gives_the_documented_defaults() -> None:
    """With no path and no DEFENDER_PROXY_CONFIG, every setting takes its documented default."""
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.upstream == "https://api.security.microsoft.com"
    assert settings.listen == Address("127.0.0.1", 8080)
    assert settings.admin_listen == Address("0.0.0.0", 9464)
    assert settings.timeouts == Timeouts(connect=5.0, read=120.0)
    assert settings.log_format == "auto"
    assert settings.log_level == "info"
    assert settings.shutdown_grace == 25.0
    assert settings.tls == Tls(verify=True, ca_bundle=None)
    assert settings.limits == Limits(
        max_body=32 * 2**20, error_body_cap=2**20, max_header_size=16384
    )
    assert settings.pool == Pool(max_connections=100, keepalive=30.0)
    assert settings.throttle == Throttle(store="memory")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file (YAML null) is accepted and means all defaults."""
    assert load_settings(write(tmp_path, ""), environ={}) == Settings()


def test_empty_section_gives_that_sections_defaults() -> None:
    """A section written with no keys (``timeouts:``) keeps that section's defaults."""
    assert parse_settings({"timeouts": None}, environ={}).timeouts == Timeouts()


def test_full_example_parses_to_the_expected_values(tmp_path: Path) -> None:
    """Every key of the documented example is read, with units converted."""
    bundle = ca_file(tmp_path)
    path = write(tmp_path, FULL_EXAMPLE.replace("CA_BUNDLE", str(bundle)))
    settings = load_settings(path, environ={})
    assert settings == Settings(
        upstream="https://api.security.microsoft.com",
        listen=Address("127.0.0.1", 8080),
        admin_listen=Address("0.0.0.0", 9464),
        timeouts=Timeouts(connect=5.0, read=120.0),
        log_format="json",
        log_level="info",
        shutdown_grace=25.0,
        tls=Tls(verify=True, ca_bundle=str(bundle)),
        limits=Limits(max_body=32 * 2**20, error_body_cap=2**20, max_header_size=16 * 2**10),
        pool=Pool(max_connections=100, keepalive=30.0),
        throttle=Throttle(store="memory"),
    )


def test_non_default_values_are_read() -> None:
    """Values differing from the defaults land in the right fields, converted from their units."""
    settings = parse_settings(
        {
            "timeouts": {"connect": "500ms", "read": "2m"},
            "log_level": "debug",
            "shutdown_grace": 0,
            "limits": {"max_body": "1GiB", "error_body_cap": 512, "max_header_size": "8KiB"},
            "pool": {"max_connections": 7, "keepalive": "1h"},
            "throttle": {"store": "rediss://cache.internal:6380/2"},
        },
        environ={},
    )
    assert settings.timeouts == Timeouts(connect=0.5, read=120.0)
    assert settings.log_level == "debug"
    assert settings.shutdown_grace == 0.0
    assert settings.limits == Limits(max_body=2**30, error_body_cap=512, max_header_size=8192)
    assert settings.pool == Pool(max_connections=7, keepalive=3600.0)
    assert settings.throttle.store == "rediss://cache.internal:6380/2"


def test_config_path_comes_from_the_environment(tmp_path: Path) -> None:
    """Without a path argument, DEFENDER_PROXY_CONFIG names the file to read."""
    path = write(tmp_path, "log_level: warning\n")
    assert load_settings(environ={"DEFENDER_PROXY_CONFIG": path}).log_level == "warning"


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after validation."""
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.log_level = "debug"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("address", "text"),
    [(Address("127.0.0.1", 8080), "127.0.0.1:8080"), (Address("::1", 8080), "[::1]:8080")],
)
def test_address_prints_as_host_and_port(address: Address, text: str) -> None:
    """An Address prints as host:port, with an IPv6 host in brackets."""
    assert str(address) == text


# Environment overrides


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("DEFENDER_PROXY_UPSTREAM", "https://eu.api.security.microsoft.com", "upstream",
         "https://eu.api.security.microsoft.com"),
        ("DEFENDER_PROXY_LISTEN", "0.0.0.0:18080", "listen", Address("0.0.0.0", 18080)),
        ("DEFENDER_PROXY_ADMIN_LISTEN", "[::]:19464", "admin_listen", Address("::", 19464)),
        ("DEFENDER_PROXY_LOG_FORMAT", "console", "log_format", "console"),
    ],
)  # fmt: skip
def test_environment_overrides_the_file(
    tmp_path: Path, variable: str, value: str, field: str, expected: object
) -> None:
    """Each override variable wins over the same key in the file."""
    path = write(
        tmp_path,
        "upstream: https://us.api.security.microsoft.com\nlisten: 127.0.0.1:1111\n"
        "admin_listen: 127.0.0.1:2222\nlog_format: json\n",
    )
    settings = load_settings(path, environ={variable: value})
    assert getattr(settings, field) == expected


def test_store_variable_overrides_throttle_store(tmp_path: Path) -> None:
    """DEFENDER_PROXY_STORE sets throttle.store, over the file's value."""
    path = write(tmp_path, "throttle: {store: memory}\n")
    settings = load_settings(path, environ={"DEFENDER_PROXY_STORE": "redis://redis:6379/0"})
    assert settings.throttle.store == "redis://redis:6379/0"


def test_empty_variable_counts_as_unset() -> None:
    """An override variable set to the empty string leaves the setting alone."""
    assert parse_settings(None, environ={"DEFENDER_PROXY_LISTEN": ""}).listen == Settings().listen


def test_bad_override_is_reported_under_the_variable_name() -> None:
    """A bad override value is reported with the variable, not a file, as its source."""
    assert problems_of(None, {"DEFENDER_PROXY_LISTEN": "nope"}) == [
        "DEFENDER_PROXY_LISTEN: expected host:port, got 'nope'"
    ]


def test_bad_store_override_hides_its_password() -> None:
    """A bad DEFENDER_PROXY_STORE is reported without the password it carries."""
    (problem,) = problems_of(None, {"DEFENDER_PROXY_STORE": "memcached://:s3cret@cache:11211"})
    assert problem.startswith("DEFENDER_PROXY_STORE: ")
    assert "s3cret" not in problem
    assert "memcached://:***@cache:11211" in problem


# Problems, one kind at a time


def test_unknown_top_level_key() -> None:
    """An unknown top-level key is a problem naming the key and listing the known ones."""
    (problem,) = problems_of({"upstream_url": "https://example.com"})
    assert problem.startswith("contoso.yaml: upstream_url: unknown key (known: upstream, listen, ")


def test_unknown_nested_key() -> None:
    """An unknown key inside a section is reported with its dotted path and the section's keys."""
    assert problems_of({"timeouts": {"conect": "5s"}}) == [
        "contoso.yaml: timeouts.conect: unknown key (known: connect, read, caller, pool, caller_keepalive)"
    ]


def test_bad_duration() -> None:
    """A value that is not a duration is reported with source, key path and the value."""
    assert problems_of({"timeouts": {"connect": "fast"}}) == [
        "contoso.yaml: timeouts.connect: expected a duration like 500ms, 2s, 1m or 1h, got 'fast'"
    ]


@pytest.mark.parametrize("key", ["connect", "read"])
def test_zero_timeout_is_a_problem(key: str) -> None:
    """Timeouts must be greater than zero."""
    assert problems_of({"timeouts": {key: "0s"}}) == [
        f"contoso.yaml: timeouts.{key}: must be greater than 0, got '0s'"
    ]


def test_negative_shutdown_grace_is_a_problem() -> None:
    """shutdown_grace may be zero but not negative."""
    (problem,) = problems_of({"shutdown_grace": -1})
    assert problem.startswith("contoso.yaml: shutdown_grace: ")


def test_bad_size() -> None:
    """A value that is not a size is reported with its key path."""
    assert problems_of({"limits": {"max_body": "lots"}}) == [
        "contoso.yaml: limits.max_body: expected a size like 64KiB or 1MiB, got 'lots'"
    ]


def test_zero_size_is_a_problem() -> None:
    """Sizes must be greater than zero."""
    assert problems_of({"limits": {"max_body": 0}}) == [
        "contoso.yaml: limits.max_body: must be at least 1, got 0"
    ]


def test_error_body_cap_may_exceed_max_body() -> None:
    """error_body_cap and max_body are independent: a larger cap is accepted."""
    limits = parse_settings({"limits": {"max_body": "1KiB", "error_body_cap": "1MiB"}}, environ={})
    assert limits.limits.error_body_cap > limits.limits.max_body


@pytest.mark.parametrize(
    "upstream", ["ftp://api.security.microsoft.com", "api.security.microsoft.com", "//host"]
)
def test_upstream_must_be_http_or_https(upstream: str) -> None:
    """Only http:// and https:// upstreams are accepted."""
    (problem,) = problems_of({"upstream": upstream})
    assert problem.startswith("contoso.yaml: upstream: expected an http:// or https:// URL")


@pytest.mark.parametrize(
    "upstream", ["https://user:hunter2@api.example.com", "https://:hunter2@api.example.com"]
)
def test_upstream_with_credentials_is_refused_without_echoing_them(upstream: str) -> None:
    """Credentials in the upstream are a problem, and the password never appears in the text."""
    with pytest.raises(ConfigError) as caught:
        parse_settings({"upstream": upstream}, "contoso.yaml", {})
    (problem,) = caught.value.problems
    assert problem.startswith("contoso.yaml: upstream: must not carry credentials")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("upstream", ["https://api.example.com/api", "https://h/v1/"])
def test_upstream_with_a_path_is_a_problem(upstream: str) -> None:
    """The upstream is an origin: any path other than empty or "/" is refused."""
    (problem,) = problems_of({"upstream": upstream})
    assert problem.startswith("contoso.yaml: upstream: must be an origin without a path")


@pytest.mark.parametrize("upstream", ["https://h/?a=1", "https://h#top", "https://h?"])
def test_upstream_with_query_or_fragment_is_a_problem(upstream: str) -> None:
    """A query or fragment in the upstream is refused."""
    (problem,) = problems_of({"upstream": upstream})
    assert problem.startswith("contoso.yaml: upstream: must not have a query or fragment")


@pytest.mark.parametrize("upstream", ["https://", "https://:443", "https://h:0", "https://h:x"])
def test_upstream_needs_a_host_and_a_valid_port(upstream: str) -> None:
    """An upstream without a host, or with a bad port, is refused."""
    (problem,) = problems_of({"upstream": upstream})
    assert problem.startswith("contoso.yaml: upstream: ")


@pytest.mark.parametrize(
    ("upstream", "origin"),
    [
        ("HTTPS://API.Security.Microsoft.COM/", "https://api.security.microsoft.com"),
        ("https://api.example.com:443", "https://api.example.com"),
        ("http://api.example.com:80", "http://api.example.com"),
        ("http://api.example.com:443", "http://api.example.com:443"),
        ("https://localhost:8443", "https://localhost:8443"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("https://[2001:DB8::1]", "https://[2001:db8::1]"),
    ],
)
def test_upstream_is_normalised_to_an_origin(upstream: str, origin: str) -> None:
    """Scheme and host are lowercased, a default port and a bare "/" are dropped."""
    assert parse_settings({"upstream": upstream}, environ={}).upstream == origin


@pytest.mark.parametrize(
    "listen", ["nope", "8080", "host:", ":8080", "::1:8080", "[nope]:80", "[::g]:80", "a b:80"]
)
def test_bad_listen(listen: str) -> None:
    """A listen address that is not host:port or [v6]:port is a problem."""
    (problem,) = problems_of({"listen": listen})
    assert problem.startswith("contoso.yaml: listen: ")


def test_bad_listen_message() -> None:
    """A malformed listen address is reported with the expected shape and the value."""
    assert problems_of({"listen": "nope"}) == [
        "contoso.yaml: listen: expected host:port, got 'nope'"
    ]


def test_listen_port_out_of_range() -> None:
    """A port above 65535 is a problem."""
    assert problems_of({"admin_listen": "127.0.0.1:65536"}) == [
        "contoso.yaml: admin_listen: port must be 0-65535, got '127.0.0.1:65536'"
    ]


def test_listen_must_be_a_string() -> None:
    """A bare port number (an int in YAML) is not a listen address."""
    assert problems_of({"listen": 8080}) == ["contoso.yaml: listen: expected host:port, got 8080"]


def test_ipv6_listen() -> None:
    """A bracketed IPv6 listen address parses to the bare address and its port."""
    assert parse_settings({"listen": "[::1]:8080"}, environ={}).listen == Address("::1", 8080)


def test_listen_and_admin_listen_on_the_same_port() -> None:
    """listen and admin_listen may not share a port."""
    (problem,) = problems_of({"listen": "127.0.0.1:9000", "admin_listen": "0.0.0.0:9000"})
    assert problem.startswith("contoso.yaml: admin_listen: ")
    assert "share a port" in problem


def test_same_port_from_the_environment_names_the_variable() -> None:
    """A clash caused by an override is reported under that variable."""
    (problem,) = problems_of(None, {"DEFENDER_PROXY_LISTEN": "127.0.0.1:9464"})
    assert problem.startswith("DEFENDER_PROXY_LISTEN: ")


def test_port_zero_may_be_shared() -> None:
    """Port 0 (pick a free port) on both listeners is accepted."""
    settings = parse_settings({"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"}, environ={})
    assert settings.listen.port == settings.admin_listen.port == 0


@pytest.mark.parametrize(("key", "value"), [("log_format", "xml"), ("log_level", "trace")])
def test_bad_choice(key: str, value: str) -> None:
    """log_format and log_level accept only their listed values."""
    (problem,) = problems_of({key: value})
    assert problem.startswith(f"contoso.yaml: {key}: expected one of ")
    assert repr(value) in problem


def test_choices_ignore_case() -> None:
    """log_format and log_level are read case-insensitively and stored lowercase."""
    settings = parse_settings({"log_format": "JSON", "log_level": "Warning"}, environ={})
    assert (settings.log_format, settings.log_level) == ("json", "warning")


def test_non_mapping_section() -> None:
    """A section given as a list is a problem, not a crash."""
    assert problems_of({"timeouts": ["5s", "120s"]}) == [
        "contoso.yaml: timeouts: expected a mapping, got a list"
    ]


def test_non_mapping_top_level(tmp_path: Path) -> None:
    """A file whose top level is not a mapping is a problem."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "- a\n- b\n"), environ={})
    assert caught.value.problems == [f"{tmp_path / 'contoso.yaml'}: expected a mapping, got a list"]


def test_missing_ca_bundle(tmp_path: Path) -> None:
    """tls.ca_bundle must name an existing file."""
    missing = str(tmp_path / "missing.pem")
    assert problems_of({"tls": {"ca_bundle": missing}}) == [
        f"contoso.yaml: tls.ca_bundle: no such file: {missing!r}"
    ]


@pytest.mark.parametrize("value", ["", 5])
def test_ca_bundle_must_be_a_path(value: object) -> None:
    """tls.ca_bundle given as an empty string or a number is a problem."""
    assert problems_of({"tls": {"ca_bundle": value}}) == [
        f"contoso.yaml: tls.ca_bundle: expected a file path, got {value!r}"
    ]


def test_null_ca_bundle_means_none() -> None:
    """tls.ca_bundle: null is the same as leaving it out."""
    assert parse_settings({"tls": {"ca_bundle": None}}, environ={}).tls == Tls()


def test_ca_bundle_that_is_a_directory(tmp_path: Path) -> None:
    """tls.ca_bundle naming a directory is a problem."""
    (problem,) = problems_of({"tls": {"ca_bundle": str(tmp_path)}})
    assert problem.startswith("contoso.yaml: tls.ca_bundle: no such file")


def test_verify_false_with_ca_bundle_is_a_contradiction(tmp_path: Path) -> None:
    """Turning verification off while giving a CA bundle is a problem."""
    bundle = ca_file(tmp_path)
    (problem,) = problems_of({"tls": {"verify": False, "ca_bundle": str(bundle)}})
    assert problem.startswith("contoso.yaml: tls: verify is false")


def test_verify_false_alone_is_accepted() -> None:
    """tls.verify: false without a bundle is allowed."""
    assert parse_settings({"tls": {"verify": False}}, environ={}).tls == Tls(verify=False)


def test_verify_must_be_a_boolean() -> None:
    """tls.verify given as a string is a problem, not silently truthy."""
    assert problems_of({"tls": {"verify": "no"}}) == [
        "contoso.yaml: tls.verify: expected true or false, got 'no'"
    ]


@pytest.mark.parametrize("value", [0, -1, True, "100", 1.5])
def test_max_connections_must_be_a_positive_int(value: object) -> None:
    """pool.max_connections must be a whole number of at least 1."""
    (problem,) = problems_of({"pool": {"max_connections": value}})
    assert problem.startswith("contoso.yaml: pool.max_connections: ")


@pytest.mark.parametrize(
    "store",
    [
        "memory",
        "redis://localhost:6379/0",
        "rediss://cache:6380",
        "unix:///run/redis.sock?db=1",
        "redis+cluster://node-0:7000",
        "rediss+cluster://node-0:7000/0",
    ],
)
def test_valid_stores(store: str) -> None:
    """throttle.store accepts memory and redis://, rediss://, *+cluster:// and unix:// URLs."""
    assert parse_settings({"throttle": {"store": store}}, environ={}).throttle.store == store


@pytest.mark.parametrize(
    "store",
    [
        "mongodb://:hunter2@db/0",
        "redis://:hunter2@/0",
        "redis://:hunter2@host/zero",
        "redis://:hunter2@host:port/0",
        "unix://:hunter2@",
        "memcache",
        "redis+cluster://:hunter2@node:7000/3",
    ],
)
def test_bad_store_hides_the_password(store: str) -> None:
    """A bad throttle.store is a problem whose text shows *** instead of the password."""
    (problem,) = problems_of({"throttle": {"store": store}})
    assert problem.startswith("contoso.yaml: throttle.store: ")
    assert "hunter2" not in problem
    if "hunter2" in store:
        assert ":***@" in problem


WRONG_TYPES = [[1, 2], {"a": 1}]
LEAVES = [
    ("upstream",),
    ("listen",),
    ("admin_listen",),
    ("log_format",),
    ("log_level",),
    ("shutdown_grace",),
    ("timeouts", "connect"),
    ("timeouts", "read"),
    ("tls", "verify"),
    ("tls", "ca_bundle"),
    ("limits", "max_body"),
    ("limits", "error_body_cap"),
    ("limits", "max_header_size"),
    ("limits", "batch_body"),
    ("limits", "recent_errors"),
    ("pool", "max_connections"),
    ("pool", "keepalive"),
    ("throttle", "store"),
]


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("path", LEAVES, ids=".".join)
def test_wrong_types_are_problems_not_crashes(path: tuple[str, ...], value: object) -> None:
    """Any key given a value of the wrong type is reported under its path; nothing crashes."""
    data: dict[str, object] = {path[0]: value} if len(path) == 1 else {path[0]: {path[1]: value}}
    (problem,) = problems_of(data)
    assert problem.startswith(f"contoso.yaml: {'.'.join(path)}: ")


# Reporting


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """Several problems in one file all come back in one ConfigError, one line each, in order."""
    path = write(
        tmp_path,
        "upstream: ftp://example.com\n"
        "listen: nope\n"
        "timeouts: {connect: fast, read: 1s}\n"
        "log_format: xml\n"
        "limits: {max_body: lots}\n"
        "bogus: 1\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"DEFENDER_PROXY_ADMIN_LISTEN": "bad"})
    problems = caught.value.problems
    assert [p.split(": ")[1] for p in problems] == [
        "upstream",
        "listen",
        "timeouts.connect",
        "log_format",
        "limits.max_body",
        "bogus",
        "expected host:port, got 'bad'",
    ]
    assert all(p.startswith(f"{path}: ") for p in problems[:6])
    assert problems[6].startswith("DEFENDER_PROXY_ADMIN_LISTEN: ")
    assert str(caught.value).splitlines() == problems


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    """A YAML syntax error is a ConfigError naming the file and the line."""
    path = write(tmp_path, "upstream: https://h\nlisten: [127.0.0.1:8080\nlog_level: info\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: invalid YAML at line 3,")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that does not exist is a ConfigError naming it."""
    missing = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as caught:
        load_settings(missing, environ={})
    assert caught.value.problems == [
        f"{missing}: cannot read the config file: No such file or directory"
    ]


def test_missing_file_from_the_environment_is_a_config_error(tmp_path: Path) -> None:
    """DEFENDER_PROXY_CONFIG naming a missing file is a ConfigError, not silent defaults."""
    with pytest.raises(ConfigError):
        load_settings(environ={"DEFENDER_PROXY_CONFIG": str(tmp_path / "absent.yaml")})


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is a ConfigError, not a crash."""
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"log_level: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), environ={})
    assert caught.value.problems[0].startswith(f"{path}: cannot read the config file: ")


def test_config_error_lists_each_problem_on_its_own_line() -> None:
    """str(ConfigError) is its problems joined by newlines."""
    error = ConfigError(["a: one", "b: two"])
    assert error.problems == ["a: one", "b: two"]
    assert str(error) == "a: one\nb: two"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://default:s3cret@cache:6380", "rediss://default:***@cache:6380"),
        ("https://user:p@ss@host/", "https://user:***@host/"),
        ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://user@cache:6379", "redis://user@cache:6379"),
        ("https://api.security.microsoft.com:443/x", "https://api.security.microsoft.com:443/x"),
        ("memory", "memory"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    """redact_url replaces any password with *** and leaves everything else as it was."""
    assert redact_url(url) == redacted


# The throttle section

THROTTLE_EXAMPLE = """\
throttle:
  store: redis://redis:6379/0
  namespace: contoso-prod
  mode: shadow
  max_wait: 10s
  store_timeout: 20ms
  margin: 250ms
  max_pause: 2m
  bulk_reserve: 0.3
  fallback: {expected_replicas: 4, cooldown: 10s}
  routes:
    - name: machines.get
      limits: ["90/1m", "1200/1h"]
    - name: contoso.isolate
      match: ["POST /api/machines/{id}/isolate"]
      limits: ["5/1m"]
      priority: bulk
      mode: enforce
"""


def throttle_problems(section: object, environ: dict[str, str] | None = None) -> list[str]:
    """The problems reported for ``throttle: section``."""
    return problems_of({"throttle": section}, environ)


def route_problems(*routes: object) -> list[str]:
    """The problems reported for ``throttle.routes`` holding ``routes``."""
    return throttle_problems({"routes": list(routes)})


def throttle_of(section: object) -> Throttle:
    """The Throttle parsed from ``throttle: section`` (fails on any problem)."""
    return parse_settings({"throttle": section}, "contoso.yaml", {}).throttle


def test_throttle_defaults_are_the_documented_ones() -> None:
    """Without a throttle section every quota setting takes its documented default."""
    assert throttle_of(None) == Throttle(
        store="memory",
        namespace="default",
        mode="enforce",
        max_wait=30.0,
        store_timeout=0.05,
        margin=0.5,
        max_pause=300.0,
        bulk_reserve=0.2,
        fallback=Fallback(expected_replicas=3, cooldown=5.0),
        routes=(),
    )


def test_throttle_example_parses_to_the_expected_values(tmp_path: Path) -> None:
    """Every key of the documented throttle example is read, with units and limits converted."""
    settings = load_settings(write(tmp_path, THROTTLE_EXAMPLE), environ={})
    assert settings.throttle == Throttle(
        store="redis://redis:6379/0",
        namespace="contoso-prod",
        mode="shadow",
        max_wait=10.0,
        store_timeout=0.02,
        margin=0.25,
        max_pause=120.0,
        bulk_reserve=0.3,
        fallback=Fallback(expected_replicas=4, cooldown=10.0),
        routes=(
            RouteOverride("machines.get", None, (Limit(90, 60.0), Limit(1200, 3600.0)), None, None),
            RouteOverride(
                "contoso.isolate",
                ("POST /api/machines/{id}/isolate",),
                (Limit(5, 60.0),),
                "bulk",
                "enforce",
            ),
        ),
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"max_wait": 0}, {"max_wait": 0.0}),
        ({"margin": 0}, {"margin": 0.0}),
        ({"margin": "9999ms"}, {"margin": 9.999}),
        ({"store_timeout": "5s"}, {"store_timeout": 5.0}),
        ({"bulk_reserve": 0}, {"bulk_reserve": 0.0}),
        ({"bulk_reserve": 0.99}, {"bulk_reserve": 0.99}),
        ({"mode": "Shadow"}, {"mode": "shadow"}),
        ({"namespace": "A" * 64}, {"namespace": "A" * 64}),
        ({"namespace": "tenant_1.app-2"}, {"namespace": "tenant_1.app-2"}),
        ({"routes": None}, {"routes": ()}),
    ],
    ids=repr,
)
def test_throttle_edge_values_are_accepted(
    section: dict[str, object], expected: dict[str, Any]
) -> None:
    """Values at the edge of each allowed range are accepted and converted."""
    assert throttle_of(section) == dataclasses.replace(Throttle(), **expected)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"max_wait": "-1s"}, "max_wait: expected a duration like 500ms, 2s, 1m or 1h, got '-1s'"),
        ({"store_timeout": 0}, "store_timeout: must be greater than 0, got 0"),
        ({"store_timeout": "5001ms"}, "store_timeout: must be at most 5s, got '5001ms'"),
        ({"margin": "10s"}, "margin: must be less than 10s, got '10s'"),
        ({"max_pause": "0s"}, "max_pause: must be greater than 0, got '0s'"),
        ({"bulk_reserve": 1}, "bulk_reserve: expected a number from 0 up to (not including) 1, got 1"),
        ({"bulk_reserve": -0.1}, "bulk_reserve: expected a number from 0 up to (not including) 1, got -0.1"),
        ({"bulk_reserve": True}, "bulk_reserve: expected a number from 0 up to (not including) 1, got True"),
        ({"bulk_reserve": "20%"}, "bulk_reserve: expected a number from 0 up to (not including) 1, got '20%'"),
        ({"fallback": {"expected_replicas": 0}}, "fallback.expected_replicas: expected a whole number from 1 to 1000, got 0"),
        ({"fallback": {"cooldown": 0}}, "fallback.cooldown: must be greater than 0, got 0"),
        ({"mode": "observe"}, "mode: expected one of enforce, shadow, got 'observe'"),
    ],
    ids=repr,
)  # fmt: skip
def test_throttle_value_out_of_range(section: dict[str, object], problem: str) -> None:
    """Each quota setting outside its range is one problem naming the key and the value."""
    assert throttle_problems(section) == [f"contoso.yaml: throttle.{problem}"]


@pytest.mark.parametrize("namespace", ["", "A" * 65, "contoso prod", "a:b", "{tag}", "é", 42])
def test_bad_namespace(namespace: object) -> None:
    """throttle.namespace is 1-64 characters of A-Z a-z 0-9 _ . - (it ends up in Redis keys)."""
    assert throttle_problems({"namespace": namespace}) == [
        "contoso.yaml: throttle.namespace: expected 1-64 characters of A-Z a-z 0-9 _ . -, "
        f"got {namespace!r}"
    ]


def test_unknown_fallback_key() -> None:
    """An unknown key inside throttle.fallback is reported with its three-part path."""
    assert throttle_problems({"fallback": {"replicas": 3}}) == [
        "contoso.yaml: throttle.fallback.replicas: unknown key (known: expected_replicas, cooldown)"
    ]


THROTTLE_LEAVES = [
    ("namespace",),
    ("mode",),
    ("max_wait",),
    ("store_timeout",),
    ("margin",),
    ("max_pause",),
    ("bulk_reserve",),
    ("fallback", "expected_replicas"),
    ("fallback", "cooldown"),
]


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
@pytest.mark.parametrize("path", THROTTLE_LEAVES, ids=".".join)
def test_throttle_wrong_types_are_problems(path: tuple[str, ...], value: object) -> None:
    """Any throttle setting given a list or a mapping is one problem under its path."""
    section: object = value
    for key in reversed(path):
        section = {key: section}
    (problem,) = throttle_problems(section)
    assert problem.startswith(f"contoso.yaml: throttle.{'.'.join(path)}: ")


@pytest.mark.parametrize(("routes", "kind"), [({"name": "x"}, "dict"), ("x", "str"), (5, "int")])
def test_routes_must_be_a_list(routes: object, kind: str) -> None:
    """throttle.routes given as anything but a list is one problem."""
    assert throttle_problems({"routes": routes}) == [
        f"contoso.yaml: throttle.routes: expected a list of routes, got a {kind}"
    ]


def test_route_must_be_a_mapping() -> None:
    """An entry of throttle.routes that is not a mapping is reported under its index."""
    assert route_problems({"name": "machines.get"}, "machines.get") == [
        "contoso.yaml: throttle.routes[1]: expected a mapping, got a str"
    ]


def test_unknown_route_key() -> None:
    """An unknown key in a route is reported with the index and the known keys."""
    assert route_problems({"name": "machines.get", "limit": ["1/1m"]}) == [
        "contoso.yaml: throttle.routes[0].limit: unknown key "
        "(known: name, match, limits, priority, mode, per)"
    ]


def test_route_needs_a_name() -> None:
    """A route without a name is a problem, even if it has everything else."""
    assert route_problems({"match": ["GET /api/x"], "limits": ["1/1m"]}) == [
        "contoso.yaml: throttle.routes[0].name: required: every route needs a name"
    ]


@pytest.mark.parametrize("name", ["", "n" * 65, "my route", "a/b", 7])
def test_bad_route_name(name: object) -> None:
    """A route name outside 1-64 characters of A-Z a-z 0-9 _ . - is a problem."""
    assert route_problems({"name": name, "match": ["GET /api/x"], "limits": ["1/1m"]}) == [
        "contoso.yaml: throttle.routes[0].name: expected 1-64 characters of A-Z a-z 0-9 _ . -, "
        f"got {name!r}"
    ]


@pytest.mark.parametrize("missing", ["match", "limits"])
def test_new_route_needs_match_and_limits(missing: str) -> None:
    """A name the catalogue does not have must bring both its patterns and its limits."""
    route = {"name": "contoso.custom", "match": ["GET /api/custom"], "limits": ["1/1m"]}
    del route[missing]
    assert route_problems(route) == [
        f"contoso.yaml: throttle.routes[0].{missing}: "
        "required: 'contoso.custom' is not a catalogue route"
    ]


def test_new_route_with_neither_match_nor_limits_reports_both() -> None:
    """A bare new name is two problems, one for each missing key."""
    assert route_problems({"name": "contoso.custom"}) == [
        "contoso.yaml: throttle.routes[0].match: required: 'contoso.custom' is not a catalogue route",
        "contoso.yaml: throttle.routes[0].limits: required: 'contoso.custom' is not a catalogue route",
    ]


def test_catalogue_route_may_omit_match_and_limits() -> None:
    """A catalogue name alone, or with only priority and mode, keeps the catalogue's entry."""
    throttle = throttle_of(
        {"routes": [{"name": "machines.get"}, {"name": "alerts.list", "priority": "bulk"}]}
    )
    assert throttle.routes == (
        RouteOverride("machines.get", None, None, None, None),
        RouteOverride("alerts.list", None, None, "bulk", None),
    )
    assert effective_routes(throttle) == CATALOGUE


def test_null_route_keys_mean_absent() -> None:
    """A route key written as null is the same as leaving it out."""
    route = {"name": "machines.get", "match": None, "limits": None, "priority": None, "mode": None}
    assert throttle_of({"routes": [route]}).routes == (
        RouteOverride("machines.get", None, None, None, None),
    )


@pytest.mark.parametrize(
    "pattern", ["GET api/machines", "FETCH /api/machines", "GET /api/{id", "GET /api/**/x", "GET"]
)
def test_bad_pattern_reports_the_pattern_error(pattern: str) -> None:
    """A pattern that does not compile is reported under match[i] with the router's own reason."""
    with pytest.raises(PatternError) as reason:
        compile_pattern(pattern)
    route = {"name": "machines.get", "match": ["GET /api/machines/{id}", pattern]}
    assert route_problems(route) == [f"contoso.yaml: throttle.routes[0].match[1]: {reason.value}"]


@pytest.mark.parametrize(
    ("match", "problem"),
    [
        ("GET /api/x", "match: expected a list of patterns, got a str"),
        ([], "match: expected at least one of patterns, got an empty list"),
        (["GET /api/x", 5], "match[1]: expected a pattern like 'GET /api/machines/{id}', got 5"),
    ],
)
def test_match_must_be_a_non_empty_list_of_strings(match: object, problem: str) -> None:
    """match is a list of at least one pattern string."""
    route = {"name": "contoso.custom", "match": match, "limits": ["1/1m"]}
    assert route_problems(route) == [f"contoso.yaml: throttle.routes[0].{problem}"]


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ("100/1m", "limits: expected a list of limits, got a str"),
        ([], "limits: expected at least one of limits, got an empty list"),
        (["100/1m", "lots"], "limits[1]: expected a limit like 100/1m (requests per window), got 'lots'"),
        (["100/1m", "0/1h"], "limits[1]: expected a limit like 100/1m (requests per window), got '0/1h'"),
        (["100/1m", "1500/1h", "90/60s"], "limits[2]: limits[0] already limits the 1m window"),
    ],
)  # fmt: skip
def test_bad_limits(limits: object, problem: str) -> None:
    """limits is a list of at least one valid limit, no two of them for the same window."""
    assert route_problems({"name": "machines.get", "limits": limits}) == [
        f"contoso.yaml: throttle.routes[0].{problem}"
    ]


def test_duplicate_route_names() -> None:
    """A name given twice is reported at the second entry, pointing at the first."""
    assert route_problems(
        {"name": "machines.get", "limits": ["1/1m"]},
        {"name": "alerts.get"},
        {"name": "machines.get", "mode": "shadow"},
    ) == ["contoso.yaml: throttle.routes[2].name: 'machines.get' is already routes[0]"]


def test_duplicate_name_is_found_even_when_the_first_entry_is_invalid() -> None:
    """The duplicate check does not depend on the first entry being otherwise valid."""
    assert route_problems({"name": "machines.get", "mode": "off"}, {"name": "machines.get"}) == [
        "contoso.yaml: throttle.routes[0].mode: expected one of enforce, shadow, got 'off'",
        "contoso.yaml: throttle.routes[1].name: 'machines.get' is already routes[0]",
    ]


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [("priority", "urgent", "interactive, bulk"), ("mode", "off", "enforce, shadow")],
)
def test_bad_route_priority_or_mode(key: str, value: str, allowed: str) -> None:
    """A route's priority and mode accept only their listed values."""
    assert route_problems({"name": "machines.get", key: value}) == [
        f"contoso.yaml: throttle.routes[0].{key}: expected one of {allowed}, got {value!r}"
    ]


def test_route_priority_and_mode_ignore_case() -> None:
    """A route's priority and mode are read case-insensitively and stored lowercase."""
    (route,) = throttle_of(
        {"routes": [{"name": "alerts.get", "priority": "Bulk", "mode": "SHADOW"}]}
    ).routes
    assert (route.priority, route.mode) == ("bulk", "shadow")


@pytest.mark.parametrize("key", ["match", "limits"])
def test_other_route_takes_only_priority_and_mode(key: str) -> None:
    """The catch-all 'other' route cannot be given patterns or limits."""
    value = ["GET /api/x"] if key == "match" else ["1/1m"]
    assert route_problems({"name": OTHER, key: value}) == [
        f"contoso.yaml: throttle.routes[0].{key}: "
        "'other' is whatever no route matches: set only priority, mode or per"
    ]


def test_every_route_problem_is_reported_at_once() -> None:
    """Problems in several routes and several keys all come back together, each with its path."""
    problems = throttle_problems(
        {
            "mode": "observe",
            "routes": [
                {"name": "machines.get", "match": ["GET /api/{x"], "limits": ["1/1m", "2/60s"]},
                {"name": "contoso.new", "priority": "urgent"},
                "machines.list",
                {"name": "machines.get"},
            ],
            "bulk_reserve": 2,
        }
    )
    assert [p.split(": ")[1] for p in problems] == [
        "throttle.mode",
        "throttle.routes[0].match[0]",
        "throttle.routes[0].limits[1]",
        "throttle.routes[1].priority",
        "throttle.routes[1].match",
        "throttle.routes[1].limits",
        "throttle.routes[2]",
        "throttle.routes[3].name",
        "throttle.bulk_reserve",
    ]


def test_route_problems_name_the_file(tmp_path: Path) -> None:
    """Route problems found in a file carry the file's path, like every other problem."""
    path = write(tmp_path, "throttle:\n  routes:\n    - name: contoso.new\n      limits: [1/1m]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.problems == [
        f"{path}: throttle.routes[0].match: required: 'contoso.new' is not a catalogue route"
    ]


def test_store_password_stays_hidden_among_route_problems() -> None:
    """A bad store URL reported alongside route problems still never shows its password."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(
            {"throttle": {"store": "redis://:hunter2@cache/zero", "routes": [{"name": "x y"}]}},
            "contoso.yaml",
            {},
        )
    assert len(caught.value.problems) == 2
    assert "hunter2" not in str(caught.value)


def test_store_variable_overrides_the_throttle_sections_store(tmp_path: Path) -> None:
    """DEFENDER_PROXY_STORE replaces throttle.store and leaves the rest of the section as written."""
    path = write(tmp_path, THROTTLE_EXAMPLE)
    environ = {"DEFENDER_PROXY_STORE": "rediss://:s3cret@cache.internal:6380/1"}
    throttle = load_settings(path, environ=environ).throttle
    assert throttle.store == "rediss://:s3cret@cache.internal:6380/1"
    assert throttle.namespace == "contoso-prod"
    assert len(throttle.routes) == 2


# The effective route table


def test_effective_routes_without_overrides_is_the_catalogue() -> None:
    """With no routes configured the table is the catalogue, in its order."""
    assert effective_routes(Throttle()) == CATALOGUE


def test_catalogue_override_replaces_limits_in_place() -> None:
    """A catalogue name with new limits keeps its place and its patterns; nothing else changes."""
    throttle = throttle_of({"routes": [{"name": "machines.get", "limits": ["90/1m", "1200/1h"]}]})
    routes = effective_routes(throttle)
    index = [spec.name for spec in CATALOGUE].index("machines.get")
    assert [spec.name for spec in routes] == [spec.name for spec in CATALOGUE]
    assert routes[index].limits == (Limit(90, 60.0), Limit(1200, 3600.0))
    assert routes[index].match == CATALOGUE[index].match
    assert routes[:index] + routes[index + 1 :] == CATALOGUE[:index] + CATALOGUE[index + 1 :]


def test_catalogue_override_replaces_match_in_place() -> None:
    """A catalogue name with new patterns keeps its place and its limits."""
    throttle = throttle_of({"routes": [{"name": "alerts.list", "match": ["GET /api/alerts/all"]}]})
    routes = effective_routes(throttle)
    index = [spec.name for spec in CATALOGUE].index("alerts.list")
    assert routes[index].match == ("GET /api/alerts/all",)
    assert routes[index].limits == CATALOGUE[index].limits
    assert Router(routes).match("GET", "/api/alerts/all").name == "alerts.list"
    assert Router(routes).match("GET", "/api/alerts").name == OTHER


def test_new_routes_come_first_in_the_order_given() -> None:
    """New names are placed before every catalogue entry, in configuration order."""
    throttle = throttle_of(
        {
            "routes": [
                {"name": "contoso.b", "match": ["GET /api/b"], "limits": ["1/1m"]},
                {"name": "machines.get", "limits": ["5/1m"]},
                {"name": "contoso.a", "match": ["GET /api/a"], "limits": ["2/1m"]},
            ]
        }
    )
    names = [spec.name for spec in effective_routes(throttle)]
    assert names == ["contoso.b", "contoso.a", *(spec.name for spec in CATALOGUE)]


def test_new_route_wins_over_the_catalogue_in_the_router() -> None:
    """A new route whose pattern overlaps a catalogue entry takes the requests that entry had."""
    path = "/api/machines/1e5bc9d7e413ddd7902c2932e418702b84d0cc07/isolate"
    assert Router(CATALOGUE).match("POST", path).name == "machines.isolate"
    throttle = throttle_of(
        {
            "routes": [
                {
                    "name": "contoso.isolate",
                    "match": ["POST /api/machines/{id}/isolate"],
                    "limits": ["5/1m"],
                }
            ]
        }
    )
    spec = Router(effective_routes(throttle)).match("POST", path)
    assert (spec.name, spec.limits) == ("contoso.isolate", (Limit(5, 60.0),))


def test_other_override_adds_no_route() -> None:
    """An override of 'other' changes no route in the table (the router adds 'other' itself)."""
    throttle = throttle_of({"routes": [{"name": OTHER, "priority": "bulk"}]})
    assert effective_routes(throttle) == CATALOGUE


def test_effective_routes_refuses_an_unvalidated_new_route() -> None:
    """A Throttle built in code with a new route lacking patterns is an error, not a dead route."""
    throttle = Throttle(routes=(RouteOverride("contoso.x", None, (Limit(1, 60.0),), None, None),))
    with pytest.raises(ValueError, match=r"'contoso\.x' is not a catalogue route"):
        effective_routes(throttle)


def test_route_policies_defaults() -> None:
    """Every route, 'other' included, is interactive and follows the section's mode by default."""
    policies = route_policies(throttle_of({"mode": "shadow"}))
    assert set(policies) == Router(CATALOGUE).names
    assert set(policies.values()) == {("interactive", "shadow")}
    assert list(policies)[-1] == OTHER


def test_route_policies_apply_overrides() -> None:
    """A route's own priority and mode win over the defaults; unnamed routes keep the defaults."""
    throttle = throttle_of(
        {
            "mode": "shadow",
            "routes": [
                {"name": "machines.exports", "priority": "bulk"},
                {"name": "advancedqueries.run", "mode": "enforce"},
                {
                    "name": "contoso.x",
                    "match": ["GET /api/x"],
                    "limits": ["1/1m"],
                    "priority": "bulk",
                },
                {"name": OTHER, "priority": "bulk", "mode": "enforce"},
            ],
        }
    )
    policies = route_policies(throttle)
    assert policies["machines.exports"] == ("bulk", "shadow")
    assert policies["advancedqueries.run"] == ("interactive", "enforce")
    assert policies["contoso.x"] == ("bulk", "shadow")
    assert policies[OTHER] == ("bulk", "enforce")
    assert policies["alerts.list"] == ("interactive", "shadow")
    assert set(policies) == Router(effective_routes(throttle)).names


def test_allow_from_networks_are_normalised() -> None:
    """allow_from takes networks and plain addresses, normalised to CIDR form."""
    settings = parse_settings({"allow_from": ["10.1.2.3/8", "192.168.1.7", "::1"]}, environ={})
    assert settings.allow_from == ("10.0.0.0/8", "192.168.1.7/32", "::1/128")


@pytest.mark.parametrize("value", [["10.0.0.0/33"], ["not-a-net"], "10.0.0.0/8", [1]])
def test_bad_allow_from_is_a_problem(value: object) -> None:
    """A bad allow_from entry is reported with its key."""
    (problem,) = problems_of({"allow_from": value})
    assert problem.startswith("contoso.yaml: allow_from: ")


def test_batch_body_has_a_default_and_bounds() -> None:
    """limits.batch_body is 1 MiB by default, read as a size, and refused outside 1KiB-64MiB."""
    assert parse_settings({}, environ={}).limits.batch_body == 2**20
    assert (
        parse_settings({"limits": {"batch_body": "4MiB"}}, environ={}).limits.batch_body
        == 4 * 2**20
    )
    for wrong in ("512", "65MiB"):
        (problem,) = problems_of({"limits": {"batch_body": wrong}})
        assert "limits.batch_body" in problem


def test_rewrite_links_is_on_by_default_and_can_be_turned_off() -> None:
    """rewrite_links defaults to true; false in the file or the environment turns it off."""
    assert parse_settings(None, environ={}).rewrite_links is True
    assert parse_settings({"rewrite_links": False}, environ={}).rewrite_links is False
    environ = {"DEFENDER_PROXY_REWRITE_LINKS": "False"}
    assert parse_settings({"rewrite_links": True}, environ=environ).rewrite_links is False


@pytest.mark.parametrize("value", ["maybe", 1, None, [], "yes please"])
def test_a_bad_rewrite_links_is_a_problem(value: object) -> None:
    """Anything but true or false is reported with the key, alongside every other problem."""
    data = {"rewrite_links": value, "log_level": "loud"}
    if value is None:
        data["rewrite_links"] = "none"
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, source="c.yaml", environ={})
    problems = caught.value.problems
    assert any(p.startswith("c.yaml: rewrite_links: expected true or false") for p in problems)
    assert any(p.startswith("c.yaml: log_level:") for p in problems)
