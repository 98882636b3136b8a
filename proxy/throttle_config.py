"""The ``throttle`` section of the settings: the shared quota's knobs and the route overrides.

``config`` owns the generic machinery (the schema walk, the environment, ``ConfigError``) and wires
the parsers here into its schema; this module owns what the section means: its frozen dataclasses,
the validation of ``throttle.routes`` (a list, so its problems carry paths such as
``[2].match[0]``), ``throttle.identities`` (how many callers get quotas of their own, and the
names metrics show them by), and the views the quota code needs: ``effective_routes`` (the route
table, catalogue plus overrides), ``route_policies`` (each route's priority and mode) and
``route_scopes`` (whom each route's quota belongs to).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final, TypeVar

from proxy.catalogue import CATALOGUE, OTHER, RouteSpec
from proxy.identity import ANONYMOUS, APP, SCOPES, TENANT, is_guid
from proxy.identity import OTHER as OTHER_IDENTITY
from proxy.routing import PatternError, compile_pattern
from proxy.units import Limit, format_duration, parse_limit, shown, shown_key

INTERACTIVE: Final = "interactive"
BULK: Final = "bulk"
PRIORITIES: Final = (INTERACTIVE, BULK)
ENFORCE: Final = "enforce"
SHADOW: Final = "shadow"
MODES: Final = (ENFORCE, SHADOW)

# Namespaces and route names end up in Redis keys (inside a {hash tag}) and in metric labels, so
# the alphabet excludes braces, colons and anything a label or a key would need escaped.
_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
#: Bounds on ``throttle.routes``: entries, patterns and limits per entry, characters per pattern.
#: Generous for a catalogue of about a hundred routes; they keep the router's one regular
#: expression and the per-route metric children to a size worth compiling at start-up.
MAX_ROUTES: Final = 1_000
MAX_PATTERNS: Final = 100
MAX_PATTERN_LENGTH: Final = 1_000
MAX_LIMITS: Final = 16
_ROUTE_KEYS: Final = ("name", "match", "limits", "priority", "mode", "per")
#: Routes whose quota Microsoft documents per tenant (advanced hunting); the rest default to
#: per application + tenant.
TENANT_ROUTES: Final = frozenset(
    {"advancedqueries.run", "advancedhunting.run", "graph.runHuntingQuery"}
)
#: Bounds on ``throttle.identities``: distinct identities per replica, and names in the label map
#: (each name is a label value on the quota metrics, so the map bounds their series).
MAX_IDENTITIES: Final = 1_000_000
MAX_IDENTITY_NAMES: Final = 100
_CATALOGUE_NAMES: Final = frozenset(spec.name for spec in CATALOGUE)
_Problems = list[tuple[str, str]]
_T = TypeVar("_T")


class NestedValueError(ValueError):
    """Several problems inside one structured value, each as (path below the key, message)."""

    def __init__(self, problems: _Problems) -> None:
        super().__init__("; ".join(f"{where}: {text}" for where, text in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Fallback:
    """The breaker in front of the shared store, and the local share used while it is open."""

    expected_replicas: int = 3
    cooldown: float = 5.0


@dataclass(frozen=True, slots=True)
class RouteOverride:
    """A route added to the catalogue, or changes to a catalogue entry of the same name.

    ``None`` keeps what the catalogue has (``match``, ``limits``), or means ``interactive``
    (``priority``) or the section's mode (``mode``).
    """

    name: str
    match: tuple[str, ...] | None = None
    limits: tuple[Limit, ...] | None = None
    priority: str | None = None
    mode: str | None = None
    per: str | None = None


@dataclass(frozen=True, slots=True)
class Identities:
    """How many callers get quotas of their own, and the names metrics show them by."""

    max: int = 1000
    #: label name → tenant or app id (a lower-case GUID)
    names: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Throttle:
    """The shared quota: where its state lives, how it waits, and which routes it knows."""

    store: str = "memory"
    namespace: str = "default"
    mode: str = ENFORCE
    max_wait: float = 30.0
    store_timeout: float = 0.05
    margin: float = 0.5
    max_pause: float = 300.0
    bulk_reserve: float = 0.2
    #: callers waiting on one quota take its queue in turns (``proxy.quota.fair``)
    fair_share: bool = True
    fallback: Fallback = Fallback()
    routes: tuple[RouteOverride, ...] = ()
    identities: Identities = Identities()


def parse_name(value: object) -> str:
    """A namespace or route name: 1–64 characters of ``A-Z a-z 0-9 _ . -``."""
    if isinstance(value, str) and _NAME.match(value):
        return value
    raise ValueError(f"expected 1-64 characters of A-Z a-z 0-9 _ . -, got {shown(value)}")


def _choice(allowed: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in allowed:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(allowed)}, got {shown(value)}")

    return parse


parse_mode: Final = _choice(MODES)
parse_priority: Final = _choice(PRIORITIES)
parse_scope: Final = _choice(SCOPES)


def parse_identity_names(value: object) -> tuple[tuple[str, str], ...]:
    """``throttle.identities.names``: label name → tenant or app id; all problems at once."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError(
            f"expected a mapping of name: tenant or app id, got a {type(value).__name__}"
        )
    if len(value) > MAX_IDENTITY_NAMES:
        raise ValueError(f"at most {MAX_IDENTITY_NAMES} names, got {len(value)}")
    problems: _Problems = []
    names: list[tuple[str, str]] = []
    named: dict[str, str] = {}
    for key, guid in value.items():
        try:
            name = parse_name(key)
        except ValueError as error:
            # Said at the map itself: a key that is not a name (":", say) would garble the path.
            problems.append(("", f"a name: {error}"))
            continue
        where = f".{name}"
        if name in (OTHER_IDENTITY, ANONYMOUS):
            problems.append((where, f"{name!r} is the label of identities no name covers"))
        if not is_guid(guid):
            problems.append((where, f"expected a tenant or app id (a GUID), got {shown(guid)}"))
            continue
        assert isinstance(guid, str)
        guid = guid.lower()
        if guid in named:
            problems.append((where, f"{guid} is already named {named[guid]!r}"))
        named.setdefault(guid, name)
        names.append((name, guid))
    if problems:
        raise NestedValueError(problems)
    return tuple(names)


