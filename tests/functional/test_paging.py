"""Paging stays on the proxy: nextLinks rewritten to the caller's origin, end to end, with real
clients (requests, the Graph SDK's PageIterator) against the simulator."""

from __future__ import annotations

import asyncio
import gzip
import sys
from asyncio.subprocess import PIPE
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.simulator import SimConfig, make_app
from tests.conftest import Serve, Stack
from tests.httpraw import exchange

#: Enough items that a page of 1000 is past the size a rewritten answer is read whole at.
LIST_SIZE = 1200


@pytest.fixture
async def simulator(aiohttp_server: Callable[..., Any]) -> TestServer:
    """The simulator with long lists, its links absolute on its own origin as the API's are."""
    server: TestServer = await aiohttp_server(make_app(SimConfig(list_size=LIST_SIZE)))
    return server


async def _sim_requests(stack: Stack) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{stack.upstream.port}/_sim/stats") as response:
            stats = await response.json()
    return int(stats["requests"])


def _follow(url: str) -> list[dict[str, Any]]:
    """A requests paging loop, as users write it: follow nextLink until there is none."""
    pages: list[dict[str, Any]] = []
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment: this test talks to 127.0.0.1
        while url and len(pages) < 100:
            response = session.get(url, headers={"Authorization": "Bearer x"}, timeout=10)
            response.raise_for_status()
            page = response.json()
            pages.append(page)
            url = page.get("@odata.nextLink", "")
    return pages


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/api/machines?$top=300", "computerDnsName"),
        ("/v1.0/security/alerts_v2?$top=300", "title"),
    ],
)
async def test_a_requests_paging_loop_stays_on_the_proxy(
    served: tuple[Stack, int], path: str, key: str
) -> None:
    """Every page of a gzip-compressed list goes through the proxy: counted, logged, and equal in
    number to what the simulator saw."""
    stack, port = served
    pages = await asyncio.to_thread(_follow, f"http://127.0.0.1:{port}{path}")
    assert len(pages) == 4
    assert sum(len(page["value"]) for page in pages) == LIST_SIZE
    assert all(key in item for page in pages for item in page["value"])
    for page in pages[:-1]:
        assert page["@odata.nextLink"].startswith(f"http://127.0.0.1:{port}/")
    lines = stack.logs.lines("request")
    assert len(lines) == 4
    assert [line["links_rewritten"] for line in lines[:-1]] == [1] * 3
    assert await _sim_requests(stack) == 4
    route = lines[0]["route"]
    assert stack.sample("defender_proxy_links_rewritten_total", route=route) == 3
    sent = sum(
        stack.sample(
            "defender_proxy_requests_total",
            upstream="default",
            route=route,
            method="GET",
            status="200",
            source="upstream",
        )
        for route in {line["route"] for line in lines}
    )
    assert sent == 4


# The SDK's import alone takes seconds on a busy machine; the tool gets the time a slow CI needs.
@pytest.mark.timeout(180)
async def test_the_graph_sdk_page_iterator_stays_on_the_proxy(served: tuple[Stack, int]) -> None:
    """The Graph SDK's PageIterator, its base URL the proxy, pages alerts_v2 through the proxy."""
    stack, port = served
    # The SDK runs as the separate tool it would be, in a process of its own.
    tool = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.graphsdk", "page", str(port), "300", stdout=PIPE
    )
    out, _ = await asyncio.wait_for(tool.communicate(), 150)
    assert tool.returncode == 0
    assert orjson.loads(out) == [f"Alert {n}" for n in range(LIST_SIZE)]
    lines = stack.logs.lines("request")
    assert [line["status"] for line in lines] == [200] * 4
    assert all(line["path"] == "/v1.0/security/alerts_v2" for line in lines)
    assert await _sim_requests(stack) == 4
    route = lines[0]["route"]
    assert stack.sample("defender_proxy_links_rewritten_total", route=route) == 3


async def test_a_small_page_gets_its_exact_length(stack: Stack) -> None:
    """A rewritten answer within the read-whole size goes out with its new Content-Length."""
    response = await stack.client.get(
        "/api/machines?$top=5",
        headers={"Host": "gateway.internal:8080", "Accept-Encoding": "identity"},
    )
    body = await response.read()
    assert response.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in response.headers
    link = orjson.loads(body)["@odata.nextLink"]
    assert link == "http://gateway.internal:8080/api/machines?$top=5&$skip=5"
    assert stack.logs.lines("request")[0]["bytes_out"] == len(body)


async def test_a_large_page_is_chunked_and_counted(stack: Stack) -> None:
    """A rewritten answer past the read-whole size is chunked; bytes_out is what the caller got."""
    response = await stack.client.get(
        "/api/machines?$top=1000", headers={"Accept-Encoding": "identity"}
    )
    body = await response.read()
    assert response.headers["Transfer-Encoding"] == "chunked"
    page = orjson.loads(body)
    assert page["@odata.nextLink"].startswith(f"http://127.0.0.1:{stack.port}/api/machines?")
    assert stack.logs.lines("request")[0]["bytes_out"] == len(body)


async def test_a_gzip_page_is_rewritten_inside_its_coding(stack: Stack) -> None:
    """A gzip answer is decoded, rewritten and encoded again; the caller gets valid gzip."""
    response = await stack.client.get(
        "/api/machines?$top=1000", headers={"Accept-Encoding": "gzip"}
    )
    body = await response.read()
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Length"] == str(len(body))
    page = orjson.loads(gzip.decompress(body))
    assert page["@odata.nextLink"].startswith(f"http://127.0.0.1:{stack.port}/api/machines?")
    assert stack.logs.lines("request")[0]["links_rewritten"] == 1


