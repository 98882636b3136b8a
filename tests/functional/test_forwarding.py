"""Forwarding: methods, byte-exact targets, headers, streamed bodies, refused targets."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import orjson
import pytest

from proxy.errors import PROXY_HEADER
from tests.conftest import Stack
from tests.httpraw import exchange


def _echo_headers(echo: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in echo["headers"]}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_reaches_the_upstream(stack: Stack, method: str) -> None:
    """Each method arrives upstream as the same method."""
    response = await stack.client.request(method, "/api/machines", headers={"X-Simulate": "echo"})
    assert response.status == 200
    assert (await response.json())["method"] == method


async def test_head_is_forwarded_without_a_body(stack: Stack) -> None:
    """HEAD passes through and the caller gets the upstream's headers and no body."""
    response = await stack.client.head("/api/machines", headers={"X-Simulate": "download=1000"})
    assert response.status == 200
    assert response.headers["Content-Length"] == "1000"
    assert await response.read() == b""


async def test_path_and_query_arrive_byte_exact(stack: Stack) -> None:
    """The path and query string reach the upstream exactly as the caller wrote them."""
    target = "/api/machines?$filter=healthStatus+eq+'Active'&x=%2F%20&y=a%20b&$top=10&empty="
    raw = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Simulate: echo\r\nConnection: close\r\n\r\n"
    ).encode()
    response = await exchange(stack.port, raw)
    assert response.status == 200
    assert orjson.loads(response.body)["raw_path"] == target


async def test_odata_call_segments_pass_untouched(stack: Stack) -> None:
    """An OData function-call segment with quotes and colons passes byte-exact."""
    target = "/api/machines/findbyip(ip='10.1.1.1',timestamp=2024-09-22T08:44:05Z)"
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Simulate: echo\r\n\r\n".encode()
    response = await exchange(stack.port, raw)
    assert orjson.loads(response.body)["raw_path"] == target


async def test_hop_by_hop_request_headers_are_removed(stack: Stack) -> None:
    """Hop-by-hop headers, and those the Connection header names, never reach the upstream."""
    raw = (
        b"GET /api/alerts HTTP/1.1\r\nHost: proxy.local\r\nX-Simulate: echo\r\n"
        b"Connection: keep-alive, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n"
        b"Upgrade: h2c\r\nAuthorization: Bearer abc\r\nX-Tool: soar\r\n\r\n"
    )
    echo = orjson.loads((await exchange(stack.port, raw)).body)
    seen = _echo_headers(echo)
    for name in ("connection", "x-hop-secret", "keep-alive", "te", "proxy-authorization",
                 "proxy-connection", "upgrade"):  # fmt: skip
        assert name not in seen, name
    assert seen["authorization"] == "Bearer abc"
    assert seen["x-tool"] == "soar"
    assert seen["host"] == f"127.0.0.1:{stack.upstream.port}"


async def test_no_headers_are_invented_upstream(stack: Stack) -> None:
    """The proxy adds only client-request-id: no User-Agent, Accept or Accept-Encoding of its own."""
    raw = b"GET /api/alerts HTTP/1.1\r\nHost: x\r\nX-Simulate: echo\r\n\r\n"
    echo = orjson.loads((await exchange(stack.port, raw)).body)
    names = [name.lower() for name, _ in echo["headers"]]
    assert sorted(names) == ["client-request-id", "host", "x-simulate"]


async def test_hop_by_hop_response_headers_are_removed(stack: Stack) -> None:
    """The upstream's hop-by-hop headers and those its Connection names never reach the caller."""
    directives = "set-header=Connection:X-Up-Hop;set-header=X-Up-Hop:1;set-header=X-End:2"
    response = await stack.client.get("/api/alerts", headers={"X-Simulate": directives})
    assert response.status == 200
    assert "X-Up-Hop" not in response.headers
    assert response.headers["X-End"] == "2"


async def test_request_id_is_generated_and_sent_upstream(stack: Stack) -> None:
    """Without an id from the caller, a fresh one goes upstream and into the log line."""
    echo = await (await stack.client.get("/api/alerts", headers={"X-Simulate": "echo"})).json()
    sent = _echo_headers(echo)["client-request-id"]
    [line] = stack.logs.lines("request")
    assert line["request_id"] == sent
    assert len(sent) == 36


async def test_caller_request_id_is_kept(stack: Stack) -> None:
    """A caller's client-request-id passes unchanged and names the log line."""
    echo = await (
        await stack.client.get(
            "/api/alerts", headers={"X-Simulate": "echo", "client-request-id": "soar-42"}
        )
    ).json()
    assert _echo_headers(echo)["client-request-id"] == "soar-42"
    assert stack.logs.lines("request")[0]["request_id"] == "soar-42"


async def test_x_request_id_becomes_client_request_id(stack: Stack) -> None:
    """An x-request-id from the caller is sent upstream as client-request-id too."""
    echo = await (
        await stack.client.get("/api/alerts", headers={"X-Simulate": "echo", "x-request-id": "r-7"})
    ).json()
    seen = _echo_headers(echo)
    assert seen["client-request-id"] == "r-7"
    assert seen["x-request-id"] == "r-7"


