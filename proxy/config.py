"""The proxy's typed settings: one YAML file plus environment overrides, validated once.

Every key is optional; unknown keys are errors. Validation never stops at the first problem: all
of them are collected and raised together in one ``ConfigError``, each prefixed with where it came
from (``contoso.yaml: timeouts.connect: ...`` or ``DEFENDER_PROXY_LISTEN: ...``). Environment
variables win over the file. No problem text ever carries a password: URLs are shown through
``redact_url``. The ``throttle`` section's own types and its list of routes live in
``throttle_config``; they are re-exported here.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias
from urllib.parse import SplitResult, parse_qs, urlsplit

import yaml

from proxy.throttle_config import (
    Fallback,
    NestedValueError,
    RouteOverride,
    Throttle,
    effective_routes,
    parse_mode,
    parse_name,
    parse_routes,
    route_policies,
)
from proxy.units import (
    PATH_CHARACTERS,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    shown,
    shown_key,
)

__all__ = [
    "Address",
    "ConfigError",
    "Fallback",
    "Limits",
    "Pool",
    "RouteOverride",
    "Settings",
    "Throttle",
    "Timeouts",
    "Tls",
    "effective_routes",
    "load_settings",
    "parse_settings",
    "redact_url",
    "route_policies",
]


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Address:
    """A socket address to listen on; port 0 asks the OS for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts, in seconds: towards the upstream (connect, read, pool) and callers."""

    connect: float = 5.0
    read: float = 120.0
    #: the longest a caller may take to send its request head, and the longest the proxy waits
    #: for the next bytes of a request body or for the caller to take more of an answer
    caller: float = 30.0
    #: the longest an admitted request waits for a connection from the upstream pool
    pool: float = 5.0
    #: idle keep-alive connections from callers are closed after this
    caller_keepalive: float = 75.0


@dataclass(frozen=True, slots=True)
class Tls:
    """How the upstream's certificate is checked."""

    verify: bool = True
    ca_bundle: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Byte limits on what the proxy accepts and buffers."""

    max_body: int = 32 * 2**20
    error_body_cap: int = 2**20
    max_header_size: int = 16384
    #: caller connections open at once on the proxy port; past it, new ones are closed at once.
    #: 0 (the default) derives the cap from the file-descriptor limit (see ``caller_connection_cap``)
    caller_connections: int = 0


@dataclass(frozen=True, slots=True)
class Pool:
    """The upstream connection pool."""

    max_connections: int = 100
    keepalive: float = 30.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the proxy is configured with; ``upstream`` is a normalised origin."""

    upstream: str = "https://api.security.microsoft.com"
    listen: Address = Address("127.0.0.1", 8080)
    admin_listen: Address = Address("0.0.0.0", 9464)  # noqa: S104 - metrics are scraped from outside
    timeouts: Timeouts = Timeouts()
    log_format: str = "auto"
    log_level: str = "info"
    shutdown_grace: float = 25.0
    tls: Tls = Tls()
    limits: Limits = Limits()
    pool: Pool = Pool()
    throttle: Throttle = Throttle()  # noqa: RUF009 - frozen, so one shared default is safe
    #: source networks allowed to use the proxy port; empty = any caller that can reach it
    allow_from: tuple[str, ...] = ()


# The password runs to the *last* "@": a raw "@", "/" or "#" in it must not leak the tail, so this
# errs toward hiding too much in odd URLs rather than showing a secret.
_USERINFO: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:@/?#]*):.*@")
# redis-py also takes the password as a query parameter.
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_HOSTNAME: Final = re.compile(r"[a-z0-9_\-]{1,63}(?:\.[a-z0-9_\-]{1,63})*\.?\Z")
_ADDRESS: Final = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})\Z")
# URLs are ASCII: anything else (a space, a newline, a control character) is a typo or worse, and
# urlsplit would silently drop a tab or newline in the middle of one.
_URL_TEXT: Final = re.compile(r"[!-~]+\Z")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for logs and error messages."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1:***@", url, count=1))


