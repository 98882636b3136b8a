"""The stand-in identity provider's refusals: Entra ID's AADSTS codes and the shape they arrive in.

Entra answers a refused token request with an OAuth error body: ``error`` (the OAuth code),
``error_description`` (``AADSTS<n>: <message>`` followed by ``Trace ID``, ``Correlation ID`` and
``Timestamp`` lines), ``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id`` and
``error_uri``; HTTP 401 for ``invalid_client``, 400 for the rest, 429 with ``Retry-After`` when
it throttles. The correlation id is the caller's ``client-request-id`` when it sent one (MSAL
does). Client libraries surface the description, so a test can look for the AADSTS number in the
exception; messages are worded like Entra's, and nothing here branches on them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import orjson
from aiohttp import web


@dataclass(frozen=True, slots=True)
class Code:
    """One AADSTS code: its OAuth error, and its message with ``{client_id}``, ``{tenant}`` and
    ``{detail}`` to fill in."""

    error: str
    message: str

    @property
    def status(self) -> int:
        """The HTTP status Entra answers it with."""
        return 401 if self.error == "invalid_client" else 400


CODES: Final[dict[int, Code]] = {
    7000215: Code(
        "invalid_client",
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to app '{client_id}'.",
    ),
    7000222: Code(
        "invalid_client",
        "The provided client secret keys for app '{client_id}' are expired. Create new keys for "
        "your app, or consider using certificate credentials.",
    ),
    7000218: Code(
        "invalid_client",
        "The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
    ),
    700027: Code(
        "invalid_client",
        "The certificate with identifier used to sign the client assertion is not registered on "
        "application '{client_id}'. [Reason - {detail}]",
    ),
    700024: Code(
        "invalid_client",
        "Client assertion is not within its valid time range. {detail}",
    ),
    700021: Code(
        "invalid_client",
        "Client assertion application identifier doesn't match 'client_id' parameter.",
    ),
    50012: Code(
        "invalid_client",
        "Client assertion audience claim does not match Realm issuer.",
    ),
    50027: Code("invalid_client", "JWT token is invalid or malformed."),
    700211: Code(
        "invalid_client",
        "No matching federated identity record found for presented assertion issuer '{detail}'.",
    ),
    700212: Code(
        "invalid_client",
        "No matching federated identity record found for presented assertion audience '{detail}'.",
    ),
    700213: Code(
        "invalid_client",
        "No matching federated identity record found for presented assertion subject '{detail}'.",
    ),
    700016: Code(
        "unauthorized_client",
        "Application with identifier '{client_id}' was not found in the directory '{tenant}'. "
        "This can happen if the application has not been installed by the administrator of the "
        "tenant or consented to by any user in the tenant. You may have sent your authentication "
        "request to the wrong tenant.",
    ),
    90002: Code(
        "invalid_request",
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud.",
    ),
    900144: Code(
        "invalid_request", "The request body must contain the following parameter: '{detail}'."
    ),
    70003: Code(
        "unsupported_grant_type",
        "The app requested an unsupported grant type '{detail}'.",
    ),
    1002012: Code(
        "invalid_scope",
        "The provided value for scope {detail} is not valid. Client credential flows must have a "
        "scope value with /.default suffixed to the resource identifier (application ID URI).",
    ),
    500011: Code(
        "invalid_resource",
        "The resource principal named {detail} was not found in the tenant named {tenant}. This "
        "can happen if the application has not been installed by the administrator of the tenant "
        "or consented to by any user in the tenant. You might have sent your authentication "
        "request to the wrong tenant.",
    ),
    # What Entra says when it throttles a tenant; it answers 429 with Retry-After (see refuse).
    90055: Code(
        "temporarily_unavailable",
        "TenantThrottlingError - There are too many incoming requests. Retry after the time the "
        "Retry-After header gives.",
    ),
    # The service cannot answer for now; 503 (see refuse).
    90033: Code(
        "temporarily_unavailable",
        "A transient error has occurred. Please try again.",
    ),
}
THROTTLED: Final = 90055
UNAVAILABLE: Final = 90033


def refuse(
    code: int,
    request: web.Request,
    *,
    client_id: str = "",
    tenant: str = "",
    detail: str = "",
    status: int | None = None,
    retry_after: int | None = None,
) -> web.Response:
    """Entra's answer refusing ``request`` with AADSTS ``code`` (one of ``CODES``)."""
    entry = CODES[code]
    message = entry.message.format(client_id=client_id, tenant=tenant, detail=detail)
    trace_id = str(uuid.uuid4())
    correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    description = (
        f"AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\n"
        f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
    )
    body = {
        "error": entry.error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"{request.scheme}://{request.host}/error?code={code}",
    }
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.Response(
        status=status if status is not None else entry.status,
        body=orjson.dumps(body),
        headers=headers,
    )