@pytest.mark.parametrize("chunked", [False, True])
async def test_download_streams_every_byte(stack: Stack, chunked: bool) -> None:
    """A large download arrives whole, with or without a Content-Length."""
    size = 8 * 2**20
    directive = f"download={size}" + (";chunked" if chunked else "")
    response = await stack.client.get("/api/machines/export", headers={"X-Simulate": directive})
    assert response.status == 200
    received = 0
    async for chunk in response.content.iter_any():
        received += len(chunk)
    assert received == size
    assert ("Content-Length" in response.headers) is not chunked
    assert stack.logs.lines("request")[0]["bytes_out"] == size


@pytest.mark.parametrize("chunked", [False, True])
async def test_upload_streams_every_byte(stack: Stack, chunked: bool) -> None:
    """A request body arrives upstream whole and unchanged, with or without a Content-Length."""
    body = os.urandom(3 * 2**20 + 17)

    async def chunks() -> Any:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = await stack.client.post(
        "/api/indicators/import",
        data=chunks() if chunked else io.BytesIO(body),
        headers={"X-Simulate": "echo", "Content-Type": "application/json"},
    )
    echo = await response.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert _echo_headers(echo)["content-type"] == "application/json"
    assert stack.logs.lines("request")[0]["bytes_in"] == len(body)


async def test_compressed_body_passes_through_untouched(stack: Stack) -> None:
    """A gzip body reaches the caller compressed, with its Content-Encoding."""
    response = await stack.client.get("/api/alerts", headers={"X-Simulate": "body=gzip;status=400"})
    raw = await response.read()
    assert response.headers["Content-Encoding"] == "gzip"
    assert raw[:2] == b"\x1f\x8b"


async def test_declared_body_over_limit_is_refused(make_stack: Any) -> None:
    """A Content-Length over limits.max_body gets 413 in the envelope; nothing goes upstream."""
    from proxy.config import Limits

    stack: Stack = await make_stack(limits=Limits(max_body=1000))
    response = await stack.client.post("/api/indicators", data=b"x" * 1001)
    assert response.status == 413
    assert response.headers[PROXY_HEADER] == "PayloadTooLarge"
    assert (await response.json())["error"]["code"] == "PayloadTooLarge"
    stats = await (await stack.client.session.get(stack.upstream.make_url("/_sim/stats"))).json()
    assert stats["requests"] == 0


async def test_streamed_body_over_limit_is_refused(make_stack: Any) -> None:
    """A chunked body that passes limits.max_body mid-stream gets 413."""
    from proxy.config import Limits

    stack: Stack = await make_stack(limits=Limits(max_body=100_000))

    async def chunks() -> Any:
        for _ in range(10):
            yield b"y" * 65536

    response = await stack.client.post(
        "/api/indicators", data=chunks(), headers={"X-Simulate": "echo"}
    )
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "PayloadTooLarge"


@pytest.mark.parametrize(
    "request_line",
    [
        "CONNECT evil.example:443 HTTP/1.1",
        "GET http://evil.example/api/machines HTTP/1.1",
        "GET https://evil.example:443/api/machines HTTP/1.1",
        "OPTIONS * HTTP/1.1",
        "GET /api/machines/../../etc HTTP/1.1",
        "GET /api/%2e%2e/machines HTTP/1.1",
        "GET /api/machines%2F..%2Fadmin HTTP/1.1",
    ],
)
async def test_refused_targets_never_reach_the_upstream(stack: Stack, request_line: str) -> None:
    """Targets for other hosts, CONNECT and path tricks get 400 in the envelope, sent nowhere."""
    raw = f"{request_line}\r\nHost: evil.example\r\n\r\n".encode()
    response = await exchange(stack.port, raw)
    assert response.status == 400
    error = orjson.loads(response.body)["error"]
    assert error["code"] == "BadRequest"
    assert response.header(PROXY_HEADER) == "BadRequest"
    [line] = stack.logs.lines("request")
    assert line["target"] == error["target"]
    assert line["source"] == "proxy"
    stats = await (await stack.client.session.get(stack.upstream.make_url("/_sim/stats"))).json()
    assert stats["requests"] == 0


async def test_absolute_form_for_the_upstream_itself_is_forwarded(stack: Stack) -> None:
    """An absolute-form target naming the configured upstream is forwarded as its path."""
    origin = f"http://127.0.0.1:{stack.upstream.port}"
    raw = f"GET {origin}/api/alerts?x=1 HTTP/1.1\r\nHost: x\r\nX-Simulate: echo\r\n\r\n".encode()
    response = await exchange(stack.port, raw)
    assert response.status == 200
    assert orjson.loads(response.body)["raw_path"] == "/api/alerts?x=1"


async def test_callers_outside_allow_from_are_refused(make_stack: Any) -> None:
    """With allow_from set, a caller from another network gets 403 and nothing goes upstream."""
    stack: Stack = await make_stack(allow_from=("10.0.0.0/8", "192.168.0.0/16"))
    response = await stack.client.get("/api/machines")
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "Forbidden"
    assert response.headers[PROXY_HEADER] == "Forbidden"
    stats = await (await stack.client.session.get(stack.upstream.make_url("/_sim/stats"))).json()
    assert stats["requests"] == 0


async def test_callers_inside_allow_from_pass(make_stack: Any) -> None:
    """A caller inside an allowed network is forwarded as usual."""
    stack: Stack = await make_stack(allow_from=("127.0.0.0/8",))
    assert (await stack.client.get("/api/machines")).status == 200
