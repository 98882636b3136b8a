"""Paging links on the upstream's origin, rewritten to the origin the caller used.

The API answers a list with ``@odata.nextLink`` (and a delta query with ``@odata.deltaLink``) as an
absolute URL on its own origin; a client that follows it goes around the proxy. ``Rewriter`` turns
the origin of those two values, where it is the upstream's, into the caller's, on a body streamed
through in chunks of any size: it never parses JSON (a body that only says it is JSON passes through
unharmed) and carries at most ``Rewriter.tail_bound`` bytes from one chunk to the next, so a link
after megabytes of items costs no more memory than one at the start.

What counts as the upstream's origin: its scheme and host compared case-insensitively, its port
given or (when it is the scheme's default) left out, and ``/`` escaped as ``\\/`` or not, as JSON
allows. A link on any other origin is left alone. Whitespace around the ``:`` after the key is
matched up to ``_MAX_SPACE`` bytes; more than that (no serializer writes it) is not rewritten.

The caller's origin is the listener's scheme and the request's ``Host`` when that is a plain host
name or IP literal with an optional port (``caller_origin``); anything else falls back to the
address the caller connected to, so no byte of a hostile ``Host`` ever reaches the JSON.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

#: The keys whose values are rewritten, exactly as OData spells them (JSON keys are case-sensitive).
KEYS: Final = (b"@odata.nextLink", b"@odata.deltaLink")
_MAX_SPACE: Final = 16
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_MAX_HOST: Final = 255

_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST: Final = re.compile(
    rf"(?P<name>{_LABEL}(?:\.{_LABEL})*\.?|\[(?P<v6>[0-9A-Fa-f:.]{{2,45}})\])"
    r"(?::(?P<port>[0-9]{1,5}))?\Z"
)


def _pattern(origin: str) -> re.Pattern[bytes]:
    """The pattern of a link key, then the value's opening up to the end of ``origin``."""
    parts = urlsplit(origin)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = _DEFAULT_PORTS.get(scheme)
    port = parts.port if parts.port is not None else default
    if port == default:
        port_pattern = rb"(?::" + str(port).encode() + rb")?"
    else:
        port_pattern = rb":" + str(port).encode()
    keys = b"|".join(re.escape(key) for key in KEYS)
    space = rb"[ \t\r\n]{0,%d}" % _MAX_SPACE
    return re.compile(
        rb'(?P<key>"(?:' + keys + rb')"' + space + rb":" + space + rb'")'
        rb"(?i:" + re.escape(scheme.encode()) + rb")"
        rb"(?P<slashes>://|:\\/\\/)"
        rb"(?i:" + re.escape(host.encode("ascii")) + rb")" + port_pattern +
        # The origin must end here: a longer host (api.security.microsoft.com.example) is another.
        rb'(?=/|\\/|\?|#|")'
    )  # fmt: skip


def _longest(origin: str) -> int:
    """The most bytes one match (its lookahead byte included) can span."""
    parts = urlsplit(origin)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    key = max(map(len, KEYS)) + 2
    return key + 2 * _MAX_SPACE + 2 + len(parts.scheme) + 5 + len(host) + 6 + 2


class Links:
    """What one configured upstream origin's links look like; shared by every request."""

    __slots__ = ("origin", "pattern", "tail_bound")

    def __init__(self, upstream: str) -> None:
        self.origin = upstream
        self.pattern = _pattern(upstream)
        #: the most bytes ever carried from one chunk to the next
        self.tail_bound = _longest(upstream) - 1

    def rewriter(self, caller: str) -> Rewriter:
        """A rewriter for one body, to ``caller``'s origin (``scheme://host[:port]``)."""
        return Rewriter(self, caller)

    def rewrite(self, body: bytes, caller: str) -> tuple[bytes, int]:
        """The whole of ``body`` rewritten at once: (bytes, links rewritten)."""
        rewriter = self.rewriter(caller)
        out = rewriter.feed(body) + rewriter.flush()
        return out, rewriter.count


class Rewriter:
    """Rewrites one body fed in chunks; ``feed`` returns what may be sent so far."""

    __slots__ = ("_escaped", "_links", "_plain", "_tail", "count")

    def __init__(self, links: Links, caller: str) -> None:
        self._links = links
        self._plain = caller.encode("ascii")
        self._escaped = self._plain.replace(b"/", b"\\/")
        self._tail = b""
        #: links rewritten so far
        self.count = 0

    @property
    def carried(self) -> int:
        """Bytes held back, waiting for the next chunk."""
        return len(self._tail)

    def feed(self, chunk: bytes) -> bytes:
        """Rewrite ``chunk`` as far as it can be known; the rest waits for the next call."""
        if not chunk:
            return b""
        data = self._tail + chunk if self._tail else chunk
        # A match starting before ``safe`` is wholly inside ``data``: one starting later may
        # still be growing, so those bytes are carried over.
        safe = max(0, len(data) - self._links.tail_bound)
        out, done = self._replace(data, safe)
        self._tail = data[done:]
        return out

    def flush(self) -> bytes:
        """The bytes still held back; the body has ended."""
        data, self._tail = self._tail, b""
        out, done = self._replace(data, len(data))
        return out + data[done:]

    def _replace(self, data: bytes, safe: int) -> tuple[bytes, int]:
        """``data`` up to ``safe`` (or past it, to the end of a link that began before it) with
        every link rewritten, and how far into ``data`` that went."""
        parts: list[bytes] = []
        done = 0
        for match in self._links.pattern.finditer(data):
            start = match.start()
            if start >= safe:
                break
            parts.append(data[done:start])
            parts.append(match["key"])
            parts.append(self._plain if match["slashes"] == b"://" else self._escaped)
            done = match.end()
            self.count += 1
        if done < safe:
            parts.append(data[done:safe])
            done = safe
        return b"".join(parts), done


def caller_origin(scheme: str, hosts: Iterable[str], own: tuple[str, int] | None) -> str:
    """``scheme://host`` from the request's one ``Host`` when it is a valid authority, else from
    the address the caller connected to (``own``: the listener's side of the connection)."""
    named = host_origin(scheme, hosts)
    if named is not None:
        return named
    if own is None:
        return f"{scheme}://localhost"
    address, port = own[0], own[1]
    shown = f"[{address}]" if ":" in address else address
    default = _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{shown}" if port == default else f"{scheme}://{shown}:{port}"


def host_origin(scheme: str, hosts: Iterable[str]) -> str | None:
    """``scheme://host`` from the request's one ``Host`` when it is a valid authority, else None."""
    given = list(hosts)
    if len(given) == 1 and (host := valid_host(given[0])) is not None:
        return f"{scheme}://{host}"
    return None


def valid_host(value: str) -> str | None:
    """``value`` when it is a host name, IPv4 or bracketed IPv6 literal with an optional port."""
    if len(value) > _MAX_HOST or not value.isascii():
        return None
    match = _HOST.match(value)
    if match is None:
        return None
    port = match["port"]
    if port is not None and not 0 < int(port) <= 65535:
        return None
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            return None
    return value