def _host(text: str) -> str:
    host = text.lower()
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not a valid IPv6 address: {shown(text)}") from None
    elif len(host) > 253 or not _HOSTNAME.match(host):
        # The resolver refuses empty labels and labels over 63 characters (RFC 1035 §2.3.4)
        # with an encoding error, not an OSError: caught here, it cannot stop `run` later.
        raise ValueError(f"not a valid host name: {shown(text)}")
    return host


def _address(value: object) -> Address:
    match = _ADDRESS.match(value) if isinstance(value, str) else None
    if match is None or (match["v6"] is not None and ":" not in match["v6"]):
        raise ValueError(f"expected host:port, got {shown(value)}")
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"port must be 0-65535, got {shown(value)}")
    return Address(_host(match["v6"] or match["host"]), port)


def _url(value: object, expected: str, schemes: tuple[str, ...]) -> tuple[SplitResult, str]:
    """``value`` split as a URL with one of ``schemes``, and its password-free spelling."""
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got a {type(value).__name__}")
    text = value.strip()
    if not _URL_TEXT.match(text):
        problem = "must be printable ASCII without spaces or control characters"
        raise ValueError(f"{problem}, got {shown(redact_url(value))}")
    quoted = shown(redact_url(value))
    try:
        parts = urlsplit(text)
        port = parts.port  # read now so a bad port is a problem here, not a crash later
    except ValueError:
        raise ValueError(f"not a valid URL: {quoted}") from None
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"{expected}, got {quoted}")
    if port == 0:
        raise ValueError(f"port must be 1-65535, got {quoted}")
    if not parts.hostname and parts.scheme.lower() != "unix":
        raise ValueError(f"must name a host, got {quoted}")
    if parts.hostname:
        _host(parts.hostname)
    return parts, quoted


def _upstream(value: object) -> str:
    parts, shown = _url(value, "expected an http:// or https:// URL", ("http", "https"))
    if "@" in parts.netloc:
        # Say nothing of the value itself: all of the userinfo may be a secret.
        raise ValueError("must not carry credentials; the proxy never sends its own")
    if "?" in str(value) or "#" in str(value):
        raise ValueError(f"must not have a query or fragment, got {shown}")
    if parts.path not in ("", "/"):
        raise ValueError(f"must be an origin without a path, got path {parts.path!r}")
    scheme, host = parts.scheme.lower(), _host(str(parts.hostname))
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None and parts.port != {"http": 80, "https": 443}[scheme]:
        netloc = f"{netloc}:{parts.port}"
    return f"{scheme}://{netloc}"


def _store(value: object) -> str:
    if isinstance(value, str) and value.strip() == "memory":
        return "memory"
    expected = (
        "expected 'memory' or a redis://, rediss://, redis+cluster://, rediss+cluster:// "
        "or unix:// URL"
    )
    schemes = ("redis", "rediss", "redis+cluster", "rediss+cluster", "unix")
    parts, shown_url = _url(value, expected, schemes)
    scheme = parts.scheme.lower()
    database = parts.path.strip("/") if scheme != "unix" else ""
    if scheme == "unix" and not parts.path:
        raise ValueError(f"a unix:// URL needs a socket path, got {shown_url}")
    if database and not (database.isascii() and database.isdecimal()):
        raise ValueError(f"the database must be a number, got {shown_url}")
    options = parse_qs(parts.query, keep_blank_values=True)
    for name, given in options.items():
        check = _STORE_OPTIONS.get(name)
        if check is None:
            known = ", ".join(sorted(_STORE_OPTIONS))
            raise ValueError(f"unknown URL option {shown(name)} (known: {known})")
        if len(given) > 1:
            raise ValueError(f"the URL option {name} is given {len(given)} times")
        if name.startswith("ssl_") and not scheme.startswith("rediss"):
            # redis-py hands these only to TLS connections; a plain one fails on them at connect.
            raise ValueError(f"the URL option {name} needs a rediss:// URL, got {shown_url}")
        try:
            check(given[0])
        except ValueError as error:
            raise ValueError(f"the URL option {name}: {error}") from None
    if "db" in options:
        database = options["db"][0]
    if database:
        _database(database)
    if scheme.endswith("+cluster") and database not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0, got {shown_url}")
    return str(value).strip()


