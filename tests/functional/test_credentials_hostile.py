"""A caller attacking the credential the proxy holds: raw bytes on the proxy port trying to get the
minted token sent twice, sent beside their own, sent somewhere else, or handed back to them.

Each case compares the accounts of it: what the caller got, what the upstream parsed (h11, an
HTTP/1.1 implementation apart from the proxy's), what the proxy logged (``credential: "proxy"``
on a request it sent with the minted token), counted and kept for ``/errors``, and how many token
requests the identity provider received.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import tracing
from proxy.spans import Spans
from tests.conftest import LogCapture
from tests.credkit import Front, holding
from tests.idpkit import Files
from tests.otlp_collector import Collector
from tests.rawupstream import UpstreamRequest

OWN = "Bearer the-callers-own.token"
MINTED = "minted"  # stands for the proxy's token in the expectations below


def _head(*lines: bytes, method: bytes = b"GET", target: bytes = b"/api/machines") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: proxy.test\r\n%s\r\n" % (method, target, b"".join(lines))


def _authorizations(request: UpstreamRequest, token: str) -> list[str]:
    """The request's Authorization values as the upstream parsed them, the minted one named."""
    return [
        MINTED if value == f"Bearer {token}" else value for value in request.values("authorization")
    ]


# What each caller sends, and the Authorization values the upstream must parse from it.
FORMS = {
    "a lower-case name": (b"authorization: " + OWN.encode() + b"\r\n", [OWN]),
    "an empty value": (b"Authorization:\r\n", [""]),
    "a value of whitespace": (b"Authorization: \t \r\n", [""]),
    "only a Proxy-Authorization": (b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n", [MINTED]),
    "Connection naming Authorization, none sent": (b"Connection: Authorization\r\n", [MINTED]),
    "Connection naming the caller's own": (
        b"Authorization: " + OWN.encode() + b"\r\nConnection: authorization\r\n",
        [],
    ),
}


@pytest.mark.parametrize("form", list(FORMS))
async def test_a_callers_authorization_in_odd_forms_is_never_joined_by_the_minted_one(
    front: Front, form: str
) -> None:
    """Whatever form the caller's Authorization takes, the upstream parses at most one; it is the
    minted token exactly when the caller sent no Authorization field, and the log says so."""
    line, expected = FORMS[form]
    answer = await front.call(_head(line, b"Connection: close\r\n"))
    assert answer.status == 200
    (received,) = front.received
    minting = MINTED in expected
    token = await front.token() if minting else ""
    assert _authorizations(received, token) == expected
    (logged,) = front.logs.lines("request")
    assert logged.get("credential") == ("proxy" if minting else None)
    assert len(await front.token_requests()) == (1 if minting else 0)


# Fields the proxy's parser must refuse rather than read as something other than Authorization.
REFUSED = {
    "two fields": b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n",
    "an empty field and a full one": b"Authorization:\r\nAuthorization: Bearer b\r\n",
    "a space before the colon": b"Authorization : Bearer a\r\n",
    "a tab before the colon": b"Authorization\t: Bearer a\r\n",
    "a value folded onto the next line": b"Authorization: Bearer\r\n a\r\n",
    "a field folded into another": b"X-Note: a\r\n Authorization: Bearer a\r\n",
    "a NUL in the name": b"Authorization\x00: Bearer a\r\n",
    "a bare LF ending it": b"Authorization: Bearer a\nX-Note: b\r\n",
}


@pytest.mark.parametrize("form", list(REFUSED))
async def test_an_ambiguous_authorization_is_refused_and_never_minted_for(
    front: Front, form: str
) -> None:
    """A field another parser could read as an Authorization (or as a second one) is a 400:
    nothing reaches the upstream and no token is minted for it."""
    answer = await front.call(_head(REFUSED[form], b"Connection: close\r\n"))
    assert answer.status == 400
    assert front.received == []
    assert await front.token_requests() == []


async def test_pipelined_requests_each_get_their_own_authorization(front: Front) -> None:
    """Four requests on one connection, with and without their own Authorization in turn: the
    upstream parses each with its own or, having none, with the minted token, never the one of
    the request before it; the log lines agree; one token request."""
    raw = b"".join(
        (
            _head(f"Authorization: {OWN}-1\r\n".encode(), target=b"/api/machines"),
            _head(target=b"/api/alerts"),
            _head(f"Authorization: {OWN}-3\r\n".encode(), target=b"/api/incidents"),
            _head(b"Connection: close\r\n", target=b"/api/vulnerabilities"),
        )
    )
    answers = await front.converse(raw, 4)
    assert [answer.status for answer in answers] == [200] * 4
    token = await front.token()
    sent = [(r.target, _authorizations(r, token)) for r in front.received]
    assert sent == [
        ("/api/machines", [f"{OWN}-1"]),
        ("/api/alerts", [MINTED]),
        ("/api/incidents", [f"{OWN}-3"]),
        ("/api/vulnerabilities", [MINTED]),
    ]
    logged = [(line["path"], line.get("credential")) for line in front.logs.lines("request")]
    assert logged == [
        ("/api/machines", None),
        ("/api/alerts", "proxy"),
        ("/api/incidents", None),
        ("/api/vulnerabilities", "proxy"),
    ]
    assert len(await front.token_requests()) == 1


HIDDEN = b"GET /api/alerts HTTP/1.1\r\nHost: proxy.test\r\n\r\n"


async def test_a_tokenless_request_hidden_in_a_body_stays_a_body(front: Front) -> None:
    """A request with its own Authorization whose Content-Length body is a tokenless request:
    the upstream parses one request, the hidden one is its body, and no token is minted."""
    raw = _head(
        f"Authorization: {OWN}\r\nContent-Length: {len(HIDDEN)}\r\nConnection: close\r\n".encode(),
        method=b"POST",
    )
    answer = await front.call(raw + HIDDEN)
    assert answer.status == 200
    (received,) = front.received
    assert (received.method, received.values("authorization")) == ("POST", [OWN])
    assert bytes(received.body) == HIDDEN
    assert await front.token_requests() == []


async def test_a_request_smuggled_past_both_framings_gets_no_token(front: Front) -> None:
    """Content-Length and Transfer-Encoding together, hiding a tokenless request after the chunked
    end: refused by the parser, nothing upstream, no token minted."""
    raw = _head(
        f"Authorization: {OWN}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n".encode(),
        method=b"POST",
    )
    answer = await front.call(raw + b"0\r\n\r\n" + HIDDEN)
    assert answer.status == 400
    assert front.received == []
    assert await front.token_requests() == []


# Requests the guard refuses: none may make the proxy mint, nor carry its token anywhere.
REFUSALS = {
    "CONNECT": b"CONNECT login.microsoftonline.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    "TRACE": _head(method=b"TRACE"),
    "TRACK": _head(method=b"TRACK"),
    "an absolute-form target naming another origin": _head(
        target=b"http://collector.example/api/machines"
    ),
    "an absolute-form target with credentials": _head(
        target=b"http://user:pass@proxy.test/api/machines"
    ),
    "an asterisk-form target": _head(method=b"OPTIONS", target=b"*"),
    "a dot segment": _head(target=b"/api/machines/../alerts"),
    "a declared body over the limit": _head(b"Content-Length: 99999999\r\n", method=b"POST"),
}


async def test_refused_requests_never_mint_nor_carry_the_token(front: Front) -> None:
    """Each refusal before any token exists makes no token request; after one exists, none of
    them sends it anywhere, and neither answers nor the log, metrics or /errors hold it."""
    answers = [await front.call(raw) for raw in REFUSALS.values()]
    assert await front.token_requests() == []
    token = await front.token()
    answers += [await front.call(raw) for raw in REFUSALS.values()]
    assert {answer.status for answer in answers} <= {400, 413}
    assert front.received == []
    assert len(await front.token_requests()) == 1
    shown = "".join(f"{answer.headers}{answer.body!r}" for answer in answers) + front.written()
    assert token not in shown
    assert token.rsplit(".", 1)[1] not in shown


def _reflect(mode: str, authorization: str) -> web.Response:
    """An upstream error answer that echoes the request's Authorization, as ``mode`` says."""
    token = authorization.removeprefix("Bearer ")
    headers = {"request-id": token, "WWW-Authenticate": f'Bearer error="{token}"'}
    if mode == "text":
        return web.Response(status=400, text=f"bad request\r\n{authorization}\r\n", headers=headers)
    bodies = {
        "header in the message": {
            "error": {"code": "BadRequest", "message": f"Authorization: {authorization}"}
        },
        "token as message and target": {
            "error": {"code": "BadRequest", "message": token, "target": token}
        },
        "graph inner error": {
            "error": {
                "code": "InvalidAuthenticationToken",
                "message": "Access token validation failure.",
                "innerError": {"request-id": token, "code": token[:60]},
            }
        },
    }
    return web.json_response(bodies[mode], status=401, headers=headers)


MODES = ("header in the message", "token as message and target", "graph inner error", "text")


async def test_an_upstream_echoing_the_token_reaches_the_caller_but_nothing_the_proxy_writes(
    files: Files,
    tmp_path: Path,
    captured_logs: LogCapture,
    aiohttp_server: Callable[..., Any],
) -> None:
    """An upstream that echoes the Authorization it got into its error answers (body, request-id,
    WWW-Authenticate): the caller sees the token (the upstream's answer is relayed: inherent),
    while the log lines, the metrics and /errors hold neither the token nor its signature."""

    async def echo(request: web.Request) -> web.Response:
        mode = request.query["mode"]
        return _reflect(mode, request.headers.get("Authorization", ""))

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    upstream: TestServer = await aiohttp_server(app)
    origin = f"http://127.0.0.1:{upstream.port}"
    async with holding(files, tmp_path, captured_logs, upstream=origin) as held:
        echoed = []
        for mode in MODES:
            target = f"/api/machines?mode={mode.replace(' ', '+')}".encode()
            answer = await held.call(_head(b"Connection: close\r\n", target=target))
            echoed.append(answer.body.decode())
        token = await held.token()
        assert all(token in body for body in echoed)
        written = held.written()
        assert len(held.logs.lines("request")) == len(MODES)
        assert token not in written
        assert token.rsplit(".", 1)[1] not in written


async def test_an_upstream_redirect_is_relayed_never_followed_with_the_token(
    files: Files,
    tmp_path: Path,
    captured_logs: LogCapture,
    aiohttp_server: Callable[..., Any],
) -> None:
    """A 307 from the upstream to another origin goes back to the caller; that origin receives
    nothing from the proxy (the token never follows a redirect)."""
    elsewhere: list[str] = []

    async def collect(request: web.Request) -> web.Response:
        elsewhere.append(request.headers.get("Authorization", ""))
        return web.Response(text="collected")

    collector = web.Application()
    collector.router.add_route("*", "/{tail:.*}", collect)
    other: TestServer = await aiohttp_server(collector)

    async def redirect(request: web.Request) -> web.Response:
        location = f"http://127.0.0.1:{other.port}/steal"
        return web.Response(status=307, headers={"Location": location})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    upstream: TestServer = await aiohttp_server(app)
    origin = f"http://127.0.0.1:{upstream.port}"
    async with holding(files, tmp_path, captured_logs, upstream=origin) as held:
        answer = await held.call()
        assert answer.status == 307
        assert answer.header("location") == f"http://127.0.0.1:{other.port}/steal"
        assert held.logs.lines("request")[0]["credential"] == "proxy"
    assert elsewhere == []


@pytest.fixture
async def spans(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Spans, Collector]]:
    """Tracing on, exporting at once to a stand-in OTLP collector."""
    collector = Collector()
    await collector.start()
    for key in [key for key in os.environ if key.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    started = Spans(["otlp"])
    yield started, collector
    assert await tracing.stop(started)
    await collector.stop()


async def test_no_span_carries_the_minted_token(
    files: Files, tmp_path: Path, captured_logs: LogCapture, spans: tuple[Spans, Collector]
) -> None:
    """With tracing on, a tokenless request's spans (as the collector receives them, raw) hold
    neither the minted token nor its signature; the upstream got the token."""
    started, collector = spans
    async with holding(files, tmp_path, captured_logs, tracing=started) as held:
        assert (await held.call()).status == 200
        token = await held.token()
        assert held.received[0].values("authorization") == [f"Bearer {token}"]
        await collector.wait_for(lambda found: len(found) >= 2)
    raw = b"".join(collector.bodies)
    assert token.encode() not in raw
    assert token.rsplit(".", 1)[1].encode() not in raw


async def test_a_graph_batch_gets_the_token_outside_and_its_body_untouched(front: Front) -> None:
    """A tokenless $batch (one inner request naming an Authorization of its own): the outer
    request goes with the minted token, and the body, inner headers included, byte for byte."""
    body = json.dumps(
        {
            "requests": [
                {
                    "id": "1",
                    "method": "GET",
                    "url": "/security/alerts_v2",
                    "headers": {"Authorization": OWN},
                },
                {"id": "2", "method": "GET", "url": "/security/incidents"},
            ]
        }
    ).encode()
    head = _head(
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n" % len(body),
        method=b"POST",
        target=b"/v1.0/$batch",
    )
    answer = await front.call(head + body)
    assert answer.status == 200
    (received,) = front.received
    token = await front.token()
    assert _authorizations(received, token) == [MINTED]
    assert bytes(received.body) == body
    (logged,) = front.logs.lines("request")
    assert (logged["route"], logged["credential"], logged["batch_requests"]) == (
        "graph.batch",
        "proxy",
        2,
    )


async def test_a_tokenless_http_1_0_request_without_host_gets_one_token(front: Front) -> None:
    """An HTTP/1.0 request with no Host: forwarded with the minted token, once."""
    answer = await front.call(b"GET /api/machines HTTP/1.0\r\n\r\n")
    assert answer.status == 200
    token = await front.token()
    assert _authorizations(front.received[0], token) == [MINTED]
