"""The proxy's typed settings: one YAML file plus environment overrides, validated once.

Every key is optional; unknown keys are errors. Validation never stops at the first problem: all
of them are collected and raised together in one ``ConfigError``, each prefixed with where it came
from (``contoso.yaml: timeouts.connect: ...`` or ``DEFENDER_PROXY_LISTEN: ...``). Environment
variables win over the file. No problem text ever carries a password: URLs are shown through
``redact_url``. The ``throttle`` section's own types and its list of routes live in
``throttle_config``, addresses, URLs and the files they name in ``endpoints``; both are
re-exported here. The file itself is read and parsed by ``config_file``, imported only when there
is a file to read. Every number has bounds (listed in the README), and no value, however hostile,
makes validation raise anything but ``ConfigError``.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

from proxy.allocator import ALLOCATORS
from proxy.credentials import (
    Credentials,
    from_environment,
    parse_credentials,
    restricts,
    with_scope,
)
from proxy.endpoints import (
    Address,
    parse_address,
    parse_ca_bundle,
    parse_store,
    parse_upstream,
    redact_url,
)
from proxy.listen_tls import ListenTls, parse_listen_tls
from proxy.throttle_config import (
    MAX_IDENTITIES,
    Fallback,
    Identities,
    NestedValueError,
    RouteOverride,
    Throttle,
    effective_routes,
    parse_identity_names,
    parse_mode,
    parse_name,
    parse_routes,
    route_policies,
    route_scopes,
)
from proxy.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    shown,
    shown_key,
)
from proxy.upstreams import DEFAULT_NAME, Upstream, parse_upstreams, shorthand

__all__ = [
    "Address",
    "ConfigError",
    "Credentials",
    "Fallback",
    "Identities",
    "Limits",
    "ListenTls",
    "Pool",
    "RouteOverride",
    "Settings",
    "Throttle",
    "Timeouts",
    "Tls",
    "Upstream",
    "effective_routes",
    "load_settings",
    "parse_settings",
    "redact_url",
    "route_policies",
    "route_scopes",
]


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
    """Limits on what the proxy accepts, buffers and keeps."""

    max_body: int = 32 * 2**20
    error_body_cap: int = 2**20
    max_header_size: int = 16384
    #: request bodies up to this size are read whole before an upstream connection is taken
    request_buffer: int = 64 * 2**10
    #: a Graph ``$batch`` body is read whole and parsed to admit each inner request; over this
    #: size it is refused with 413 (see ``proxy.batch``)
    batch_body: int = 2**20
    #: caller connections open at once on the proxy port; past it, new ones are closed at once.
    #: 0 (the default) derives the cap from the file-descriptor limit (see ``caller_connection_cap``)
    caller_connections: int = 0
    #: error answers kept for the admin port's ``/errors`` (``proxy.recent_errors``); 0: none
    recent_errors: int = 200


@dataclass(frozen=True, slots=True)
class Pool:
    """The upstream connection pool."""

    max_connections: int = 100
    keepalive: float = 30.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the proxy is configured with; ``upstream`` is a normalised origin.

    ``upstreams`` lists the origins of a process that serves several; empty, the process serves
    the one that ``upstream`` + ``listen`` describe. ``listeners`` is either, as served.
    """

    upstream: str = "https://api.security.microsoft.com"
    listen: Address = Address("127.0.0.1", 8080)  # noqa: RUF009 - frozen, so shared safely
    upstreams: tuple[Upstream, ...] = ()
    admin_listen: Address = Address("0.0.0.0", 9464)  # noqa: S104, RUF009 - scraped from outside
    timeouts: Timeouts = Timeouts()
    log_format: str = "auto"
    log_level: str = "info"
    shutdown_grace: float = 25.0
    #: the memory allocator ``run`` starts on: auto (jemalloc where found), jemalloc, system
    allocator: str = "auto"
    tls: Tls = Tls()
    limits: Limits = Limits()
    pool: Pool = Pool()
    throttle: Throttle = Throttle()  # noqa: RUF009 - frozen, so one shared default is safe
    #: source networks allowed to use the proxy port; empty = any caller that can reach it
    allow_from: tuple[str, ...] = ()
    #: paging links (@odata.nextLink, @odata.deltaLink) on the upstream's origin are rewritten to
    #: the origin the caller used, so every page of a list goes through the proxy
    rewrite_links: bool = True
    #: HTTPS on every proxy port whose upstream entry names no ``listen_tls`` of its own
    #: (already resolved into ``upstreams`` by the parser)
    listen_tls: ListenTls | None = None
    #: the app credential of every listener whose upstream entry names none of its own (already
    #: resolved into ``upstreams``); for the shorthand, its scope is settled for ``upstream``
    credentials: Credentials | None = None

    @property
    def listeners(self) -> tuple[Upstream, ...]:
        """Every upstream served, each on its own listener: ``upstreams``, or the shorthand's one."""
        return self.upstreams or (
            shorthand(self.upstream, self.listen, self.listen_tls, self.credentials),
        )


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


