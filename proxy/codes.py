"""The Defender API's documented error codes and the statuses they come with.

This is the error table of the Defender API reference (MDE and XDR share it), plus the codes seen in
the wild and the Graph codes that matter to operators. The metrics module treats every code here as
a known label value; the simulator answers each row with the documented envelope.
"""

from __future__ import annotations

from typing import Final

#: The documented table: code → HTTP status. Twenty rows.
ERROR_TABLE: Final[dict[str, int]] = {
    "BadRequest": 400,
    "ODataError": 400,
    "InvalidInput": 400,
    "InvalidRequestBody": 400,
    "InvalidHashValue": 400,
    "InvalidDomainName": 400,
    "InvalidIpAddress": 400,
    "InvalidUrl": 400,
    "MaximumBatchSizeExceeded": 400,
    "MissingRequiredParameter": 400,
    "OsPlatformNotSupported": 400,
    "ClientVersionNotSupported": 400,
    "Unauthorized": 401,
    "Forbidden": 403,
    "DisabledFeature": 403,
    "DisallowedOperation": 403,
    "NotFound": 404,
    "ResourceNotFound": 404,
    "TooManyRequests": 429,
    "InternalServerError": 500,
}

#: Codes seen from the Defender API or Microsoft Graph beyond the documented table.
SEEN_IN_THE_WILD: Final[frozenset[str]] = frozenset(
    {
        "ActiveRequestAlreadyExists",
        "UnknownError",
        "throttledRequest",
        "generalException",
        "accessDenied",
        "itemNotFound",
        "invalidRequest",
        "badRequest",
        "unauthenticated",
        "InvalidAuthenticationToken",
        "Authorization_RequestDenied",
        "serviceNotAvailable",
        "activityLimitReached",
        "TooManyRequests",
    }
)

#: Codes the proxy itself answers with (always in the Defender envelope).
PROXY_CODES: Final[frozenset[str]] = frozenset(
    {
        "BadRequest",
        "BadGateway",
        "GatewayTimeout",
        "PayloadTooLarge",
        "UriTooLong",
        "TooManyRequests",
        "ServiceUnavailable",
    }
)

#: Hunting answers throttling with the string "429" as its code; it is the same code.
ALIASES: Final[dict[str, str]] = {"429": "TooManyRequests"}
