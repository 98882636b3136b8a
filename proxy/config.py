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
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias, TypeVar
from urllib.parse import SplitResult, urlsplit

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
from proxy.units import format_duration, parse_duration, parse_size

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
    #: request bodies up to this size are read whole before an upstream connection is taken
    request_buffer: int = 64 * 2**10
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
_HOSTNAME: Final = re.compile(r"^[a-z0-9_.\-]+$")
_ADDRESS: Final = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)$")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for logs and error messages."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1:***@", url, count=1))


def _host(text: str) -> str:
    host = text.lower()
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not a valid IPv6 address: {text!r}") from None
    elif not _HOSTNAME.match(host):
        raise ValueError(f"not a valid host name: {text!r}")
    return host


def _address(value: object) -> Address:
    match = _ADDRESS.match(value) if isinstance(value, str) else None
    if match is None or (match["v6"] is not None and ":" not in match["v6"]):
        raise ValueError(f"expected host:port, got {value!r}")
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"port must be 0-65535, got {value!r}")
    return Address(_host(match["v6"] or match["host"]), port)


def _url(value: object, expected: str, schemes: tuple[str, ...]) -> tuple[SplitResult, str]:
    """``value`` split as a URL with one of ``schemes``, and its password-free spelling."""
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got a {type(value).__name__}")
    shown = repr(redact_url(value))
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # read now so a bad port is a problem here, not a crash later
    except ValueError:
        raise ValueError(f"not a valid URL: {shown}") from None
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"{expected}, got {shown}")
    if port == 0:
        raise ValueError(f"port must be 1-65535, got {shown}")
    if not parts.hostname and parts.scheme.lower() != "unix":
        raise ValueError(f"must name a host, got {shown}")
    return parts, shown


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
    parts, shown = _url(value, expected, schemes)
    database = parts.path.strip("/")
    if parts.scheme.lower().endswith("+cluster") and database not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0, got {shown}")
    if parts.scheme.lower() == "unix" and not parts.path:
        raise ValueError(f"a unix:// URL needs a socket path, got {shown}")
    if parts.scheme.lower() != "unix" and database and not database.isdecimal():
        raise ValueError(f"the database must be a number, got {shown}")
    return str(value).strip()


def _choice(*allowed: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in allowed:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")

    return parse


_Number = TypeVar("_Number", int, float)


def _positive(parse: Callable[[object], _Number]) -> Callable[[object], _Number]:
    def checked(value: object) -> _Number:
        number = parse(value)
        if number <= 0:
            raise ValueError(f"must be greater than 0, got {value!r}")
        return number

    return checked


def _below(ceiling: float, parse: Callable[[object], float]) -> Callable[[object], float]:
    def checked(value: object) -> float:
        seconds = parse(value)
        if seconds >= ceiling:
            raise ValueError(f"must be less than {format_duration(ceiling)}, got {value!r}")
        return seconds

    return checked


def _at_most(ceiling: float, parse: Callable[[object], float]) -> Callable[[object], float]:
    def checked(value: object) -> float:
        seconds = parse(value)
        if seconds > ceiling:
            raise ValueError(f"must be at most {format_duration(ceiling)}, got {value!r}")
        return seconds

    return checked


def _share(value: object) -> float:
    """A fraction of a window: 0 (none) up to, but not including, 1 (all of it)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value)
    raise ValueError(f"expected a number from 0 up to (not including) 1, got {value!r}")


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {value!r}")


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"expected a whole number of at least 1, got {value!r}")


def _ca_bundle(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a file path, got {value!r}")
    if not os.path.isfile(value):
        raise ValueError(f"no such file: {value!r}")
    return value


def _networks(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a list of networks such as ['10.0.0.0/8', '127.0.0.1/32']")
    networks = []
    for item in value:
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"not a network: {item!r} (write e.g. 10.1.0.0/16)") from None
    return tuple(networks)


_Parser = Callable[[object], object]
_Spec: TypeAlias = "_Parser | dict[str, _Spec]"

# One entry per key; a nested dict is a section (a mapping in YAML, a dataclass in Settings).
_SCHEMA: Final[dict[str, _Spec]] = {
    "upstream": _upstream,
    "listen": _address,
    "admin_listen": _address,
    "timeouts": {
        "connect": _positive(parse_duration),
        "read": _positive(parse_duration),
        "caller": _positive(parse_duration),
        "pool": _positive(parse_duration),
        "caller_keepalive": _positive(parse_duration),
    },
    "log_format": _choice("json", "console", "auto"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "shutdown_grace": parse_duration,
    "tls": {"verify": _boolean, "ca_bundle": _ca_bundle},
    "limits": {
        "max_body": _positive(parse_size),
        "error_body_cap": _positive(parse_size),
        "max_header_size": _positive(parse_size),
        "request_buffer": _positive(parse_size),
        "caller_connections": _count,
    },
    "pool": {"max_connections": _count, "keepalive": parse_duration},
    "allow_from": _networks,
    "throttle": {
        "store": _store,
        "namespace": parse_name,
        "mode": parse_mode,
        "max_wait": parse_duration,
        "store_timeout": _at_most(5.0, _positive(parse_duration)),
        "margin": _below(10.0, parse_duration),
        "max_pause": _positive(parse_duration),
        "bulk_reserve": _share,
        "fallback": {"expected_replicas": _count, "cooldown": _positive(parse_duration)},
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
            dotted = ".".join((*path, str(key)))
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
    # Keep going so environment problems are reported alongside a file problem.
    return _parse(data, path or "<defaults>", env, problems)
