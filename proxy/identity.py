"""Who a request is: the bearer token's claims, decoded and never verified (the API verifies).

Microsoft counts Defender and Graph quotas per application + tenant and advanced hunting per
tenant (docs/defender-api.md, "Who a quota belongs to"), so the proxy keys each quota by the
``tid`` and ``appid`` (v1 tokens) or ``azp`` (v2) claims of the caller's token. This module owns
reading them and everything derived from them:

- ``read_claims``: the ``Authorization`` header → ``Claims`` (``NO_CLAIMS`` for anything that is
  not a readable bearer JWT). Bounded work: a token longer than ``MAX_TOKEN`` is not read, and the
  JSON decoder refuses deep nesting; nothing a caller sends makes it raise.
- ``Identities``: a route's scope (``app``, ``tenant``, ``shared``) + claims → the identity part
  of the quota key, with at most ``max`` distinct identities per replica *at once* (then
  ``overflow``): an identity whose quotas hold nothing any more is forgotten (``proxy.leases``).
- ``Labels``: claims → bounded metric label values through ``throttle.identities.names``.

Ids are validated (GUID form, lower-cased) before they go anywhere — a Redis key, a log field, a
label. Nothing else of the token leaves this module: not the token, not a segment, not a claim
that failed validation.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import orjson

from proxy.leases import Leases, Overflow
from proxy.logs import get_logger

#: The identity of a request with no readable token, or none that names what its scope needs.
ANONYMOUS: Final = "anonymous"
#: The one key every identity past ``throttle.identities.max`` shares.
OVERFLOW: Final = "overflow"
#: The label value of an identity that ``throttle.identities.names`` does not name.
OTHER: Final = "other"
APP: Final = "app"
TENANT: Final = "tenant"
SHARED: Final = "shared"
SCOPES: Final = (APP, TENANT, SHARED)

#: Longest token read, characters. Entra ID access tokens are 1–3 KiB; one carrying many group
#: or role claims stays under 8 KiB. Longer ones are keyed ``anonymous`` without being decoded.
MAX_TOKEN: Final = 16 * 1024
#: Claims kept from a list or a space-separated string (``roles``, ``scp``), and their length.
MAX_ITEMS: Final = 100
MAX_ITEM_LENGTH: Final = 256
#: Tokens whose claims are remembered: the same token repeats for its hour of life.
CACHE_SIZE: Final = 512

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
# Three base64url segments; the signature may be empty (an unsigned token is still readable).
_JWT = re.compile(r"[A-Za-z0-9_\-]+\.([A-Za-z0-9_\-]+)\.[A-Za-z0-9_\-]*\Z")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +")
_VERSIONS: Final = frozenset({"1.0", "2.0"})
# Seconds since 1970 that a 64-bit time keeps; beyond, the claim is dropped rather than trusted.
_MAX_TIME: Final = 1 << 40


@dataclass(frozen=True, slots=True)
class Claims:
    """The claims of a token that the proxy reads, each validated; None (or empty) if absent."""

    #: tenant id (``tid``), a lower-case GUID
    tid: str | None = None
    #: client application id (``appid`` in v1 tokens, ``azp`` in v2), a lower-case GUID
    app: str | None = None
    #: audience (``aud``), printable and at most ``MAX_ITEM_LENGTH`` characters
    aud: str | None = None
    #: expiry and not-before (``exp``, ``nbf``), Unix seconds
    exp: int | None = None
    nbf: int | None = None
    #: application permissions (``roles``) and delegated ones (``scp``, split on spaces)
    roles: tuple[str, ...] = ()
    scp: tuple[str, ...] = ()
    #: token version (``ver``): ``1.0`` or ``2.0``
    ver: str | None = None
    #: whether the header held a bearer JWT whose payload decoded to a JSON object at all
    readable: bool = False


NO_CLAIMS: Final = Claims()


def read_claims(authorization: str | None) -> Claims:
    """The claims of the bearer token in an ``Authorization`` header; ``NO_CLAIMS`` if none."""
    if not authorization or len(authorization) > MAX_TOKEN + 16:
        return NO_CLAIMS
    match = _BEARER.match(authorization)
    if match is None:
        return NO_CLAIMS
    return _decoded(authorization[match.end() :].strip())


# functools' C cache: lock-free, bounded, and each entry is the token string and one small object.
@functools.lru_cache(maxsize=CACHE_SIZE)
def _decoded(token: str) -> Claims:
    if len(token) > MAX_TOKEN:
        return NO_CLAIMS
    match = _JWT.match(token)
    if match is None:
        return NO_CLAIMS
    segment = match.group(1)
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError, depth too
        return NO_CLAIMS
    if not isinstance(payload, dict):
        return NO_CLAIMS
    return Claims(
        tid=_guid(payload.get("tid")),
        app=_guid(payload.get("appid")) or _guid(payload.get("azp")),
        aud=_text(payload.get("aud")),
        exp=_time(payload.get("exp")),
        nbf=_time(payload.get("nbf")),
        roles=_texts(payload.get("roles")),
        scp=_texts(scp.split(" ") if isinstance(scp := payload.get("scp"), str) else None),
        ver=ver if isinstance(ver := payload.get("ver"), str) and ver in _VERSIONS else None,
        readable=True,
    )


def _guid(value: object) -> str | None:
    return value.lower() if isinstance(value, str) and _GUID.match(value) else None


def _text(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_ITEM_LENGTH and value.isprintable():
        return value
    return None


def _texts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(text for item in value[:MAX_ITEMS] if (text := _text(item)) is not None)


def _time(value: object) -> int | None:
    if type(value) is int and 0 <= value < _MAX_TIME:
        return value
    return None


def is_guid(value: object) -> bool:
    """Whether ``value`` is a GUID in its usual 8-4-4-4-12 hexadecimal form."""
    return isinstance(value, str) and _GUID.match(value) is not None


class Identities:
    """The identity part of quota keys, at most ``most`` distinct ones held at once per replica.

    ``app`` scope: ``<tid>.<app>``; ``tenant``: ``<tid>``; ``shared``: "" (one quota for the whole
    deployment). A token that lacks what the scope needs is ``anonymous``. Each identity is held
    until the time its caller (the limiter) says its quotas hold nothing any more — a window after
    its last admission or reservation, the end of its pause — and then forgotten, its place free
    for another. While ``most`` identities are held, new ones share ``overflow``: a caller
    inventing tenants cannot grow the replica's tables, and its junk leaves them a window later.

    The overflow warning is logged when ``overflow`` is first used, and again only when it is used
    after having been idle for as long as it was held (emptied, then filled again): a replica
    that stays over the bound logs it once, not once per request.
    """

    __slots__ = ("_held", "_log", "_most", "_overflow")

    def __init__(self, most: int) -> None:
        self._most = most
        self._held: Leases[str] = Leases(most)
        self._overflow = Overflow(most)
        self._log = get_logger("identity")

    def __len__(self) -> int:
        return len(self._held)

    def resize(self, most: int) -> None:
        """Give at most ``most`` identities places of their own at once from now on. Those held
        keep their places; past a lowered bound, new ones share ``overflow`` until enough of them
        have been let go, as they would at the bound."""
        self._most = most
        self._held.resize(most)
        self._overflow.resize(most)

    def key(self, claims: Claims, scope: str, *, now: float = 0.0, until: float = math.inf) -> str:
        """The identity ``claims`` have under ``scope`` ("" for ``shared``), held until ``until``
        (the default: for good); identities held until ``now`` or before are forgotten first."""
        if scope == SHARED:
            return ""
        if claims.tid is None or (scope == APP and claims.app is None):
            return ANONYMOUS
        identity = claims.tid if scope == TENANT else f"{claims.tid}.{claims.app}"
        held = self._held
        held.sweep(now)
        if identity not in held and self._overflow.keeps(identity, now):
            # It had admissions on the overflow still inside a window: a place of its own now
            # would start from an empty quota and could admit it twice in one window.
            self._overflow.send(identity, until)
            return OVERFLOW
        if held.hold(identity, until):
            return identity
        # Full: every identity whose time has passed goes, so overflow takes only what is over
        # ``most`` at once. Each entry swept here was paid for when it was held or extended.
        held.sweep(now, None)
        if held.hold(identity, until):
            return identity
        if not self._overflow.busy(now):
            # The ids of the identity that overflowed are validated GUIDs: safe to log.
            self._log.warning(
                "more distinct identities at once than throttle.identities.max: "
                "new ones share one overflow quota until others fall idle",
                max=self._most,
                tid=claims.tid,
                app=claims.app,
            )
        self._overflow.send(identity, until)
        return OVERFLOW

    def sweep(self, now: float) -> None:
        """Forget every identity held until ``now`` or before."""
        self._held.sweep(now, None)

    def extend(self, identity: str, until: float) -> None:
        """Hold ``identity`` (if it is held, or ``overflow``) at least until ``until``."""
        if identity == OVERFLOW:
            self._overflow.extend(until)
        else:
            self._held.extend(identity, until)


class Labels:
    """Metric label values for identities: a name from ``throttle.identities.names``, else
    ``other``, or ``anonymous`` with no id; so series stay bounded by the names configured."""

    __slots__ = ("_names",)

    def __init__(self, names: Mapping[str, str]) -> None:
        # Configured as name → id; looked up by id (ids are GUIDs, so lower-case them once).
        self._names = {guid.lower(): name for name, guid in names.items()}

    def of(self, guid: str | None) -> str:
        """The label value of a tenant or app id."""
        if guid is None:
            return ANONYMOUS
        return self._names.get(guid, OTHER)