def parse_routes(value: object) -> tuple[RouteOverride, ...]:
    """``throttle.routes``; every problem in the list is raised at once as ``NestedValueError``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"expected a list of routes, got a {type(value).__name__}")
    if len(value) > MAX_ROUTES:
        raise ValueError(f"at most {MAX_ROUTES} routes, got {len(value)}")
    problems: _Problems = []
    routes: list[RouteOverride] = []
    first: dict[str, int] = {}
    for index, entry in enumerate(value):
        route = _route(entry, f"[{index}]", problems)
        if route is None:
            continue
        if route.name in first:
            again = f"{route.name!r} is already routes[{first[route.name]}]"
            problems.append((f"[{index}].name", again))
        first.setdefault(route.name, index)
        routes.append(route)
    if problems:
        raise NestedValueError(problems)
    return tuple(routes)


def _route(entry: object, where: str, problems: _Problems) -> RouteOverride | None:
    """The entry at ``where``, noting its problems; None if it has no valid name to go by."""
    if not isinstance(entry, Mapping):
        problems.append((where, f"expected a mapping, got a {type(entry).__name__}"))
        return None
    for key in entry:
        if key not in _ROUTE_KEYS:
            known = ", ".join(_ROUTE_KEYS)
            problems.append((f"{where}.{shown_key(key)}", f"unknown key (known: {known})"))

    def field(key: str, parse: Callable[[object, str, _Problems], _T]) -> _T | None:
        raw = entry.get(key)  # null is the same as leaving the key out
        return None if raw is None else parse(raw, f"{where}.{key}", problems)

    name = field("name", _checked(parse_name))
    match = field("match", _patterns)
    limits = field("limits", _limits)
    priority = field("priority", _checked(parse_priority))
    mode = field("mode", _checked(parse_mode))
    per = field("per", _checked(parse_scope))
    given = {key for key in ("match", "limits") if entry.get(key) is not None}
    if entry.get("name") is None:
        problems.append((f"{where}.name", "required: every route needs a name"))
    elif name == OTHER:
        # The router adds `other` itself, after every route, with the default limits.
        problems.extend(
            (
                f"{where}.{key}",
                "'other' is whatever no route matches: set only priority, mode or per",
            )
            for key in sorted(given)
        )
    elif name is not None and name not in _CATALOGUE_NAMES:
        problems.extend(
            (f"{where}.{key}", f"required: {name!r} is not a catalogue route")
            for key in ("match", "limits")
            if key not in given
        )
    # With problems the override is only used for its name: the list as a whole is refused.
    return None if name is None else RouteOverride(name, match, limits, priority, mode, per)


def _checked(
    parse: Callable[[object], _T],
) -> Callable[[object, str, _Problems], _T | None]:
    def checked(raw: object, where: str, problems: _Problems) -> _T | None:
        try:
            return parse(raw)
        except ValueError as error:
            problems.append((where, str(error)))
            return None

    return checked


def _items(raw: object, where: str, what: str, most: int, problems: _Problems) -> list[object]:
    """``raw`` as a list of 1 to ``most`` items, or [] after noting why it is not one."""
    if not isinstance(raw, list):
        problems.append((where, f"expected a list of {what}, got a {type(raw).__name__}"))
        return []
    if not raw:
        problems.append((where, f"expected at least one of {what}, got an empty list"))
    if len(raw) > most:
        problems.append((where, f"at most {most} {what}, got {len(raw)}"))
        return []
    return raw


def _patterns(raw: object, where: str, problems: _Problems) -> tuple[str, ...]:
    patterns: list[str] = []
    for index, item in enumerate(_items(raw, where, "patterns", MAX_PATTERNS, problems)):
        if not isinstance(item, str):
            message = f"expected a pattern like 'GET /api/machines/{{id}}', got {shown(item)}"
            problems.append((f"{where}[{index}]", message))
            continue
        if len(item) > MAX_PATTERN_LENGTH or not item.isprintable():
            message = (
                f"expected at most {MAX_PATTERN_LENGTH} printable characters "
                f"(no newline or other control character), got {shown(item)}"
            )
            problems.append((f"{where}[{index}]", message))
            continue
        try:
            compile_pattern(item)
        except PatternError as error:
            problems.append((f"{where}[{index}]", str(error)))
        else:
            patterns.append(item.strip())
    return tuple(patterns)


def _limits(raw: object, where: str, problems: _Problems) -> tuple[Limit, ...]:
    limits: list[Limit] = []
    windows: dict[str, int] = {}
    for index, item in enumerate(_items(raw, where, "limits", MAX_LIMITS, problems)):
        try:
            limit = parse_limit(item)
        except ValueError as error:
            problems.append((f"{where}[{index}]", str(error)))
            continue
        # Keyed by the window's name: that names its metric series and RateLimit field.
        window = format_duration(limit.window)
        if window in windows:
            # Two counts for one window: only the smaller would ever bind, so one is a mistake.
            first = f"limits[{windows[window]}]"
            problems.append((f"{where}[{index}]", f"{first} already limits the {window} window"))
        windows.setdefault(window, index)
        limits.append(limit)
    return tuple(limits)


def effective_routes(
    throttle: Throttle, catalogue: tuple[RouteSpec, ...] = CATALOGUE
) -> tuple[RouteSpec, ...]:
    """The route table: new routes first (in the order given), then ``catalogue``, overridden.

    The router takes the first match, so a new route wins over any catalogue entry it overlaps;
    a catalogue entry keeps its place whatever of its ``match`` or ``limits`` is replaced.
    Unmatched requests still fall into ``other``, which the router adds itself. An override of a
    built-in route that ``catalogue`` does not hold (a Graph route for a Defender upstream) is
    left out: it is no error, the same config serving several upstreams.
    """
    overrides = {route.name: route for route in throttle.routes}
    added: list[RouteSpec] = []
    for route in throttle.routes:
        if route.name in _CATALOGUE_NAMES or route.name == OTHER:
            continue
        if not route.match or not route.limits:
            raise ValueError(f"{route.name!r} is not a catalogue route: it needs match and limits")
        added.append(RouteSpec(route.name, route.match, route.limits))
    kept = (_overridden(spec, overrides.get(spec.name)) for spec in catalogue)
    return (*added, *kept)


def _overridden(spec: RouteSpec, route: RouteOverride | None) -> RouteSpec:
    if route is None:
        return spec
    match = spec.match if route.match is None else route.match
    return replace(spec, match=match, limits=spec.limits if route.limits is None else route.limits)


def route_policies(
    throttle: Throttle, catalogue: tuple[RouteSpec, ...] = CATALOGUE
) -> dict[str, tuple[str, str]]:
    """``(priority, mode)`` of every route name of ``effective_routes(throttle, catalogue)``,
    ``other`` included, with the defaults applied."""
    overrides = {route.name: route for route in throttle.routes}
    policies: dict[str, tuple[str, str]] = {}
    for name in (*(spec.name for spec in effective_routes(throttle, catalogue)), OTHER):
        route = overrides.get(name)
        priority = route.priority if route is not None and route.priority else INTERACTIVE
        mode = route.mode if route is not None and route.mode else throttle.mode
        policies[name] = (priority, mode)
    return policies


def route_scopes(throttle: Throttle) -> dict[str, str]:
    """Whom each route's quota belongs to (``app``, ``tenant`` or ``shared``), ``other`` included.

    ``per`` wins; else hunting routes are per tenant and every other route per app + tenant.
    """
    overrides = {route.name: route.per for route in throttle.routes if route.per}
    names = (*(spec.name for spec in effective_routes(throttle)), OTHER)
    return {
        name: overrides.get(name) or (TENANT if name in TENANT_ROUTES else APP) for name in names
    }
