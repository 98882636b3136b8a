"""Tests for proxy.config: the YAML file, environment overrides, and how problems are reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.config import (
    Address,
    ConfigError,
    Limits,
    Pool,
    Settings,
    Throttle,
    Timeouts,
    Tls,
    load_settings,
    parse_settings,
    redact_url,
)

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
    bundle = tmp_path / "custom.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
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
    (problem,) = problems_of({"upstreams": "https://example.com"})
    assert problem.startswith("contoso.yaml: upstreams: unknown key (known: upstream, listen, ")


def test_unknown_nested_key() -> None:
    """An unknown key inside a section is reported with its dotted path and the section's keys."""
    assert problems_of({"timeouts": {"conect": "5s"}}) == [
        "contoso.yaml: timeouts.conect: unknown key (known: connect, read)"
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
    assert problems_of({"limits": {"max_header_size": 0}}) == [
        "contoso.yaml: limits.max_header_size: must be greater than 0, got 0"
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
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x", encoding="utf-8")
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
    ["memory", "redis://localhost:6379/0", "rediss://cache:6380", "unix:///run/redis.sock?db=1"],
)
def test_valid_stores(store: str) -> None:
    """throttle.store accepts memory and redis://, rediss:// and unix:// URLs."""
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
