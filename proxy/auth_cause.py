"""Why the API answered 401 or 403, read from the token the caller sent (decoded, never verified).

A wave of 401s or 403s has a handful of causes, and the token the proxy forwarded tells most of
them apart: no token at all, another scheme than Bearer, something that is not a JWT, a token
that expired (a client that does not refresh), one not valid yet (a clock ahead), one minted for
another API (a Graph token sent to Defender), one without the permission the endpoint needs
(``proxy.reference``: a permission removed from one app). What is left — ``token_ok`` — is a token
that looks right: consent, device-group RBAC or a tenant feature, which the answer's body names.

The checks run in that order and the first that applies is the cause. Only an upstream's 401 or
403 is explained, and only from values ``proxy.identity`` validated: nothing of the token itself
is kept. Audiences are the resource's URI or its application id, per API (Defender or Graph, all
clouds); which API a request is for comes from its upstream's host, else from its path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy import catalogue
from proxy.identity import Claims

if TYPE_CHECKING:
    from proxy.reference import Reference

NO_TOKEN: Final = "no_token"  # noqa: S105 (a cause, not a credential)
NOT_BEARER: Final = "not_bearer"
MALFORMED: Final = "malformed"
EXPIRED: Final = "expired"
NOT_YET_VALID: Final = "not_yet_valid"
WRONG_AUDIENCE: Final = "wrong_audience"
MISSING_ROLE: Final = "missing_role"
TOKEN_OK: Final = "token_ok"  # noqa: S105 (a cause, not a credential)
#: Every cause, in the order they are decided: the ``cause`` label's closed set.
CAUSES: Final = (
    NO_TOKEN,
    NOT_BEARER,
    MALFORMED,
    EXPIRED,
    NOT_YET_VALID,
    WRONG_AUDIENCE,
    MISSING_ROLE,
    TOKEN_OK,
)

# The resources a token for each API names in ``aud``: v1 tokens carry the URI the scope asked
# for, v2 tokens the resource's application id. Compared without a trailing slash, case-folded.
_DEFENDER_AUDIENCES: Final = frozenset(
    {
        "https://api.securitycenter.microsoft.com",
        "https://api.security.microsoft.com",
        "https://api.securitycenter.windows.com",
        "https://securitycenter.onmicrosoft.com/windowsatpservice",
        # US Government (GCC, GCC High, DoD)
        "https://api-gcc.securitycenter.microsoft.us",
        "https://api-gov.securitycenter.microsoft.us",
        "https://api-gcc.security.microsoft.us",
        "https://api-gov.security.microsoft.us",
        # WindowsDefenderATP, the Defender for Endpoint API's application
        "fc780465-2017-40d4-a0c5-307022471b92",
    }
)
_GRAPH_AUDIENCES: Final = frozenset(
    {
        "https://graph.microsoft.com",
        "https://canary.graph.microsoft.com",
        "https://graph.microsoft.us",
        "https://dod-graph.microsoft.us",
        "https://microsoftgraph.chinacloudapi.cn",
        # Microsoft Graph's application id
        "00000003-0000-0000-c000-000000000000",
    }
)
#: An audience shown in the log line: a URI of letters, digits and dots, or a GUID; else "other".
_SHOWN_AUDIENCE: Final = re.compile(
    r"(?:https?://[A-Za-z0-9.\-]{1,100}(?::\d{1,5})?(?:/[A-Za-z0-9._\-]{1,60}){0,3}/?"
    r"|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|api://[0-9A-Fa-f\-]{36})\Z"
)
_SCHEME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z\-]+")


@dataclass(frozen=True, slots=True)
class AuthCause:
    """Why a 401 or 403 happened, and the figures that go with it in the log line."""

    cause: str
    #: ``expired``: seconds since the token expired; ``not_yet_valid``: seconds until it is valid
    seconds: int | None = None
    #: ``missing_role``: the permission the endpoint wants (the least privileged it accepts)
    missing_role: str | None = None
    #: ``wrong_audience``: the token's audience, when it has a shape safe to show, else ``other``
    audience: str | None = None

    def fields(self) -> dict[str, object]:
        """The log fields: ``auth_cause`` and whichever figure the cause has."""
        fields: dict[str, object] = {"auth_cause": self.cause}
        if self.cause == EXPIRED:
            fields["expired_ago_s"] = self.seconds
        elif self.cause == NOT_YET_VALID:
            fields["valid_in_s"] = self.seconds
        elif self.cause == MISSING_ROLE:
            fields["missing_role"] = self.missing_role
        elif self.cause == WRONG_AUDIENCE:
            fields["token_aud"] = self.audience
        return fields


def audiences_for(origin: str) -> frozenset[str] | None:
    """The audiences a token for ``origin``'s API may name; None when the host does not say
    (a private mirror, the simulator): then the request's path decides (``explain``)."""
    name = catalogue.catalogue_for_origin(origin)
    if name == catalogue.DEFENDER:
        return _DEFENDER_AUDIENCES
    if name == catalogue.GRAPH:
        return _GRAPH_AUDIENCES
    return None


def _audiences_by_path(path: str) -> frozenset[str] | None:
    first = path.lstrip("/").partition("/")[0].lower()
    if first == "api":
        return _DEFENDER_AUDIENCES
    if first in ("v1.0", "beta"):
        return _GRAPH_AUDIENCES
    return None


def _shape(authorization: str | None, claims: Claims) -> str | None:
    """``no_token``, ``not_bearer`` or ``malformed``; None for a readable bearer JWT."""
    value = (authorization or "").strip()
    if not value:
        return NO_TOKEN
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer":
        return NOT_BEARER if _SCHEME.fullmatch(scheme) else MALFORMED
    if not credentials.strip():
        return NO_TOKEN
    return None if claims.readable else MALFORMED


def _shown(audience: str | None) -> str:
    if audience is not None and _SHOWN_AUDIENCE.match(audience):
        return audience
    return "other"


def explain(
    authorization: str | None,
    claims: Claims,
    method: str,
    path: str,
    audiences: frozenset[str] | None,
    now: float,
    reference: Reference | None = None,
) -> AuthCause:
    """Why the API refused a request carrying ``authorization`` (whose ``claims`` the proxy
    read) to ``method`` ``path`` (no query string) at Unix time ``now``. ``audiences``: those of
    the upstream (``audiences_for``), None to decide by the path; ``reference``: the endpoints'
    permissions (default: ``proxy.reference.REFERENCE``)."""
    shape = _shape(authorization, claims)
    if shape is not None:
        return AuthCause(shape)
    if claims.exp is not None and claims.exp <= now:
        return AuthCause(EXPIRED, seconds=int(now - claims.exp))
    if claims.nbf is not None and claims.nbf > now:
        return AuthCause(NOT_YET_VALID, seconds=int(claims.nbf - now) + 1)
    wanted = audiences if audiences is not None else _audiences_by_path(path)
    if wanted is not None:
        audience = (claims.aud or "").rstrip("/").lower()
        if audience not in wanted:
            return AuthCause(WRONG_AUDIENCE, audience=_shown(claims.aud))
    if reference is None:
        # Imported on the first refusal that gets this far: the table of every documented
        # endpoint stays out of the memory of a proxy whose callers are never refused.
        from proxy.reference import REFERENCE

        reference = REFERENCE
    endpoint = reference.find(method, path)
    if endpoint is not None and endpoint.permissions:
        held = {name.lower() for name in (*claims.roles, *claims.scp)}
        if not any(permission.lower() in held for permission in endpoint.permissions):
            return AuthCause(MISSING_ROLE, missing_role=endpoint.permissions[0])
    return AuthCause(TOKEN_OK)