async def test_an_http10_caller_gets_a_close_delimited_page(stack: Stack) -> None:
    """No chunking for HTTP/1.0: the rewritten body ends with the connection."""
    raw = b"GET /api/machines?$top=1000 HTTP/1.0\r\nHost: 127.0.0.1:1234\r\n\r\n"
    response = await exchange(stack.port, raw)
    assert response.header("content-length") is None
    assert response.header("transfer-encoding") is None
    page = orjson.loads(response.body)
    assert len(page["value"]) == 1000
    assert page["@odata.nextLink"].startswith("http://127.0.0.1:1234/api/machines?")


@pytest.mark.parametrize(
    "host",
    [b'evil"}],"x":"', b"user@evil.example", b"evil.example/path", b"a b", b"ev\\il"],
)
async def test_a_hostile_host_cannot_reach_the_json(stack: Stack, host: bytes) -> None:
    """A Host that is not a plain authority gives the listener's own address instead."""
    raw = b"GET /api/machines?$top=5 HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    response = await exchange(stack.port, raw)
    if response.status == 400:  # the HTTP parser refused it before the proxy saw it
        return
    page = orjson.loads(response.body)
    assert set(page) == {"@odata.context", "value", "@odata.nextLink"}
    assert page["@odata.nextLink"].startswith(f"http://127.0.0.1:{stack.port}/api/machines?")


async def test_links_on_another_origin_pass_untouched(
    make_stack: Callable[..., Any], aiohttp_server: Callable[..., Any]
) -> None:
    """A simulator claiming the real API's origin: its links are not the proxy's upstream's."""
    claiming = await aiohttp_server(
        make_app(SimConfig(origin="https://api.security.microsoft.com"))
    )
    stack = await make_stack(upstream=f"http://127.0.0.1:{claiming.port}")
    response = await stack.client.get(
        "/api/machines?$top=5", headers={"Accept-Encoding": "identity"}
    )
    page = orjson.loads(await response.read())
    assert page["@odata.nextLink"] == (
        "https://api.security.microsoft.com/api/machines?$top=5&$skip=5"
    )
    assert "links_rewritten" not in stack.logs.lines("request")[0]


async def test_rewrite_links_false_leaves_links_alone(serve: Serve) -> None:
    """With rewrite_links off, the upstream's bytes and length pass unchanged."""
    stack, port = await serve(rewrite_links=False)
    pages = await asyncio.to_thread(_follow, f"http://127.0.0.1:{port}/api/machines?$top=1000")
    assert len(pages) == 2
    assert len(stack.logs.lines("request")) == 1  # page 2 went around the proxy
    assert pages[0]["@odata.nextLink"].startswith(f"http://127.0.0.1:{stack.upstream.port}/")


@pytest.mark.parametrize("fault", ["reset-body", "truncate-chunked"])
async def test_a_page_cut_short_by_the_upstream_is_not_passed_as_whole(
    stack: Stack, fault: str
) -> None:
    """A JSON answer the upstream breaks mid-body reaches the caller broken, never as whole."""
    response = await stack.client.get("/api/machines", headers={"X-Simulate": fault})
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert "upstream failed mid-body" in stack.logs.lines("request")[0]["note"]


async def test_an_unknown_coding_passes_with_a_note(stack: Stack) -> None:
    """A JSON answer in a coding the proxy does not undo passes byte for byte, noted in the log."""
    response = await stack.client.get(
        "/api/machines", headers={"X-Simulate": "set-header=Content-Encoding:br"}
    )
    assert response.status == 200
    line = stack.logs.lines("request")[0]
    assert line["note"] == "paging links not rewritten: Content-Encoding br"


async def test_error_answers_keep_their_bytes_and_classification(stack: Stack) -> None:
    """A 4xx JSON body is classified as before and never rewritten."""
    response = await stack.client.get("/api/machines?$top=5", headers={"X-Simulate": "status=403"})
    assert response.status == 403
    line = stack.logs.lines("request")[0]
    assert line["code"] == "Forbidden"
    assert "links_rewritten" not in line


async def test_a_partial_answer_keeps_its_bytes_and_range(
    make_stack: Callable[..., Any], aiohttp_server: Callable[..., Any]
) -> None:
    """A 206 is a slice of a representation: rewriting it would break its Content-Range."""
    origin: list[str] = []
    body = b""

    async def part(request: web.Request) -> web.Response:
        nonlocal body
        link = f"{origin[0]}/api/machines?$skip=5"
        body = orjson.dumps({"value": [], "@odata.nextLink": link})
        headers = {"Content-Range": f"bytes 0-{len(body) - 1}/{len(body) + 100}"}
        return web.Response(status=206, body=body, content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_get("/api/machines", part)
    upstream = await aiohttp_server(app)
    origin.append(f"http://127.0.0.1:{upstream.port}")
    stack = await make_stack(upstream=origin[0])
    response = await stack.client.get(
        "/api/machines", headers={"Range": "bytes=0-", "Accept-Encoding": "identity"}
    )
    assert response.status == 206
    assert await response.read() == body
    assert response.headers["Content-Range"] == f"bytes 0-{len(body) - 1}/{len(body) + 100}"
    assert "links_rewritten" not in stack.logs.lines("request")[0]