#: The highest Redis database index any server can have: its ``databases`` setting is a C int
#: (at most 2**31 - 1) and indexes run from 0 to one below it. Whether the server at hand has
#: that many is known only when it answers SELECT; the log says so then.
MAX_REDIS_DATABASE: Final = 2**31 - 2


def _database(text: str) -> int:
    if not (text.isascii() and text.isdecimal()):
        raise ValueError(f"the database must be a number, got {shown(text)}")
    if len(text) > 10 or int(text) > MAX_REDIS_DATABASE:
        raise ValueError(f"the database must be at most {MAX_REDIS_DATABASE}, got {shown(text)}")
    return int(text)


def _pem_certificates(path: str) -> None:
    """Refuse ``path`` unless it is a readable PEM file with at least one certificate."""
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as error:
        reason = error.reason or str(error)
        raise ValueError(
            f"{shown(path, PATH_CHARACTERS)} holds no PEM certificate ({reason}); expected one or more "
            "-----BEGIN CERTIFICATE----- blocks"
        ) from None
    except OSError as error:
        raise ValueError(
            f"cannot read {shown(path, PATH_CHARACTERS)}: {error.strerror or error}"
        ) from None


def _file(value: str) -> str:
    if not value or "\0" in value:
        raise ValueError(f"expected a file path, got {shown(value)}")
    if not os.path.isfile(value):
        raise ValueError(f"no such file: {shown(value, PATH_CHARACTERS)}")
    return value


def _certificates_file(value: str) -> None:
    _pem_certificates(_file(value))


def _key_file(value: str) -> None:
    _file(value)
    try:
        with open(value, encoding="ascii") as file:
            pem = file.read(1 << 20)
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {shown(value, PATH_CHARACTERS)}: {error}") from None
    if "-----BEGIN" not in pem or "PRIVATE KEY-----" not in pem:
        raise ValueError(f"{shown(value, PATH_CHARACTERS)} is not a PEM private key")


def _flag(value: str) -> None:
    if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise ValueError(f"expected true or false, got {shown(value)}")


def _cert_reqs(value: str) -> None:
    if value.lower() not in ("none", "optional", "required"):
        raise ValueError(f"expected none, optional or required, got {shown(value)}")


def _client_name(value: str) -> None:
    if not re.fullmatch(r"[!-~]{1,64}", value):
        raise ValueError(f"expected 1-64 printable characters, got {shown(value)}")


# The query options a redis-py store URL may carry, each checked as redis-py will read it; any
# other would reach redis-py's connection class as an unexpected argument at the first connect.
_STORE_OPTIONS: Final[dict[str, Callable[[str], object]]] = {
    "db": _database,
    "password": lambda value: None,
    "client_name": _client_name,
    "ssl_ca_certs": _certificates_file,
    "ssl_certfile": _certificates_file,
    "ssl_keyfile": _key_file,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _flag,
}


def _choice(*allowed: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in allowed:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(allowed)}, got {shown(value)}")

    return parse


def _duration(at_most: float, *, positive: bool = True) -> Callable[[object], float]:
    """A duration of at most ``at_most`` seconds, and more than 0 when ``positive``."""

    def parse(value: object) -> float:
        seconds = parse_duration(value, at_most)
        if positive and seconds <= 0:
            raise ValueError(f"must be greater than 0, got {shown(value)}")
        return seconds

    return parse


def _size(at_least: int, at_most: int) -> Callable[[object], int]:
    """A size from ``at_least`` to ``at_most`` bytes."""

    def parse(value: object) -> int:
        size = parse_size(value, at_most)
        if size < at_least:
            raise ValueError(f"must be at least {format_size(at_least)}, got {shown(value)}")
        return size

    return parse


