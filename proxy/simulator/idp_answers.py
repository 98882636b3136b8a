"""Answers of the stand-in identity provider planned verbatim: a broken or hostile Entra ID.

``POST /_sim/identity/answer`` plans what the next token requests get, whatever they carry and
without checking them: a status, and a JSON body (``"body"``: any JSON value, sent as it is) or a
text one (``"text"``, with its ``"content_type"``), and headers of the test's choosing. A client's
handling of what Entra never sends is then testable: an ``access_token`` with a CR or LF in it or
of a megabyte, ``expires_in`` of 0, -1 or ``"soon"``, an error body whose description holds a
secret, a 200 of HTML (a plan is at most aiohttp's 1 MiB request body). Planned answers come before planned refusals (``/_sim/identity/fail``),
and each is counted and remembered with the outcome ``answered``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import orjson
from aiohttp import web

_KEYS: Final = frozenset({"count", "status", "body", "text", "content_type", "headers"})


@dataclass(frozen=True, slots=True)
class Answer:
    """A verbatim answer planned for the next ``count`` token requests."""

    count: int
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        """The answer, as planned."""
        headers = {**self.headers, "Content-Type": self.content_type}
        return web.Response(status=self.status, body=self.body, headers=headers)

    def as_json(self) -> dict[str, object]:
        """The answer as ``/_sim/identity`` lists it among the planned ones (not its body)."""
        return {"count": self.count, "status": self.status, "bytes": len(self.body)}


def parse_answer(body: object) -> Answer:
    """The answer a ``POST /_sim/identity/answer`` body plans; ValueError says what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(body) - _KEYS
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    count = body.get("count", 1)
    if type(count) is not int or not 1 <= count <= 10_000:
        raise ValueError("count must be a whole number of token requests, 1 to 10000")
    status = body.get("status", 200)
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError("status must be an HTTP status, 200 to 599")
    if ("body" in body) == ("text" in body):
        raise ValueError('give exactly one of "body" (JSON) and "text"')
    if "text" in body:
        text = body["text"]
        if not isinstance(text, str):
            raise ValueError("text must be a string")
        raw = text.encode()
        content_type = body.get("content_type", "text/plain; charset=utf-8")
    else:
        raw = orjson.dumps(body["body"])
        content_type = body.get("content_type", "application/json; charset=utf-8")
    if not isinstance(content_type, str) or not content_type.isprintable():
        raise ValueError("content_type must be a printable string")
    headers = body.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(name, str) and isinstance(value, str) and (name + value).isprintable()
        for name, value in headers.items()
    ):
        raise ValueError("headers must map names to printable string values")
    return Answer(count, status, raw, content_type, headers)
