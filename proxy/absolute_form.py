"""Absolute-form targets and CONNECT: which name this very listener, and the refusal of the rest.

A client whose ``HTTP_PROXY`` points at the proxy, and whose base URL is the proxy too, sends
``GET http://127.0.0.1:8080/api/alerts``: an absolute-form target (RFC 9112 §3.2.2) naming the
proxy's own listener. It is the same request as ``GET /api/alerts`` and is served as one. Any other
absolute-form target, and every ``CONNECT`` (what ``HTTPS_PROXY`` makes a client send), asks for a
forward proxy, which this is not: a listener forwards only to its one upstream. The refusal says
which origin the listener serves, at which address, and to make that the client's base URL instead
of a proxy variable; the status line's reason phrase says it too, as it is all that requests and
httpx show of a refused ``CONNECT``.

What names the listener is read from the target alone: its authority wins over ``Host`` (RFC 9112
§3.2.2), and a client in proxy form sets ``Host`` to that same authority, so ``Host`` proves nothing.
The scheme is ``http`` or ``https`` (either, for a listener that may serve TLS); the authority has
no userinfo and no percent-encoding, its port (or the scheme's default) is the port this connection
came in on, and its host is one of:

- the address this connection came in on, or the configured listen host when it is not a wildcard;
- ``localhost``, when the listener takes loopback connections (a loopback or wildcard listen host);
- any loopback address of the family served, when the listen host is a wildcard (``0.0.0.0``:
  IPv4; ``::``: both).

No other name counts, however it resolves: a gateway's Service name is refused with the advice, for
a request meant for another service on the same port must never go to the upstream with its
credentials. Whatever is accepted is forwarded to the listener's own upstream only, as every
request is; so nothing here can reach another origin.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from proxy.errors import RefusalError

__all__ = ["Listener", "caller_origin", "names_listener", "not_a_forward_proxy", "shown_authority"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# The listen hosts of every interface, and the address family each serves.
_WILDCARDS: Final = {"0.0.0.0": 4, "::": 6}  # noqa: S104 - recognised, never bound here
# No userinfo, no percent-encoding, no zone id: a host name of the usual letters, or an IP literal.
_AUTHORITY: Final = re.compile(
    r"(?:\[(?P<v6>[0-9a-f:.]{2,45})\]|(?P<name>[a-z0-9.\-]{1,253}))(?::(?P<port>[0-9]{0,5}))?\Z"
)
# What of a caller's target a message may show: the characters of an authority, at most this many.
_SHOWN: Final = re.compile(r"[A-Za-z0-9.:\-\[\]]{1,100}\Z")


@dataclass(frozen=True, slots=True)
class Listener:
    """One proxy port as callers reach it: the origin it serves and the address it listens on."""

    #: the upstream origin it forwards to
    origin: str
    #: the scheme callers reach it with
    scheme: str
    #: the configured listen host and port (port 0: chosen by the OS at bind)
    host: str
    port: int
    #: this connection's own side (address, port), when known
    local: tuple[str, int] | None = None

    def seen_from(self, local: tuple[str, int] | None) -> Listener:
        """The listener as one connection reached it."""
        return Listener(self.origin, self.scheme, self.host, self.port, local)

    def base_url(self) -> str:
        """The URL a client should use as its base: ``scheme://address[:port]``, or "" if the
        port is not known."""
        host, port = self.local if self.local is not None else (self.host, self.port)
        if port == 0:
            return ""
        host = _normal(host)
        if host in _WILDCARDS:
            host = "127.0.0.1" if _WILDCARDS[host] == 4 else "::1"
        shown = f"[{host}]" if ":" in host else host
        if port == _DEFAULT_PORTS.get(self.scheme):
            return f"{self.scheme}://{shown}"
        return f"{self.scheme}://{shown}:{port}"


# The listener's own addresses come again on every such request; a caller's junk only churns it.
@functools.lru_cache(maxsize=256)
def _normal(host: str) -> str:
    """An IP literal in its one canonical text (IPv4-mapped IPv6 as IPv4), a name lowercased."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def _authority(scheme: str, authority: str) -> tuple[str, int] | None:
    """(host, port) of an authority in the strict form above, or None."""
    match = _AUTHORITY.match(authority.lower())
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
    if not 0 < port <= 65535:
        return None
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            return None
        return _normal(match["v6"]), port
    return _normal(match["name"]), port


def _is_own_host(host: str, listener: Listener) -> bool:
    listen = _normal(listener.host)
    local = _normal(listener.local[0]) if listener.local is not None else None
    family = _WILDCARDS.get(listen)
    if host == local or (family is None and host == listen):
        return True
    takes_loopback = family is not None or _is_loopback(listen) or _is_loopback(local)
    if host == "localhost":
        return takes_loopback
    if family is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback and (family == 6 or address.version == 4)


@functools.lru_cache(maxsize=256)
def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def names_listener(scheme: str, authority: str, listener: Listener) -> bool:
    """Whether an absolute-form target ``scheme://authority/…`` names ``listener`` itself."""
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return False
    parsed = _authority(scheme, authority)
    if parsed is None:
        return False
    host, port = parsed
    own_port = listener.local[1] if listener.local is not None else listener.port
    return port == own_port and _is_own_host(host, listener)


def caller_origin(raw_target: str, listener: Listener) -> str:
    """The origin the caller named in an absolute-form target naming ``listener``, on the
    listener's own scheme (what paging links are rewritten to); "" for any other target."""
    scheme, found, rest = raw_target.partition("://")
    if not found:
        return ""
    authority = rest[
        : min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    ]
    if not names_listener(scheme, authority, listener):
        return ""
    return f"{listener.scheme}://{authority.lower()}"


def shown_authority(text: str) -> str:
    """``text`` (a caller's authority) when it is safe and short enough to show, else ""."""
    return text if _SHOWN.match(text) else ""


def not_a_forward_proxy(what: str, listener: Listener | None, origin: str) -> RefusalError:
    """The 400 for a request that asks for a forward proxy: ``what`` was refused, which origin the
    listener serves, and the base URL to set instead of ``HTTP_PROXY`` / ``HTTPS_PROXY``."""
    base = listener.base_url() if listener is not None else ""
    where = f" at {base}" if base else ""
    use = base or "this proxy's own address"
    message = (
        f"{what}: this proxy is not a forward proxy: it serves {origin}{where}; set the "
        f"client's base URL to {use} instead of HTTP_PROXY/HTTPS_PROXY"
    )
    reason = f"Not a forward proxy: set the base URL to {use}"
    return RefusalError(400, "BadRequest", message, reason=reason)
