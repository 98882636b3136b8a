"""The origins one process serves: each with its own name, listener and catalogue.

``upstreams`` in the config is a list of 1 to ``MAX_UPSTREAMS`` mappings, each an ``Upstream``:
one listener that forwards only to its own origin, with the route table of its catalogue. The
one-origin shorthand (``upstream`` + ``listen``) is one upstream named ``default`` whose catalogue
is chosen from the origin's host. Quotas are keyed by route, not by upstream, so two entries that
are geo hosts of one API share them; the name is only a label (metrics, logs).

An entry's ``listen_tls`` (``proxy.listen_tls``) makes its listener serve HTTPS; the config's
top-level ``listen_tls`` is resolved into every entry without one, so ``listen_tls`` here is what
the listener serves.

Problems in the list are raised together as ``NestedValueError``, each with a path such as
``[1].listen``; the checks against other keys (``admin_listen``, the shorthand) are ``config``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from proxy.catalogue import CATALOGUES, catalogue_for_origin
from proxy.credentials import Credentials, parse_credentials
from proxy.endpoints import Address, parse_address, parse_upstream
from proxy.listen_tls import ListenTls, parse_listen_tls
from proxy.throttle_config import NestedValueError, parse_name
from proxy.units import shown, shown_key

__all__ = ["DEFAULT_NAME", "MAX_UPSTREAMS", "Upstream", "parse_upstreams", "shorthand"]

#: Listeners in one process. Each holds a connection pool and a caller-connection budget, and its
#: name is a label value on the per-request metrics: a bound keeps both small.
MAX_UPSTREAMS: Final = 16
#: The name of the one upstream that ``upstream`` + ``listen`` describe.
DEFAULT_NAME: Final = "default"
_KEYS: Final = ("name", "origin", "listen", "catalogue", "listen_tls", "credentials")
_T = TypeVar("_T")
_Problems = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Upstream:
    """One origin, the address its callers connect to, and the catalogue it routes with."""

    name: str
    #: a normalised origin, as ``parse_upstream`` returns it
    origin: str
    listen: Address
    #: a key of ``proxy.catalogue.CATALOGUES``
    catalogue: str
    #: the certificate and key the listener serves HTTPS with; None: plain HTTP
    listen_tls: ListenTls | None = None
    #: the app credential the proxy mints tokens with for callers that bring none (None: it
    #: mints none); its scope is settled for ``origin`` once the config is parsed
    credentials: Credentials | None = None

    @property
    def scheme(self) -> str:
        """The scheme callers reach the listener with."""
        return "http" if self.listen_tls is None else "https"


def shorthand(
    origin: str,
    listen: Address,
    listen_tls: ListenTls | None = None,
    credentials: Credentials | None = None,
) -> Upstream:
    """The one upstream of the ``upstream`` + ``listen`` shorthand."""
    catalogue = catalogue_for_origin(origin)
    return Upstream(DEFAULT_NAME, origin, listen, catalogue, listen_tls, credentials)


def _catalogue(value: object) -> str:
    if isinstance(value, str) and value.strip().lower() in CATALOGUES:
        return value.strip().lower()
    raise ValueError(f"expected one of {', '.join(CATALOGUES)}, got {shown(value)}")


def parse_upstreams(value: object) -> tuple[Upstream, ...]:
    """``upstreams``; every problem in the list is raised at once as ``NestedValueError``."""
    if not isinstance(value, list):
        raise ValueError(f"expected a list of upstreams, got a {type(value).__name__}")
    if not value:
        raise ValueError("expected at least one upstream, got an empty list")
    if len(value) > MAX_UPSTREAMS:
        raise ValueError(f"at most {MAX_UPSTREAMS} upstreams, got {len(value)}")
    problems: _Problems = []
    upstreams: list[Upstream] = []
    names: dict[str, int] = {}
    ports: dict[int, int] = {}
    for index, entry in enumerate(value):
        upstream = _entry(entry, f"[{index}]", problems)
        if upstream is None:
            continue
        if upstream.name in names:
            first = f"{upstream.name!r} is already upstreams[{names[upstream.name]}].name"
            problems.append((f"[{index}].name", first))
        names.setdefault(upstream.name, index)
        # By port, as for admin_listen: 0.0.0.0:8080 and 127.0.0.1:8080 cannot both be bound.
        port = upstream.listen.port
        if port and port in ports:
            again = f"{upstream.listen} shares port {port} with upstreams[{ports[port]}].listen"
            problems.append((f"[{index}].listen", again))
        if port:
            ports.setdefault(port, index)
        upstreams.append(upstream)
    if problems:
        raise NestedValueError(problems)
    return tuple(upstreams)


def _entry(entry: object, where: str, problems: _Problems) -> Upstream | None:
    """The entry at ``where``, noting its problems; None if any part of it is missing or bad."""
    if not isinstance(entry, Mapping):
        problems.append((where, f"expected a mapping, got a {type(entry).__name__}"))
        return None
    for key in entry:
        if key not in _KEYS:
            known = ", ".join(_KEYS)
            problems.append((f"{where}.{shown_key(key)}", f"unknown key (known: {known})"))
    before = len(problems)

    def field(key: str, parse: Callable[[object], _T], required: bool = True) -> _T | None:
        raw = entry.get(key)  # null is the same as leaving the key out
        if raw is None:
            if required:
                problems.append((f"{where}.{key}", f"required: every upstream needs {key}"))
            return None
        try:
            return parse(raw)
        except NestedValueError as error:
            problems.extend((f"{where}.{key}{below}", text) for below, text in error.problems)
            return None
        except ValueError as error:
            problems.append((f"{where}.{key}", str(error)))
            return None

    name = field("name", parse_name)
    origin = field("origin", parse_upstream)
    listen = field("listen", parse_address)
    catalogue = field("catalogue", _catalogue, required=False)
    listen_tls = field("listen_tls", parse_listen_tls, required=False)
    credentials = field("credentials", parse_credentials, required=False)
    if name is None or origin is None or listen is None or len(problems) > before:
        return None
    catalogue = catalogue or catalogue_for_origin(origin)
    return Upstream(name, origin, listen, catalogue, listen_tls, credentials)
