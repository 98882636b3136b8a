"""The first step of a request: refuse what is not ours to forward.

Only the configured upstream origin is ever contacted. A ``CONNECT`` or ``TRACE``, an
asterisk-form target, an absolute-form target naming any origin but the upstream's or the
listener's own (``proxy.absolute_form``), a path that tries to climb out of itself (``..``,
``%2e%2e``, ``..;``, ``..%3B``) or smuggle a separator (``%2F``, ``%5C``, ``\\``), a path longer than
``MAX_PATH``, more than one ``Authorization`` field, and a declared body over the limit are refused
here, before any upstream connection is made, with a Defender-shaped 400, 414 or 413.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Final

from yarl import URL

from proxy.absolute_form import Listener, names_listener, not_a_forward_proxy, shown_authority
from proxy.errors import RefusalError

#: The longest path (the target before any ``?``, as sent) the proxy routes and forwards. The
#: Defender API's own paths stay under about 100 characters (an OData call with an IP address and a
#: time stamp, a machine id and an action). A longer one is refused with 414, not routed to
#: ``other``: padding a path must never move a request out of its route's quota (the exports
#: route takes ``/api/machines/*Export/**``, any tail). Routing time is linear in the path, so
#: this also caps the routing work per request.
MAX_PATH: Final = 4096

# A dot segment, also with path parameters (``..;x``), which some servers still read as ``..``;
# their ';' percent-encoded too, as such a server decodes the path before it reads parameters.
_DOT_SEGMENT = re.compile(r"(?:^|/)(?:\.|%2e){1,2}(?:(?:;|%3b)[^/?]*)?(?=/|$|\?)", re.IGNORECASE)
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|00)|\\", re.IGNORECASE)
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def _origin_form(absolute: str, upstream: str, listener: Listener | None) -> str:
    """The origin-form rest of an absolute-form target naming the upstream or ``listener``."""
    scheme, _, rest = absolute.partition("://")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, remainder = rest[:cut], rest[cut:]
    target = remainder if remainder.startswith("/") else "/" + remainder
    if "@" in authority:
        # Never shown: what precedes an "@" may be a password.
        raise not_a_forward_proxy(
            "credentials in the request target are refused", listener, upstream
        )
    if listener is not None and names_listener(scheme, authority, listener):
        return target
    try:
        origin = str(URL(f"{scheme}://{authority}").origin())
    except ValueError:
        raise not_a_forward_proxy(
            "the request target is not a valid URL", listener, upstream
        ) from None
    if origin != upstream:
        named = shown_authority(authority)
        raise not_a_forward_proxy(
            f"an absolute-form target naming another origin ({named or 'not shown'}) is refused",
            listener,
            upstream,
        )
    return target


def upstream_target(
    method: str, raw_target: str, upstream: str, listener: Listener | None = None
) -> str:
    """The origin-form target (path and query, byte-exact) to send upstream, or a refusal.

    ``listener`` is the proxy port the request came in on: an absolute-form target naming it is
    served as its origin-form rest, and refusals of absolute-form and CONNECT name its address.
    """
    if method == "CONNECT":
        named = shown_authority(raw_target)
        raise not_a_forward_proxy(
            f"CONNECT {named} is refused" if named else "CONNECT is refused", listener, upstream
        )
    if method in ("TRACE", "TRACK"):
        raise RefusalError(
            400, "BadRequest", f"{method} is refused: the upstream would echo the request back"
        )
    if raw_target.startswith("/"):
        target = raw_target
    elif _ABSOLUTE.match(raw_target):
        target = _origin_form(raw_target, upstream, listener)
    else:
        raise RefusalError(400, "BadRequest", "the request target must be a path such as /api/...")
    if "#" in target:
        # A fragment never belongs in a request; the URL library would drop it and what follows
        # it, so the path checked here would not be the path sent.
        raise RefusalError(400, "BadRequest", "a fragment ('#') in the request target is refused")
    path = target.partition("?")[0]
    if len(path) > MAX_PATH:
        raise RefusalError(
            414,
            "UriTooLong",
            f"the path of {len(path)} characters is over this proxy's limit of {MAX_PATH}",
        )
    problem = path_problem(path)
    if problem:
        raise RefusalError(400, "BadRequest", f"{problem} in the path are refused")
    return target


def path_problem(path: str) -> str:
    """What makes ``path`` climb out of itself or smuggle a separator ("" if nothing).

    The API resolves dot segments before it routes (so ``alerts_v2/../runHuntingQuery`` is
    hunting), while the proxy routes the path as written: such a path must never be forwarded,
    neither as a whole request nor inside a ``$batch``.
    """
    if _DOT_SEGMENT.search(path):
        return "dot segments ('.', '..', '..;')"
    if _ENCODED_SEPARATOR.search(path):
        return "encoded separators (%2F, %5C, %00) or '\\'"
    return ""


def check_credentials(authorizations: Sequence[str]) -> None:
    """Refuse a request with more than one ``Authorization`` field.

    It is a singleton field (RFC 9110 §11.6.2): which of several values an API reads is its own
    choice, so the identity the proxy charged (the first token's) could be another than the one
    the API authenticates. No value is ever named in the refusal.
    """
    if len(authorizations) > 1:
        raise RefusalError(
            400,
            "BadRequest",
            f"{len(authorizations)} Authorization headers are refused: a request carries one",
        )


def check_body_size(content_length: int | None, max_body: int) -> None:
    """Refuse a declared body over the limit before reading any of it."""
    if content_length is not None and content_length > max_body:
        raise RefusalError(
            413,
            "PayloadTooLarge",
            f"the request body of {content_length} bytes is over this proxy's limit of {max_body}",
        )


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def networks(texts: tuple[str, ...]) -> Networks:
    """The parsed ``allow_from`` networks."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def check_caller(remote: str | None, allowed: Networks) -> None:
    """Refuse a caller outside the allowed source networks (a gateway's ``allow_from``)."""
    try:
        address = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        raise RefusalError(403, "Forbidden", "the caller's address is not allowed") from None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not any(address in network for network in allowed):
        raise RefusalError(403, "Forbidden", f"callers from {address} are not allowed")


def check_framing(version: tuple[int, int], transfer_encoding: str | None) -> None:
    """Refuse what cannot be framed unambiguously: HTTP/0.9, a transfer coding in HTTP/1.0 (RFC
    9112 §6.1), and a transfer coding that does not end in chunked (§6.3: the length of such a
    request cannot be known)."""
    if version < (1, 0):
        raise RefusalError(400, "BadRequest", "HTTP/0.9 requests are refused")
    if transfer_encoding is None:
        return
    if version < (1, 1):
        # An HTTP/1.0 message has no chunked coding: a body framed so may smuggle a request.
        raise RefusalError(400, "BadRequest", "Transfer-Encoding in an HTTP/1.0 request is refused")
    if transfer_encoding.rsplit(",", 1)[-1].strip().lower() != "chunked":
        # The parser lets such a request through when it also asks for an Upgrade.
        raise RefusalError(
            400, "BadRequest", "a Transfer-Encoding whose last coding is not chunked is refused"
        )
