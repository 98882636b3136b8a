"""Clients with HTTP_PROXY or HTTPS_PROXY pointed at the proxy: requests, httpx and curl.

A URL naming the proxy itself, sent in absolute-form through the proxy, is served exactly as the
same request in origin-form; a URL for any other host, and a CONNECT, is refused with what to do.
Every client is the real library or binary, told its proxy explicitly (never from the environment).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import orjson
import pytest
import requests

from proxy.errors import PROXY_HEADER
from tests.conftest import Stack
from tests.httpraw import exchange

ECHO = {"X-Simulate": "echo"}
# Log fields that differ between any two requests, however they were sent.
_VARYING = ("duration_ms", "upstream_ms", "request_id", "timestamp", "bytes_out")
OTHER_HOST = "http://other.invalid:8080/api/alerts"


async def _stats(stack: Stack) -> int:
    async with stack.client.session.get(stack.upstream.make_url("/_sim/stats")) as response:
        count: int = (await response.json())["requests"]
        return count


def _steady(line: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in line.items() if key not in _VARYING}


def _requests_get(url: str, proxy: str, https: bool = False) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False  # the proxy given here, never one from the environment
        proxies = {"https" if https else "http": proxy}
        return session.get(url, proxies=proxies, headers=ECHO, timeout=5)


async def _curl(*args: str) -> tuple[int, bytes, bytes]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5", "--noproxy", "", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out, err


async def _origin_form_line(stack: Stack, port: int) -> dict[str, Any]:
    """The log line of the same request sent in origin-form, the reference to compare with."""
    raw = b"GET /api/alerts?x=1 HTTP/1.1\r\nHost: x\r\nX-Simulate: echo\r\n\r\n"
    assert (await exchange(port, raw)).status == 200
    return stack.logs.lines("request")[-1]


@pytest.mark.parametrize("client", ["requests", "httpx", "curl"])
async def test_a_url_naming_the_proxy_itself_is_served_as_origin_form(
    served: tuple[Stack, int], client: str
) -> None:
    """A client proxied through the proxy to the proxy's own URL: forwarded, logged as origin-form."""
    stack, port = served
    proxy = f"http://127.0.0.1:{port}"
    url = f"{proxy}/api/alerts?x=1"
    if client == "requests":
        answer = await asyncio.to_thread(_requests_get, url, proxy)
        status, body = answer.status_code, answer.content
    elif client == "httpx":
        async with httpx.AsyncClient(proxy=proxy, trust_env=False) as session:
            reply = await session.get(url, headers=ECHO)
        status, body = reply.status_code, reply.content
    else:
        code, body, err = await _curl("-x", proxy, "-H", "X-Simulate: echo", "-w", "", url)
        assert code == 0, err
        status = 200
    assert status == 200
    echo = orjson.loads(body)
    assert echo["raw_path"] == "/api/alerts?x=1"
    hosts = [value for name, value in echo["headers"] if name.lower() == "host"]
    assert hosts == [f"127.0.0.1:{stack.upstream.port}"]
    absolute = stack.logs.lines("request")[-1]
    reference = await _origin_form_line(stack, port)
    assert absolute["path"] == "/api/alerts"
    assert _steady(absolute) == _steady(reference)
    assert await _stats(stack) == 2


@pytest.mark.parametrize("client", ["requests", "httpx", "curl"])
async def test_a_url_for_another_host_is_refused_with_what_to_do(
    served: tuple[Stack, int], client: str
) -> None:
    """A client proxied to another host: 400 naming the origin served and the base URL to set."""
    stack, port = served
    proxy = f"http://127.0.0.1:{port}"
    if client == "requests":
        answer = await asyncio.to_thread(_requests_get, OTHER_HOST, proxy)
        status, body, said = answer.status_code, answer.content, answer.headers.get(PROXY_HEADER)
    elif client == "httpx":
        async with httpx.AsyncClient(proxy=proxy, trust_env=False) as session:
            reply = await session.get(OTHER_HOST)
        status, body, said = reply.status_code, reply.content, reply.headers.get(PROXY_HEADER)
    else:
        code, body, err = await _curl("-x", proxy, "-D", "-", OTHER_HOST)
        assert code == 0, err
        head, _, body = body.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        said = (
            "BadRequest"
            if b"\r\nX-Defender-Proxy-Error: BadRequest\r\n" in head + b"\r\n"
            else None
        )
    assert status == 400
    assert said == "BadRequest"
    message = orjson.loads(body)["error"]["message"]
    assert f"it serves http://127.0.0.1:{stack.upstream.port} at {proxy}" in message
    assert f"set the client's base URL to {proxy} instead of HTTP_PROXY/HTTPS_PROXY" in message
    assert "other.invalid:8080" in message
    assert await _stats(stack) == 0


async def test_https_proxy_clients_see_the_advice_in_the_refused_connect(
    served: tuple[Stack, int],
) -> None:
    """requests and httpx show only the status line of a refused CONNECT: it says what to do."""
    stack, port = served
    proxy = f"http://127.0.0.1:{port}"
    advice = f"400 Not a forward proxy: set the base URL to {proxy}"
    with pytest.raises(requests.exceptions.ProxyError) as by_requests:
        await asyncio.to_thread(_requests_get, "https://other.invalid/api/alerts", proxy, True)
    async with httpx.AsyncClient(proxy=proxy, trust_env=False) as session:
        with pytest.raises(httpx.ProxyError) as by_httpx:
            await session.get("https://other.invalid/api/alerts")
    assert advice in str(by_requests.value)
    assert advice in str(by_httpx.value)
    assert await _stats(stack) == 0


async def test_the_named_origin_wins_over_host_for_paging_links(
    served: tuple[Stack, int],
) -> None:
    """Paging links go back to the origin an absolute-form target named, not to its Host header."""
    _, port = served
    raw = (
        f"GET http://localhost:{port}/v1.0/security/alerts_v2?$top=2 HTTP/1.1\r\n"
        "Host: elsewhere.invalid:1\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = await exchange(port, raw)
    assert answer.status == 200
    link = orjson.loads(answer.body)["@odata.nextLink"]
    assert link.startswith(f"http://localhost:{port}/v1.0/security/alerts_v2?")


@pytest.mark.parametrize(
    ("target", "origin_form"),
    [
        ("http://127.0.0.1:{port}?x=1", "/?x=1"),
        ("http://127.0.0.1:{port}", "/"),
        ("http://localhost:{port}/api/%61lerts?x=1", "/api/%61lerts?x=1"),
        ("HTTP://127.0.0.1:{port}//api/alerts", "//api/alerts"),
    ],
)
async def test_an_absolute_target_is_sent_and_logged_as_its_origin_form_twin(
    served: tuple[Stack, int], target: str, origin_form: str
) -> None:
    """A target naming the proxy, empty path included: the same bytes upstream, the same log line."""
    stack, port = served
    lines = []
    for sent in (target.format(port=port), origin_form):
        raw = f"GET {sent} HTTP/1.1\r\nHost: x\r\nX-Simulate: echo\r\n\r\n".encode()
        answer = await exchange(port, raw)
        assert answer.status == 200
        assert orjson.loads(answer.body)["raw_path"] == origin_form
        lines.append(stack.logs.lines("request")[-1])
    absolute, reference = lines
    assert _steady(absolute) == _steady(reference)