def _whole(at_least: int, at_most: int) -> Callable[[object], int]:
    """A whole number from ``at_least`` to ``at_most``."""

    def parse(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and at_least <= value <= at_most:
            return value
        raise ValueError(
            f"expected a whole number from {at_least} to {at_most}, got {shown(value)}"
        )

    return parse


def _below(ceiling: float, parse: Callable[[object], float]) -> Callable[[object], float]:
    def checked(value: object) -> float:
        seconds = parse(value)
        if seconds >= ceiling:
            raise ValueError(f"must be less than {format_duration(ceiling)}, got {shown(value)}")
        return seconds

    return checked


def _share(value: object) -> float:
    """A fraction of a window: 0 (none) up to, but not including, 1 (all of it)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value)
    raise ValueError(f"expected a number from 0 up to (not including) 1, got {shown(value)}")


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {shown(value)}")


def _ca_bundle(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a file path, got {shown(value)}")
    _pem_certificates(_file(value))
    return value


def _networks(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a list of networks such as ['10.0.0.0/8', '127.0.0.1/32']")
    if len(value) > MAX_NETWORKS:
        raise ValueError(f"at most {MAX_NETWORKS} networks, got {len(value)}")
    networks = []
    for item in value:
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"not a network: {shown(item)} (write e.g. 10.1.0.0/16)") from None
    return tuple(networks)


_Parser = Callable[[object], object]
_Spec: TypeAlias = "_Parser | dict[str, _Spec]"

# One entry per key; a nested dict is a section (a mapping in YAML, a dataclass in Settings).
# Every number has a ceiling (and a floor where 0 would break something): a value past it is
# a typo, and one too large for a float or a C int would crash the proxy later rather than here.
# The README's configuration section lists the same bounds.
_MINUTE: Final = 60.0
_HOUR: Final = 3600.0
_DAY: Final = 86400.0
_KiB: Final = 1 << 10
_MiB: Final = 1 << 20
_GiB: Final = 1 << 30
#: Open files per process can be raised no higher than this on Linux (fs.nr_open's default).
MAX_CALLER_CONNECTIONS: Final = 1 << 20
MAX_UPSTREAM_CONNECTIONS: Final = 10_000
MAX_EXPECTED_REPLICAS: Final = 1_000
MAX_NETWORKS: Final = 1_000

# One entry per key; a nested dict is a section (a mapping in YAML, a dataclass in Settings).
_SCHEMA: Final[dict[str, _Spec]] = {
    "upstream": _upstream,
    "listen": _address,
    "admin_listen": _address,
    "timeouts": {
        "connect": _duration(5 * _MINUTE),
        "read": _duration(_HOUR),
        "caller": _duration(_HOUR),
        "pool": _duration(10 * _MINUTE),
        "caller_keepalive": _duration(_HOUR),
    },
    "log_format": _choice("json", "console", "auto"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "shutdown_grace": _duration(_HOUR, positive=False),
    "tls": {"verify": _boolean, "ca_bundle": _ca_bundle},
    "limits": {
        "max_body": _size(1, 16 * _GiB),
        "error_body_cap": _size(1, 64 * _MiB),
        "max_header_size": _size(_KiB, _MiB),
        "caller_connections": _whole(1, MAX_CALLER_CONNECTIONS),
    },
    "pool": {
        "max_connections": _whole(1, MAX_UPSTREAM_CONNECTIONS),
        "keepalive": _duration(_HOUR, positive=False),
    },
    "allow_from": _networks,
    "throttle": {
        "store": _store,
        "namespace": parse_name,
        "mode": parse_mode,
        "max_wait": _duration(_HOUR, positive=False),
        "store_timeout": _duration(5.0),
        "margin": _below(10.0, _duration(math.inf, positive=False)),
        "max_pause": _duration(_DAY),
        "bulk_reserve": _share,
        "fallback": {
            "expected_replicas": _whole(1, MAX_EXPECTED_REPLICAS),
            "cooldown": _duration(_HOUR),
        },
        "routes": parse_routes,
    },
}

_ENVIRONMENT: Final[dict[str, tuple[str, ...]]] = {
    "DEFENDER_PROXY_UPSTREAM": ("upstream",),
    "DEFENDER_PROXY_LISTEN": ("listen",),
    "DEFENDER_PROXY_ADMIN_LISTEN": ("admin_listen",),
    "DEFENDER_PROXY_STORE": ("throttle", "store"),
    "DEFENDER_PROXY_LOG_FORMAT": ("log_format",),
}


def _leaf(path: tuple[str, ...]) -> _Parser:
    spec: _Spec = _SCHEMA
    for key in path:
        assert isinstance(spec, dict)
        spec = spec[key]
    assert not isinstance(spec, dict)
    return spec


def _parse(data: object, source: str, environ: Mapping[str, str], problems: list[str]) -> Settings:
    # Any: each value has the type its key's parser returns, which _SCHEMA pairs up.
    values: dict[tuple[str, ...], Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    failed: set[tuple[str, ...]] = set()

    def put(path: tuple[str, ...], parse: _Parser, raw: object, origin: str) -> None:
        try:
            values[path] = parse(raw)
        except NestedValueError as error:  # a list of mappings: each problem has its own path
            problems.extend(f"{origin}{where}: {text}" for where, text in error.problems)
            failed.add(path)
        except ValueError as error:
            problems.append(f"{origin}: {error}")
            failed.add(path)
        else:
            origins[path] = origin
            failed.discard(path)

    def walk(data: object, path: tuple[str, ...], schema: Mapping[str, _Spec]) -> None:
        if data is None:  # an empty file or an empty section: all defaults
            return
        if not isinstance(data, Mapping):
            where = ": ".join((source, ".".join(path))) if path else source
            problems.append(f"{where}: expected a mapping, got a {type(data).__name__}")
            return
        for key, raw in data.items():
            spec = schema.get(key) if isinstance(key, str) else None
            dotted = ".".join((*path, shown_key(key)))
            if spec is None:
                problems.append(f"{source}: {dotted}: unknown key (known: {', '.join(schema)})")
            elif isinstance(spec, dict):
                walk(raw, (*path, key), spec)
            else:
                put((*path, key), spec, raw, f"{source}: {dotted}")

    walk(data, (), _SCHEMA)
    for variable, path in _ENVIRONMENT.items():
        # An empty variable counts as unset, as compose files and shells often leave them.
        if raw := environ.get(variable):
            put(path, _leaf(path), raw, variable)

    def build(defaults: Any, schema: Mapping[str, _Spec], path: tuple[str, ...]) -> Any:
        changes = {
            key: build(getattr(defaults, key), spec, (*path, key))
            if isinstance(spec, dict)
            else values[(*path, key)]
            for key, spec in schema.items()
            if isinstance(spec, dict) or (*path, key) in values
        }
        return replace(defaults, **changes)

    settings: Settings = build(Settings(), _SCHEMA, ())

    # Checks across keys, skipped where a value involved is itself invalid.
    listen, admin = settings.listen, settings.admin_listen
    if listen.port and listen.port == admin.port and not failed & {("listen",), ("admin_listen",)}:
        where = origins.get(("admin_listen",)) or origins[("listen",)]
        problems.append(f"{where}: listen ({listen}) and admin_listen ({admin}) share a port")
    if not settings.tls.verify and settings.tls.ca_bundle is not None:
        problems.append(f"{source}: tls: verify is false, so ca_bundle would be ignored; drop one")
    if problems:
        raise ConfigError(problems)
    return settings


def parse_settings(
    data: object, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from loaded YAML ``data`` (None: defaults), ``source`` naming it in problems."""
    return _parse(data, source, os.environ if environ is None else environ, [])


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the YAML file at ``path`` and the environment; raises ``ConfigError``.

    Without ``path``, ``DEFENDER_PROXY_CONFIG`` names the file; without that, no file is read.
    """
    env = os.environ if environ is None else environ
    path = path or env.get("DEFENDER_PROXY_CONFIG")
    problems: list[str] = []
    data: object = None
    try:
        if path:
            with open(path, encoding="utf-8") as file:
                data = yaml.safe_load(file)
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        problems.append(f"{path}: cannot read the config file: {reason}")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        problems.append(f"{path}: invalid YAML{where}: {reason}")
    except RecursionError:
        problems.append(f"{path}: invalid YAML: nested too deeply")
    except (ValueError, ArithmeticError) as error:
        # The loader's own conversions: a date that does not exist (2024-02-30), an integer of
        # more digits than Python converts (sys.get_int_max_str_digits).
        problems.append(f"{path}: invalid YAML: {shown(str(error))}")
    # Keep going so environment problems are reported alongside a file problem.
    return _parse(data, path or "<defaults>", env, problems)
