"""The simulator's check of a request body, under ``--check-bodies``: the API's 400 for a typo.

The API's body parameters are case-sensitive. For a request with a body to an endpoint whose
parameters ``proxy.reference`` documents, a JSON object without a required parameter (spelt
exactly) is answered 400 ``MissingRequiredParameter``, naming it, and one with a key the endpoint
does not document (a typo, a name in the wrong case), or a body that is not a JSON object, 400
``InvalidRequestBody``; each in the Defender envelope with a fresh tracking id. A body over
``MAX_CHECKED`` is not checked. Microsoft Graph matches names without regard to case
(``Endpoint.folds_case``: its SDK sends ``query`` where the page writes ``Query``), so for its
endpoints the check does too.
"""

from __future__ import annotations

from typing import Final

import orjson
from aiohttp import web

from proxy.reference import REFERENCE, Reference
from proxy.simulator import behaviour, bodies

#: A body is held whole to be checked; a longer one is let through unchecked.
MAX_CHECKED: Final = 4 * 2**20
_CHUNK: Final = 64 * 2**10
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


async def refusal(
    request: web.Request, reference: Reference = REFERENCE
) -> behaviour.Answer | None:
    """The 400 the API would answer for this request's body, or None if it has nothing to say."""
    if request.method not in _BODY_METHODS:
        return None
    endpoint = reference.find(request.method, request.path)
    if endpoint is None or not endpoint.body:
        return None
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_CHUNK):
        size += len(chunk)
        if size > MAX_CHECKED:
            return None
        parts.append(chunk)
    try:
        doc = orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError:
        return _invalid()
    if not isinstance(doc, dict):
        return _invalid()
    fold = str.casefold if endpoint.folds_case else str
    sent = {fold(key) for key in doc}
    for param in endpoint.body:
        if param.required and fold(param.name) not in sent:
            code = "MissingRequiredParameter"
            return behaviour.error_answer(400, code, f"Parameter '{param.name}' is missing.")
    documented = {fold(param.name) for param in endpoint.body}
    if any(key not in documented for key in sent):
        return _invalid()
    return None


def _invalid() -> behaviour.Answer:
    code = "InvalidRequestBody"
    return behaviour.error_answer(400, code, bodies.message_for(code))
