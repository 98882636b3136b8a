"""Token checks as the API makes them, for ``--check-tokens``: 401 for a token it cannot accept,
403 for one without the endpoint's permission.

Written apart from the proxy's own reading of a refusal (``proxy.auth_cause``) so that a test
compares two accounts of the same token rather than one with itself: this module decides what
the API would answer, the proxy says why it thinks the API did. Only the permissions come from
the same table (``proxy.reference``): they are the API's own, which the simulator stands in for.

A Defender refusal is its envelope, 401 ``Unauthorized`` or 403 ``Forbidden`` naming the roles
the API wanted and those the token holds; a Graph one is Graph's envelope, 401
``InvalidAuthenticationToken`` or 403 ``Forbidden``. Messages are worded like the API's; nothing
branches on them. A signature is never checked: the simulator's tokens have none.
"""

from __future__ import annotations

import time
from typing import Final

from proxy.identity import Claims
from proxy.reference import REFERENCE
from proxy.simulator.behaviour import Answer, error_answer, graph_error_answer

#: The audiences each API accepts, as the resource's URI or its application id.
DEFENDER_AUDIENCES: Final = frozenset(
    {
        "https://api.securitycenter.microsoft.com",
        "https://api.security.microsoft.com",
        "fc780465-2017-40d4-a0c5-307022471b92",
    }
)
GRAPH_AUDIENCES: Final = frozenset(
    {"https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000"}
)


def check(
    method: str,
    path: str,
    authorization: str | None,
    claims: Claims,
    client_request_id: str | None,
    now: float | None = None,
) -> Answer | None:
    """The refusal the API would answer for this token on ``method`` ``path``, or None."""
    graph = path.lstrip("/").partition("/")[0].lower() in ("v1.0", "beta")
    now = time.time() if now is None else now
    words = (authorization or "").split()
    if len(words) != 2 or words[0].lower() != "bearer":
        why = "Access token is empty." if graph else "Authorization header is missing or invalid."
        return _refuse(graph, 401, why, client_request_id)
    if not claims.readable:
        why = "Access token validation failure." if graph else "Invalid Authorization payload."
        return _refuse(graph, 401, why, client_request_id)
    if claims.exp is None or claims.exp <= now or (claims.nbf is not None and claims.nbf > now):
        why = "Access token has expired or is not yet valid."
        return _refuse(graph, 401, why, client_request_id)
    audiences = GRAPH_AUDIENCES if graph else DEFENDER_AUDIENCES
    if (claims.aud or "").rstrip("/").lower() not in audiences:
        return _refuse(graph, 401, "Invalid audience.", client_request_id)
    endpoint = REFERENCE.find(method, path)
    if endpoint is None:
        return None
    held = {role.lower() for role in (*claims.roles, *claims.scp)}
    if any(permission.lower() in held for permission in endpoint.permissions):
        return None
    wanted, holds = ", ".join(endpoint.permissions), ", ".join((*claims.roles, *claims.scp))
    if graph:
        why = f"Missing role permissions on the request. API requires one of '{wanted}'. "
        why += f"Roles on the request '{holds}'."
    else:
        why = f"Missing application roles. API required roles: {wanted}. Application roles: {holds}"
    return _refuse(graph, 403, why, client_request_id)


def _refuse(graph: bool, status: int, message: str, client_request_id: str | None) -> Answer:
    if not graph:
        return error_answer(status, "Unauthorized" if status == 401 else "Forbidden", message)
    code = "InvalidAuthenticationToken" if status == 401 else "Forbidden"
    return graph_error_answer(status, code, client_request_id, message=message)
