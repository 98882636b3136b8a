"""Graph's advanced hunting answer: ``POST /v1.0/security/runHuntingQuery`` and every spelling the
API reads as it (``microsoft.graph.security.runHuntingQuery``, what the Graph SDKs send).

The answer is a ``huntingQueryResults`` as Graph documents it: a ``schema`` (each column's name and
type) and ``results`` (one object per row), so a Graph SDK parses it into its model as it would the
API's. The rows are fixed; the simulator runs no query. The spellings are told apart by the
proxy's own router, as ``keyed`` does, so the simulator needs no second copy of them.
"""

from __future__ import annotations

from typing import Final

import orjson
from aiohttp import web

from proxy.routing import Router

ROUTE: Final = "graph.runHuntingQuery"
JSON: Final = "application/json; charset=utf-8"
BODY: Final = orjson.dumps(
    {
        "@odata.context": (
            "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.security.huntingQueryResults"
        ),
        "schema": [
            {"name": "Timestamp", "type": "DateTime"},
            {"name": "DeviceName", "type": "String"},
        ],
        "results": [
            {"Timestamp": "2024-01-01T00:00:00Z", "DeviceName": "host-1"},
            {"Timestamp": "2024-01-01T00:01:00Z", "DeviceName": "host-2"},
        ],
    }
)
_ROUTER: Final = Router()


def answer(request: web.Request) -> web.Response | None:
    """The hunting results when ``request`` runs a Graph hunting query, else None."""
    if _ROUTER.match(request.method, request.path).name != ROUTE:
        return None
    return web.Response(body=BODY, headers={"Content-Type": JSON})
