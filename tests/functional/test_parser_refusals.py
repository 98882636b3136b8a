"""Requests refused before the handler: parser errors, HTTP/0.9, HTTP/1.0 with chunked framing."""

from __future__ import annotations

import orjson

from tests.conftest import Stack
from tests.httpraw import exchange

JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2FwaSJ9.c2lnbmF0dXJlLXNlY3JldA"


async def _upstream_requests(stack: Stack) -> int:
    async with stack.client.session.get(stack.upstream.make_url("/_sim/stats")) as response:
        return int((await response.json())["requests"])


async def test_a_parser_error_never_echoes_the_request(served: tuple[Stack, int]) -> None:
    """A header aiohttp cannot parse gets 400 in the envelope; the token is in no body or log."""
    stack, port = served
    raw = (
        "GET /api/alerts HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
        f"Authorization: Bearer {JWT}\x01\r\n\r\n"
    ).encode()
    response = await exchange(port, raw)
    assert response.status == 400
    assert orjson.loads(response.body)["error"]["code"] == "BadRequest"
    assert JWT not in response.body.decode(errors="replace")
    assert JWT not in stack.logs.text
    assert stack.logs.lines("request refused by the HTTP parser")
    assert await _upstream_requests(stack) == 0


async def test_http_09_is_refused(served: tuple[Stack, int]) -> None:
    """A request line without a version (HTTP/0.9) is refused, not forwarded."""
    stack, port = served
    response = await exchange(port, b"GET /api/alerts\r\nHost: p\r\nConnection: close\r\n\r\n")
    assert response.status == 400
    assert await _upstream_requests(stack) == 0


async def test_http_10_chunked_cannot_smuggle(served: tuple[Stack, int]) -> None:
    """HTTP/1.0 with Transfer-Encoding is refused and closes: the request behind it never runs."""
    stack, port = served
    raw = (
        b"POST /api/alerts HTTP/1.0\r\nHost: proxy\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /api/machines HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
    )
    response = await exchange(port, raw)
    assert response.status == 400
    assert await _upstream_requests(stack) == 0


async def test_secret_shaped_codes_are_no_label(served: tuple[Stack, int]) -> None:
    """An error code shaped like a JWT is counted as other and scrubbed from the log line."""
    stack, port = served
    code = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
    raw = f"GET /api/alerts HTTP/1.1\r\nHost: p\r\nConnection: close\r\nX-Simulate: error={code}:400\r\n\r\n"
    response = await exchange(port, raw.encode())
    assert response.status == 400
    assert code not in stack.metrics.exposition().decode()
    assert code not in stack.logs.text