def _switch(value: object) -> bool:
    """true or false, also spelled as a string (an environment variable is one)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"expected true or false, got {shown(value)}")


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
#: Records of recent errors kept (a few hundred bytes each): enough for a support case, and bounded.
MAX_RECENT_ERRORS: Final = 10_000

# One entry per key; a nested dict is a section (a mapping in YAML, a dataclass in Settings).
_SCHEMA: Final[dict[str, _Spec]] = {
    "upstream": parse_upstream,
    "listen": parse_address,
    "upstreams": parse_upstreams,
    "admin_listen": parse_address,
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
    "allocator": _choice(*ALLOCATORS),
    "tls": {"verify": _boolean, "ca_bundle": parse_ca_bundle},
    "limits": {
        "max_body": _size(1, 16 * _GiB),
        "error_body_cap": _size(1, 64 * _MiB),
        "max_header_size": _size(_KiB, _MiB),
        "request_buffer": _size(1, 64 * _MiB),
        "batch_body": _size(_KiB, 64 * _MiB),
        "caller_connections": _whole(1, MAX_CALLER_CONNECTIONS),
        "recent_errors": _whole(0, MAX_RECENT_ERRORS),
    },
    "pool": {
        "max_connections": _whole(1, MAX_UPSTREAM_CONNECTIONS),
        "keepalive": _duration(_HOUR, positive=False),
    },
    "allow_from": _networks,
    "rewrite_links": _switch,
    "listen_tls": parse_listen_tls,
    "credentials": parse_credentials,
    "throttle": {
        "store": parse_store,
        "namespace": parse_name,
        "mode": parse_mode,
        "max_wait": _duration(_HOUR, positive=False),
        "store_timeout": _duration(5.0),
        "margin": _below(10.0, _duration(math.inf, positive=False)),
        "max_pause": _duration(_DAY),
        "bulk_reserve": _share,
        "fair_share": _switch,
        "fallback": {
            "expected_replicas": _whole(1, MAX_EXPECTED_REPLICAS),
            "cooldown": _duration(_HOUR),
        },
        "routes": parse_routes,
        "identities": {
            "max": _whole(1, MAX_IDENTITIES),
            "names": parse_identity_names,
        },
    },
}

#: The key of an ``upstreams`` entry that each shorthand key becomes.
_ENTRY_KEY: Final = {"upstream": "origin", "listen": "listen"}

_ENVIRONMENT: Final[dict[str, tuple[str, ...]]] = {
    "DEFENDER_PROXY_UPSTREAM": ("upstream",),
    "DEFENDER_PROXY_LISTEN": ("listen",),
    "DEFENDER_PROXY_ADMIN_LISTEN": ("admin_listen",),
    "DEFENDER_PROXY_STORE": ("throttle", "store"),
    "DEFENDER_PROXY_LOG_FORMAT": ("log_format",),
    "DEFENDER_PROXY_REWRITE_LINKS": ("rewrite_links",),
    "DEFENDER_PROXY_ALLOCATOR": ("allocator",),
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
    #: where each key was last given, valid or not
    given: dict[tuple[str, ...], str] = {}

    def put(path: tuple[str, ...], parse: _Parser, raw: object, origin: str) -> None:
        given[path] = origin
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
            if not path and key == "credentials":
                sections["credentials"] = raw  # parsed below, with the AZURE_* variables over it
            elif spec is None:
                problems.append(f"{source}: {dotted}: unknown key (known: {', '.join(schema)})")
            elif isinstance(spec, dict):
                walk(raw, (*path, key), spec)
            else:
                put((*path, key), spec, raw, f"{source}: {dotted}")

    sections: dict[str, object] = {}
    walk(data, (), _SCHEMA)
    for variable, path in _ENVIRONMENT.items():
        # An empty variable counts as unset, as compose files and shells often leave them.
        if raw := environ.get(variable):
            put(path, _leaf(path), raw, variable)
    section, given_by, secret = from_environment(sections.get("credentials"), environ)
    if section is not None:
        origin = "AZURE_* variables" if "credentials" not in sections else source
        origin = f"{origin}: credentials"
        given[("credentials",)] = origin
        try:
            values[("credentials",)] = parse_credentials(section, given_by, secret)
        except NestedValueError as error:
            # A value a variable gave is named by its variable, as DEFENDER_PROXY_* values are.
            problems.extend(
                f"{given_by[where[1:]]}: {text}"
                if where[1:] in given_by
                else f"{origin}{where}: {text}"
                for where, text in error.problems
            )
        except ValueError as error:
            problems.append(f"{origin}: {error}")

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
    if settings.listen_tls is not None:
        # The top-level pair is every listener's unless its entry names its own.
        default = settings.listen_tls
        upstreams = tuple(
            replace(upstream, listen_tls=upstream.listen_tls or default)
            for upstream in settings.upstreams
        )
        settings = replace(settings, upstreams=upstreams)

    settings = _settle_credentials(settings, given, problems)

    # Checks across keys, skipped where a value involved is itself invalid.
    listen, admin = settings.listen, settings.admin_listen
    if ("upstreams",) in given:
        _check_upstreams(settings, given, failed, problems)
    elif (
        listen.port and listen.port == admin.port and not failed & {("listen",), ("admin_listen",)}
    ):
        where = origins.get(("admin_listen",)) or origins[("listen",)]
        problems.append(f"{where}: listen ({listen}) and admin_listen ({admin}) share a port")
    if not settings.tls.verify and settings.tls.ca_bundle is not None:
        problems.append(f"{source}: tls: verify is false, so ca_bundle would be ignored; drop one")
    if problems:
        raise ConfigError(problems)
    return settings


def _settle_credentials(
    settings: Settings, given: Mapping[tuple[str, ...], str], problems: list[str]
) -> Settings:
    """Each listener's credentials with their scope settled for its origin (the top-level
    section is every entry's without its own), and checked against who may reach it.

    A problem names the section that holds the credentials: an entry's own, or the top-level
    one (and then the entry it was settled for)."""
    top = settings.credentials
    where = given.get(("credentials",), "credentials")
    #: the key path of the section each listener's credentials come from, by upstream name
    held: dict[str, str] = {}
    if settings.upstreams:
        upstreams = []
        for index, upstream in enumerate(settings.upstreams):
            credentials = upstream.credentials or top
            if credentials is not None:
                own = upstream.credentials is not None
                at = f"{given[('upstreams',)]}[{index}].credentials" if own else where
                held[upstream.name] = at
                try:
                    credentials = with_scope(credentials, upstream.origin)
                except ValueError as error:
                    whose = "" if own else f"upstreams[{index}] ({upstream.name}), "
                    problems.append(f"{at}.scope: required for {whose}{upstream.origin}: {error}")
            upstreams.append(replace(upstream, credentials=credentials))
        settings = replace(settings, upstreams=tuple(upstreams))
    elif top is not None:
        held[DEFAULT_NAME] = where
        try:
            settings = replace(settings, credentials=with_scope(top, settings.upstream))
        except ValueError as error:
            problems.append(f"{where}.scope: required for {settings.upstream}: {error}")
    holders = [upstream for upstream in settings.listeners if upstream.credentials is not None]
    if holders and not settings.tls.verify:
        problems.append(
            f"{given.get(('tls', 'verify'), 'tls.verify')}: false, but credentials are given: the app's secret "
            "would go to an authority whose certificate is not checked; trust a private CA with "
            "tls.ca_bundle instead"
        )
    for upstream in holders:
        parts = urlsplit(upstream.origin)
        if parts.scheme == "http" and not Address(parts.hostname or "", 0).loopback:
            problems.append(
                f"{where}: {upstream.origin} ({upstream.name}) is plain HTTP beyond this host: "
                "the tokens the proxy mints would cross the network unencrypted; use https://"
            )
    if not restricts(settings.allow_from):
        for upstream in holders:
            if not upstream.listen.loopback:
                assert upstream.credentials is not None
                problems.append(
                    f"{held[upstream.name]}: the proxy port {upstream.listen} ({upstream.name}) "
                    "can be reached from beyond this host, and every caller that reaches it acts "
                    f"as app {upstream.credentials.client_id}: restrict callers with allow_from "
                    "(e.g. [10.1.0.0/16]) or listen on 127.0.0.1"
                )
    return settings


def _check_upstreams(
    settings: Settings,
    given: Mapping[tuple[str, ...], str],
    failed: set[tuple[str, ...]],
    problems: list[str],
) -> None:
    """``upstreams`` against the shorthand's keys and ``admin_listen``."""
    upstreams = given[("upstreams",)]
    # From the file or the environment alike: neither may quietly win over the other.
    problems.extend(
        f"{given[(key,)]}: {key} and upstreams are given together: {key} is the shorthand for "
        f"one upstream; with upstreams, give each entry its own {entry_key}"
        for key, entry_key in _ENTRY_KEY.items()
        if (key,) in given
    )
    admin = settings.admin_listen
    if failed & {("upstreams",), ("admin_listen",)} or not admin.port:
        return
    for index, upstream in enumerate(settings.upstreams):
        if upstream.listen.port == admin.port:
            problems.append(
                f"{upstreams}[{index}].listen: {upstream.listen} and admin_listen ({admin}) "
                "share a port"
            )


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
    if path:
        # Imported only to read a file: a proxy on its embedded defaults never loads PyYAML.
        from proxy.config_file import read_document

        data = read_document(path, problems)
    # Keep going so environment problems are reported alongside a file problem.
    return _parse(data, path or "<defaults>", env, problems)
