"""Hostile input against the real proxy: raw-socket attacks, label cardinality, planted secrets.

The raw requests go to the real CLI (``python -m proxy run``) in front of the simulator, with a
canary beside them: a plain TCP server on another loopback port that records every connection.
Every request that names a host names the canary, and after each one the canary must still have
seen nothing, the simulator must have seen exactly the requests the case expects (a smuggled
second request would show up there), and the proxy must still be alive and serving.

Two parts of the proxy answer hostile requests, and the tests tell them apart:

- the guard (``proxy.guard``, and ``forward.limited_body`` for a streamed body) answers in the
  Defender envelope with ``X-Defender-Proxy-Error``: 400 ``BadRequest``, 413 ``PayloadTooLarge``;
- aiohttp's HTTP parser (llhttp) answers what it cannot parse — malformed request lines, bad
  header bytes, oversized lines and fields, conflicting framing — itself, before the handler
  runs: ``HTTP/1.0 400 Bad Request`` with a plain-text reason, then it closes the connection.

One CLI process, simulator and canary serve all raw-socket cases of this module (a process start
costs more than a second); each case measures the simulator's request count before and after.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy import classify, codes
from proxy.errors import PROXY_HEADER
from proxy.metrics import MAX_DYNAMIC_CODES, OTHER
from proxy.simulator import SimConfig, make_app
from tests.conftest import Stack
from tests.httpraw import RawResponse, exchange, read_response
from tests.procs import Process, start_cli, stop_process

# max_header_size is aiohttp's limit on a request line and on a header field. Shadow mode: the quota
# is computed but never holds a request, so the health checks after every case cannot run a route
# out of its 100/1m.
CONFIG = (
    "upstream: http://127.0.0.1:{upstream}\n"
    "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
    "timeouts: {{connect: 1s, read: 1s}}\nshutdown_grace: 2s\n"
    "log_level: debug\n"
    "limits: {{max_body: 64KiB, max_header_size: 8KiB}}\n"
    "throttle: {{mode: shadow}}\n"
)

Reader = Callable[[int, bytes], Awaitable[list[RawResponse]]]


class Canary:
    """A plain TCP server on another loopback port; any connection to it is a leak."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._record, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _record(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen.append(f"connection from {writer.get_extra_info('peername')}")
        try:
            first = await asyncio.wait_for(reader.read(200), 1.0)
            self.seen.append(repr(first))
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class Hostile:
    """The CLI proxy in front of the in-process simulator, and the canary beside them."""

    process: Process
    port: int
    upstream: int
    canary: Canary

    def render(self, template: bytes) -> bytes:
        """The raw request with ``{canary}``, ``{upstream}`` and ``{proxy}`` replaced by their
        ports."""
        return (
            template.replace(b"{canary}", str(self.canary.port).encode())
            .replace(b"{upstream}", str(self.upstream).encode())
            .replace(b"{proxy}", str(self.port).encode())
        )

    async def upstream_requests(self) -> int:
        """How many requests the simulator has answered (``GET /_sim/stats``)."""
        raw = b"GET /_sim/stats HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n"
        stats = orjson.loads((await exchange(self.upstream, raw)).body)
        count: int = stats["requests"]
        return count

    async def assert_still_serving(self) -> None:
        """The process is alive and forwards an ordinary request."""
        assert self.process.proc.returncode is None, "the proxy process died"
        raw = b"GET /api/alerts HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
        response = await exchange(self.port, raw)
        assert response.status == 200, response

    async def run(
        self, template: bytes, read: Reader | None = None
    ) -> tuple[list[RawResponse], int]:
        """Send one hostile request: (its answers, how many requests reached the upstream).

        ``read`` gets the answers; by default every answer until the proxy closes the connection.
        """
        before = await self.upstream_requests()
        raw = self.render(template)
        answers = await (read or converse)(self.port, raw)
        await self.assert_still_serving()
        # The health check is one more request; counted after it, so anything the hostile
        # request set off upstream has had a full round trip to arrive.
        seen = await self.upstream_requests() - before - 1
        assert self.canary.seen == [], f"the canary was contacted: {self.canary.seen}"
        return answers, seen


async def converse(port: int, raw: bytes, timeout: float = 5.0) -> list[RawResponse]:
    """Send ``raw`` and read every answer until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers: list[RawResponse] = []
    try:
        writer.write(raw)
        # The proxy may answer and close before it has read everything.
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    answers.append(await read_response(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
    except TimeoutError:
        raise AssertionError(
            f"no end of connection within {timeout}s after {[a.status for a in answers]}"
        ) from None
    finally:
        writer.close()
    return answers


async def one_answer(port: int, raw: bytes) -> list[RawResponse]:
    """Send ``raw`` and read exactly one answer."""
    return [await exchange(port, raw)]


async def head_answer(port: int, raw: bytes, timeout: float = 5.0) -> list[RawResponse]:
    """Send ``raw`` (a HEAD) and read one answer's head: it has no body, whatever it declares."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return [await asyncio.wait_for(read_head(reader), timeout)]
    finally:
        writer.close()


async def read_head(reader: asyncio.StreamReader) -> RawResponse:
    """Read the status line and headers of an answer to HEAD (it never has a body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines if line)
    ]
    return RawResponse(int(status_line.split(" ", 2)[1]), headers, b"")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hostile(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hostile]:
    """The real CLI on free ports in front of the simulator, with a canary on another port."""
    canary = Canary()
    await canary.start()
    runner = web.AppRunner(make_app(SimConfig()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = runner.addresses[0][1]
    config = tmp_path_factory.mktemp("hostile") / "proxy.yaml"
    config.write_text(CONFIG.format(upstream=upstream))
    process = await start_cli("run", "--config", str(config))
    drain: asyncio.Task[None] | None = None
    try:
        line = await process.wait_for("listening")
        # Keep reading its output so a full pipe never blocks the proxy.
        drain = asyncio.create_task(process.drain_output())
        yield Hostile(process, int(line["proxy"].rsplit(":", 1)[1]), upstream, canary)
    finally:
        await process.stop()
        if drain is not None:
            await drain
        await runner.cleanup()
        await canary.close()


def _request(line: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def _get(target: bytes, *headers: bytes) -> bytes:
    return _request(b"GET " + target + b" HTTP/1.1", HOST, *headers)


def _post(*headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return _request(b"POST /api/alerts HTTP/" + version, HOST, *headers, body=body)


def _params(table: list[tuple[Any, ...]]) -> list[Any]:
    """Rows of (id, values…) as pytest params; the id states the expected answer."""
    return [pytest.param(*values, id=name) for name, *values in table]


HOST = b"Host: proxy"
CLOSE = b"Connection: close"
CANARY_HOST = b"Host: 127.0.0.1:{canary}"
NEXT = _request(b"GET /api/machines HTTP/1.1", HOST, CLOSE)
TE = b"Transfer-Encoding: chunked"
LAST = b"0\r\n\r\n"  # the last chunk: an empty chunked body


# --- refused by the guard, in the Defender envelope -------------------------------------------

GUARD_CASES = _params([
    # Path tricks (README, "The path of a request", 1): dot segments, raw or percent-encoded …
    ("dotdot--400", _get(b"/api/../admin"), 400),
    ("pct2e-pct2e--400", _get(b"/api/%2e%2e/admin"), 400),
    ("dot-pct2E--400", _get(b"/api/.%2E/admin"), 400),
    ("pct2e-dot--400", _get(b"/api/%2e./admin"), 400),
    ("single-dot--400", _get(b"/api/./machines"), 400),
    ("trailing-dotdot--400", _get(b"/api/machines/.."), 400),
    ("dotdot-before-query--400", _get(b"/api/..?x=1"), 400),
    ("fragment--400", _get(b"/api/x/..#f"), 400),
    ("dotdot-pct3b-params--400", _get(b"/api/machines/x/..%3b/runHuntingQuery"), 400),
    ("absolute-proxy-dotdot-pct3B--400",
     _get(b"http://127.0.0.1:{proxy}/api/machines/x/%2E%2E%3B/runHuntingQuery"), 400),
    # … and encoded separators: %2F, %5C, %00, a raw backslash.
    ("pct2F--400", _get(b"/api/machines%2F..%2Fadmin"), 400),
    ("pct2f-lower--400", _get(b"/api/a%2fb"), 400),
    ("pct5c--400", _get(b"/api/machines%5cadmin"), 400),
    ("backslash--400", _get(b"/api\\..\\admin"), 400),
    ("pct00--400", _get(b"/api/machines%00"), 400),
    # Other target forms: asterisk-form; CONNECT to the canary, to the upstream itself, to a path.
    ("options-asterisk--400", _request(b"OPTIONS * HTTP/1.1", HOST), 400),
    ("connect-canary--400", _request(b"CONNECT 127.0.0.1:{canary} HTTP/1.1", CANARY_HOST), 400),
    ("connect-upstream--400", _request(b"CONNECT 127.0.0.1:{upstream} HTTP/1.1", HOST), 400),
    ("connect-origin-form--400", _request(b"CONNECT /api/alerts HTTP/1.1", CANARY_HOST), 400),
    # Absolute-form targets naming another origin: the canary, spelled every way.
    ("absolute-canary--400",
     _request(b"GET http://127.0.0.1:{canary}/api/alerts HTTP/1.1", CANARY_HOST), 400),
    ("absolute-https-canary--400", _get(b"https://127.0.0.1:{canary}/api/alerts"), 400),
    ("absolute-ws-canary--400", _get(b"ws://127.0.0.1:{canary}/api"), 400),
    ("absolute-localhost--400", _get(b"http://localhost:{canary}/api"), 400),
    ("absolute-decimal-ip--400", _get(b"http://2130706433:{canary}/api"), 400),
    ("absolute-ipv6-loopback--400", _get(b"http://[::1]:{canary}/api"), 400),
    ("absolute-query-only--400", _get(b"http://127.0.0.1:{canary}?x=1"), 400),
    # Userinfo making the upstream look like the host; credentials in a target are refused.
    ("absolute-upstream-as-userinfo--400",
     _get(b"http://127.0.0.1:{upstream}@127.0.0.1:{canary}/api"), 400),
    ("absolute-userinfo-on-upstream--400", _get(b"http://u:p@127.0.0.1:{upstream}/api"), 400),
    # Declared bodies over limits.max_body (64 KiB here): refused before any connection, and
    # before any 100 Continue.
    ("declared-body-1GB--413", _post(b"Content-Length: 1000000000", body=b"abc"), 413),
    ("expect-100-continue-over-limit--413-not-100",
     _post(b"Content-Length: 99999999", b"Expect: 100-continue"), 413),
])  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("raw", "status"), GUARD_CASES)
async def test_guard_refuses_in_the_envelope(hostile: Hostile, raw: bytes, status: int) -> None:
    """Path tricks, other origins, CONNECT and bodies over the limit: the envelope, sent nowhere."""
    # One answer is read: after refusing a declared body aiohttp goes on reading it for up to
    # ~10 s before it closes, though its answer says Connection: close.
    answers, upstream_seen = await hostile.run(raw, read=one_answer)
    [answer] = answers
    assert answer.status == status
    code = {400: "BadRequest", 413: "PayloadTooLarge"}[status]
    assert answer.header(PROXY_HEADER) == code
    assert orjson.loads(answer.body)["error"]["code"] == code
    assert upstream_seen == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_head_with_a_declared_body_over_the_limit_gets_413(hostile: Hostile) -> None:
    """A HEAD declaring a body over the limit is refused with 413 (headers only), sent nowhere."""
    raw = _request(b"HEAD /api/alerts HTTP/1.1", HOST, b"Content-Length: 99999999")
    answers, upstream_seen = await hostile.run(raw, read=head_answer)
    assert [(a.status, a.header(PROXY_HEADER)) for a in answers] == [(413, "PayloadTooLarge")]
    assert upstream_seen == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_streamed_body_over_the_limit_is_cut_with_413(hostile: Hostile) -> None:
    """A chunked body over max_body is cut off with a 413 envelope; nothing reached the upstream."""
    # max_body (64 KiB) is within limits.request_buffer (64 KiB): the body is read before any
    # upstream connection is taken, so the simulator never sees the request start.
    chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
    raw = _post(b"X-Simulate: echo", TE, body=chunk * 6 + LAST)
    answers, upstream_seen = await hostile.run(raw, read=one_answer)
    assert [(a.status, a.header(PROXY_HEADER)) for a in answers] == [(413, "PayloadTooLarge")]
    assert upstream_seen == 0


# --- refused by aiohttp's parser (plain text, not the envelope) -------------------------------

PARSER_CASES = _params([
    # Malformed request lines. Left out until fixed (reported): a request line without a version
    # ("GET /api/alerts", then headers) is taken for HTTP/0.9, forwarded, and answered 200.
    ("request-line-one-token", b"GARBAGE\r\n\r\n"),
    ("lowercase-method", _request(b"get /api/alerts HTTP/1.1", HOST)),
    ("unknown-method", _request(b"FOO /api/alerts HTTP/1.1", HOST)),
    ("method-5000-bytes", _request(b"A" * 5000 + b" /api/alerts HTTP/1.1", HOST)),
    ("version-9.9", _request(b"GET /api/alerts HTTP/9.9", HOST)),
    ("space-in-target", _get(b"/api/al erts")),
    ("nul-in-target", _get(b"/api/\x00alerts")),
    ("utf8-in-target", _get("/api/maé".encode())),
    ("bare-lf-line-ends", b"GET /api/alerts HTTP/1.1\nHost: proxy\n\n"),
    # Oversized: a request line and a header field over max_header_size (8 KiB), and more header
    # fields than aiohttp takes (128). aiohttp answers 400 for each, not 414 or 431.
    ("request-line-20KB", _get(b"/api/" + b"a" * 20_000)),
    ("header-field-20KB", _get(b"/api/alerts", b"X-Big: " + b"a" * 20_000)),
    ("header-flood-1000", _get(b"/api/alerts", *(b"X-Flood-%d: v" % i for i in range(1000)))),
    # CR, LF and other bytes that do not belong in a header; ambiguous Host.
    ("bare-cr-in-value", _get(b"/api/alerts", b"X-A: a\rX-Injected: 1")),
    ("bare-lf-in-value", _get(b"/api/alerts", b"X-A: a\nX-Injected: 1")),
    ("nul-in-value", _get(b"/api/alerts", b"X-A: a\x00b")),
    ("obs-fold", _get(b"/api/alerts", b"X-A: a", b" folded")),
    ("space-before-colon", _get(b"/api/alerts", b"X-A : a")),
    ("bad-name-char", _get(b"/api/alerts", b"X(A): 1")),
    ("empty-name", _get(b"/api/alerts", b": 1")),
    ("second-host-naming-canary", _get(b"/api/alerts", CANARY_HOST)),
    ("http11-without-host", _request(b"GET /api/alerts HTTP/1.1")),
    # Targets naming the canary in ways URL parsers disagree on.
    ("authority-without-scheme", _get(b"127.0.0.1:{canary}/api/alerts")),
    ("absolute-backslash-userinfo", _get(b"http://127.0.0.1:{canary}\\@127.0.0.1:{upstream}/api")),
    ("absolute-fragment-userinfo", _get(b"http://127.0.0.1:{upstream}#@127.0.0.1:{canary}/api")),
    ("absolute-proxy-port-with-suffix", _get(b"http://127.0.0.1:{proxy}.evil.invalid/api")),
])  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("raw", PARSER_CASES)
async def test_parser_answers_malformed_requests_with_400(hostile: Hostile, raw: bytes) -> None:
    """What aiohttp's parser cannot read gets one clean 400, then the connection closes."""
    answers, upstream_seen = await hostile.run(raw)
    assert [a.status for a in answers] == [400]
    assert upstream_seen == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_an_http2_preface_is_refused_in_http2_and_nothing_behind_it_is_read(
    hostile: Hostile,
) -> None:
    """HTTP/2's preface gets no HTTP/1.1 answer (its refusal is HTTP/2 frames), and an HTTP/1.1
    request sent behind it is never parsed, answered or forwarded."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    answers, upstream_seen = await hostile.run(preface + _get(b"/api/alerts"))
    assert answers == []
    assert upstream_seen == 0


# --- framing: smuggling attempts --------------------------------------------------------------

# Each row: the answers until the proxy closes, and how many requests reach the simulator. The
# body bytes of many rows end in a whole second request (NEXT): it must never be answered or sent.
SMUGGLING_CASES = _params([
    # RFC 9112 §6.3 ¶3: Transfer-Encoding with Content-Length "ought to be handled as an error";
    # llhttp refuses the pair in either order however the coding is spelled: aiohttp's 400.
    ("cl-te--parser-400", _post(b"Content-Length: 4", TE, body=LAST + NEXT), [400], 0),
    ("te-cl--parser-400", _post(TE, b"Content-Length: 50", body=LAST + NEXT), [400], 0),
    ("te-tab-cl--parser-400",
     _post(b"Transfer-Encoding:\tchunked", b"Content-Length: 4", body=LAST), [400], 0),
    ("te-uppercase-cl--parser-400",
     _post(b"TRANSFER-ENCODING: CHUNKED", b"Content-Length: 4", body=LAST), [400], 0),
    ("te-identity-cl--parser-400",
     _post(b"Transfer-Encoding: identity", b"Content-Length: 4", body=b"abcd"), [400], 0),
    ("te-xchunked-cl--parser-400",
     _post(b"Transfer-Encoding: xchunked", b"Content-Length: 4", body=LAST), [400], 0),
    ("te-vertical-tab--parser-400", _post(b"Transfer-Encoding: \x0bchunked", body=LAST), [400], 0),
    ("http10-keepalive-cl-te--parser-400",
     _post(b"Connection: keep-alive", b"Content-Length: 5", TE, body=LAST + NEXT, version=b"1.0"),
     [400], 0),
    # §6.3 ¶4: chunked must be the final coding, else 400 and close.
    ("te-chunked-then-identity--parser-400",
     _post(TE, b"Transfer-Encoding: identity", body=LAST + NEXT), [400], 0),
    ("te-chunked-not-final--parser-400",
     _post(b"Transfer-Encoding: chunked, gzip", body=LAST + NEXT), [400], 0),
    # §6.3 ¶5: an invalid Content-Length is unrecoverable: 400 and close.
    ("two-content-lengths--parser-400",
     _post(b"Content-Length: 0", b"Content-Length: %d" % len(NEXT), body=NEXT), [400], 0),
    ("content-length-list--parser-400",
     _post(b"Content-Length: 0, %d" % len(NEXT), body=NEXT), [400], 0),
    ("cl-negative--parser-400", _post(b"Content-Length: -1"), [400], 0),
    ("cl-plus--parser-400", _post(b"Content-Length: +4", body=b"abcd"), [400], 0),
    ("cl-hex--parser-400", _post(b"Content-Length: 0x10"), [400], 0),
    ("cl-inner-space--parser-400", _post(b"Content-Length: 1 0"), [400], 0),
    ("cl-overflow--parser-400", _post(b"Content-Length: 99999999999999999999999"), [400], 0),
    # Chunk framing the parser cannot read: 400, and what follows is never a request.
    ("chunk-size-overflow--parser-400",
     _post(TE, body=b"fffffffffffffffffff\r\nabc\r\n" + LAST), [400], 0),
    ("chunk-bare-lf--parser-400", _post(TE, body=b"3\nabc\n0\n\n" + NEXT), [400], 0),
    ("chunk-longer-than-size--parser-400",
     _post(TE, body=b"3\r\nabcdef\r\n" + LAST + NEXT), [400], 0),
    ("chunk-ext-bare-lf--parser-400", _post(TE, body=b"3;x\nyy\r\nabc\r\n" + LAST), [400], 0),
    ("chunk-size-trailing-space--parser-400", _post(TE, body=b"3 \r\nabc\r\n" + LAST), [400], 0),
    # §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing and the connection must close after
    # the message. Bytes after a message that ends its connection are refused outright by llhttp
    # ("Data after Connection: close"): aiohttp's 400, and not even the first request is sent.
    # The proxy's guard refuses Transfer-Encoding in any HTTP/1.0 request, keep-alive or not, so
    # nothing framed that way reaches the upstream.
    ("http10-te-then-more--parser-400", _post(TE, body=LAST + NEXT, version=b"1.0"), [400], 0),
    ("http10-te-alone--guard-400", _post(TE, body=LAST, version=b"1.0"), [400], 0),
    # §6.3 ¶6: Content-Length alone frames the body, so a request inside a GET's body stays body:
    # one upstream request (carrying it as its body), one answer.
    ("request-in-get-body--one-answer",
     _get(b"/api/alerts", CLOSE, b"Content-Length: %d" % len(NEXT)) + NEXT, [200], 1),
    # A refused request's connection is closed: the bytes after it are never read as a request.
    ("pipelined-after-guard-refusal--guard-400", _get(b"/api/%2e%2e/x") + NEXT, [400], 0),
    ("connect-then-tunnel-bytes--guard-400",
     _request(b"CONNECT 127.0.0.1:{canary} HTTP/1.1", CANARY_HOST) + NEXT, [400], 0),
    # Upgrade is hop-by-hop and never honoured (no 101). aiohttp's parser may take what follows
    # an Upgrade request for upgraded bytes, so the proxy answers it and closes the connection:
    # one answer, and the pipelined request is neither forwarded nor left waiting.
    ("upgrade-then-pipelined--one-answer-then-close",
     _get(b"/api/alerts", b"Connection: Upgrade", b"Upgrade: websocket") + NEXT, [200], 1),
    ("upgrade-with-body-then-pipelined--one-answer-then-close",
     _post(b"Connection: Upgrade", b"Upgrade: h2c", b"Content-Length: 3", body=b"abc") + NEXT,
     [200], 1),
    # A Connection header may name hop-by-hop headers, never the framing: the proxy sends its own
    # length, so the request in the body stays body (one upstream request), whatever else follows.
    ("connection-names-content-length--one-request",
     _post(b"Connection: close, Content-Length", b"Content-Length: %d" % len(NEXT), body=NEXT),
     [200], 1),
    ("connection-names-content-length-then-pipelined--two-requests",
     _post(b"Connection: keep-alive, content-length", b"Content-Length: %d" % len(NEXT),
           body=NEXT) + NEXT, [200, 200], 2),
    ("connection-names-transfer-encoding--one-request",
     _post(b"Connection: transfer-encoding, close", TE,
           body=b"%x\r\n%s\r\n" % (len(NEXT), NEXT) + LAST), [200], 1),
    # Control: two honest pipelined requests are two answers and two upstream requests.
    ("pipelined-control--two-answers", _get(b"/api/alerts") + NEXT, [200, 200], 2),
])  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("raw", "statuses", "upstream_requests"), SMUGGLING_CASES)
async def test_framing_attacks_never_smuggle_a_request(
    hostile: Hostile, raw: bytes, statuses: list[int], upstream_requests: int
) -> None:
    """Conflicting or broken framing gives the expected answers and upstream requests, no more."""
    answers, upstream_seen = await hostile.run(raw)
    assert [a.status for a in answers] == statuses
    assert upstream_seen == upstream_requests


# --- hosts named in headers: forwarded, but only ever to the upstream --------------------------

ECHO = b"X-Simulate: echo"
ALERTS = b"GET /api/alerts HTTP/1.1"

# A Host (or X-Forwarded-Host …) naming another host is not refused, by design: the proxy always
# sends the upstream's own Host and only ever connects to its upstream. These rows prove it: the
# simulator answers, its request carries the upstream's Host, the canary sees nothing. Each row
# gives the path the simulator must see.
FORWARDED_CASES = _params([
    ("host-canary", _request(ALERTS, CANARY_HOST, ECHO, CLOSE), "/api/alerts"),
    ("host-with-path", _request(ALERTS, b"Host: 127.0.0.1:{canary}/x", ECHO, CLOSE), "/api/alerts"),
    ("host-with-userinfo", _request(ALERTS, b"Host: u@127.0.0.1:{canary}", ECHO, CLOSE),
     "/api/alerts"),
    ("forwarding-headers-naming-canary",
     _get(b"/api/alerts", ECHO, CLOSE,
          b"X-Forwarded-Host: 127.0.0.1:{canary}", b"X-Host: 127.0.0.1:{canary}",
          b"Forwarded: for=192.0.2.1;host=127.0.0.1:{canary};proto=http",
          b"X-Original-URL: http://127.0.0.1:{canary}/",
          b"X-Rewrite-URL: http://127.0.0.1:{canary}/"),
     "/api/alerts"),
    ("upgrade-websocket-with-canary-host",
     _request(ALERTS, CANARY_HOST, b"Connection: Upgrade, close", b"Upgrade: websocket", ECHO),
     "/api/alerts"),
    # Absolute-form naming the upstream itself is forwarded as its origin-form path.
    ("absolute-upstream",
     _request(b"GET http://127.0.0.1:{upstream}/api/alerts?x=1 HTTP/1.1", CANARY_HOST, ECHO, CLOSE),
     "/api/alerts?x=1"),
    ("absolute-upstream-uppercase-scheme",
     _get(b"HTTP://127.0.0.1:{upstream}/api/alerts", ECHO, CLOSE), "/api/alerts"),
    # "//host/…" is an origin-form path whose first segment is empty: it goes to the upstream byte
    # for byte, never to the host it spells.
    ("scheme-relative-path", _get(b"//127.0.0.1:{canary}/api/alerts", ECHO, CLOSE),
     "//127.0.0.1:{canary}/api/alerts"),
    # Absolute-form naming the proxy's own listener (HTTP_PROXY pointed at the proxy, and the
    # proxy as the base URL) is served as its origin-form rest, whatever Host says.
    ("absolute-proxy-itself",
     _request(b"GET http://127.0.0.1:{proxy}/api/alerts?x=1 HTTP/1.1", CANARY_HOST, ECHO, CLOSE),
     "/api/alerts?x=1"),
    ("absolute-proxy-uppercase-scheme",
     _get(b"HTTP://127.0.0.1:{proxy}/api/alerts", ECHO, CLOSE), "/api/alerts"),
    ("absolute-proxy-https-scheme",
     _get(b"https://127.0.0.1:{proxy}/api/alerts", ECHO, CLOSE), "/api/alerts"),
    ("absolute-proxy-localhost",
     _get(b"http://LocalHost:{proxy}/api/alerts", ECHO, CLOSE), "/api/alerts"),
    ("absolute-proxy-then-host-in-path",
     _get(b"http://127.0.0.1:{proxy}//127.0.0.1:{canary}/api", ECHO, CLOSE),
     "//127.0.0.1:{canary}/api"),
])  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("raw", "path"), FORWARDED_CASES)
async def test_other_hosts_in_headers_reach_only_the_upstream(
    hostile: Hostile, raw: bytes, path: str
) -> None:
    """Hosts named in Host, forwarding headers or the target: only the upstream, with its Host."""
    answers, upstream_seen = await hostile.run(raw)
    [answer] = answers
    assert answer.status == 200
    echo = orjson.loads(answer.body)
    hosts = [value for name, value in echo["headers"] if name.lower() == "host"]
    assert hosts == [f"127.0.0.1:{hostile.upstream}"]
    assert echo["raw_path"] == hostile.render(path.encode()).decode()
    assert not any(name.lower() == "upgrade" for name, _ in echo["headers"])
    assert upstream_seen == 1


# --- asking for a forward proxy: refused with the origin served and the base URL to set --------

# Absolute-form targets that look like the proxy's own listener but are not (userinfo, another
# address or port, percent-encoding, another scheme), and CONNECT. None may reach any host but the
# upstream (none reaches even that), and the advice never echoes the hostile target.
FORWARD_PROXY_CASES = _params([
    ("userinfo-on-proxy", _get(b"http://u@127.0.0.1:{proxy}/api/alerts")),
    ("password-on-proxy", _get(b"http://u:hunter2@127.0.0.1:{proxy}/api/alerts")),
    ("proxy-as-userinfo-of-canary", _get(b"http://127.0.0.1:{proxy}@127.0.0.1:{canary}/api")),
    ("proxy-as-userinfo-of-evil", _get(b"http://127.0.0.1:{proxy}@evil.invalid/")),
    ("ipv6-loopback-same-port", _get(b"http://[::1]:{proxy}/api/alerts")),
    ("ipv6-mapped-canary", _get(b"http://[::ffff:127.0.0.1]:{canary}/api/alerts")),
    ("other-loopback-same-port", _get(b"http://127.0.0.2:{proxy}/api/alerts")),
    ("port-omitted", _get(b"http://127.0.0.1/api/alerts")),
    ("port-empty", _get(b"http://127.0.0.1:/api/alerts")),
    ("percent-encoded-colon", _get(b"http://127.0.0.1%3A{proxy}/api/alerts")),
    ("percent-encoded-host", _get(b"http://%31%32%37.0.0.1:{proxy}/api/alerts")),
    ("ws-scheme", _get(b"ws://127.0.0.1:{proxy}/api/alerts")),
    ("connect-proxy-itself", _request(b"CONNECT 127.0.0.1:{proxy} HTTP/1.1", HOST)),
    ("connect-canary", _request(b"CONNECT 127.0.0.1:{canary} HTTP/1.1", CANARY_HOST)),
])  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("raw", FORWARD_PROXY_CASES)
async def test_a_forward_proxy_request_is_refused_with_what_to_do(
    hostile: Hostile, raw: bytes
) -> None:
    """Not quite the proxy's own URL, or CONNECT: 400 with the advice, nothing sent anywhere."""
    answers, upstream_seen = await hostile.run(raw, read=one_answer)
    [answer] = answers
    assert answer.status == 400
    assert answer.header(PROXY_HEADER) == "BadRequest"
    message = orjson.loads(answer.body)["error"]["message"]
    base = f"http://127.0.0.1:{hostile.port}"
    assert f"it serves http://127.0.0.1:{hostile.upstream} at {base};" in message
    assert f"set the client's base URL to {base} instead of HTTP_PROXY/HTTPS_PROXY" in message
    assert not any(secret in message for secret in ("hunter2", "u@", "evil", "%"))
    assert upstream_seen == 0


# --- label cardinality ------------------------------------------------------------------------

KNOWN_CODES = (
    frozenset(codes.ERROR_TABLE) | codes.SEEN_IN_THE_WILD | codes.PROXY_CODES | classify.MARKERS
)
_DOCUMENTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
METHOD_LABELS = frozenset({*_DOCUMENTED_METHODS, OTHER})
# Mostly GET; PROPFIND and PURGE are methods llhttp accepts and the label calls "other".
SENT_METHODS = ("GET",) * 5 + _DOCUMENTED_METHODS + ("PROPFIND", "PURGE")
# The statuses this traffic can get: the simulator's 200; the guard's 400 for a random path with a
# dot segment or an encoded separator; the simulator's 400 for every error= request; and the
# simulator's 404 when its own router cannot match a path that decodes to a newline (%0A) — the
# same plain-text page every time, so always the code _not_json (_empty for a HEAD).
STATUSES = frozenset({"200", "400", "404"})
SOURCES = frozenset({"upstream", "proxy"})
CODE_PATHS = ("/api/alerts", "/api/machines/{id}", "/api/indicators")
_WORDS = (
    "api", "v1.0", "beta", "machines", "alerts", "files", "ips", "domains", "indicators",
    "machineactions", "investigations", "incidents", "advancedqueries", "run", "security",
    "isolate", "tags", "findbyip", "BatchDelete", "import", "getPackageUri", "users", "..",
    "%2e%2e", "%2F", "x",
)  # fmt: skip
_PCHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
_JUNK = "".join(chr(c) for c in range(0x21, 0x7F))


def _random_path(rng: random.Random) -> str:
    segments = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.random()
        if kind < 0.4:
            segments.append(rng.choice(_WORDS))
        elif kind < 0.7:
            segments.append(f"{rng.getrandbits(rng.randint(8, 160)):x}")
        elif kind < 0.9:
            segments.append("".join(rng.choices(_PCHARS, k=rng.randint(1, 24))))
        else:
            segments.append("".join(f"%{rng.randrange(256):02X}" for _ in range(rng.randint(1, 4))))
    path = "/" + "/".join(segments)
    if rng.random() < 0.3:
        path += "?" + "&".join(
            f"{rng.choice(_WORDS)}={rng.getrandbits(32):x}" for _ in range(rng.randint(1, 3))
        )
    return path


def _random_code(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.2:
        return rng.choice(sorted(KNOWN_CODES | {"429"}))
    if kind < 0.6:  # valid-looking: a CamelCase word and a number
        word = "".join(rng.choices(string.ascii_letters, k=rng.randint(3, 20)))
        return f"{word.capitalize()}{rng.randrange(10_000)}"
    if kind < 0.7:  # too long to be a code
        return "".join(rng.choices(string.ascii_letters, k=rng.randint(65, 120)))
    return "".join(rng.choices(_JUNK + " ", k=rng.randint(1, 40))).strip() or "_"


async def _drive(port: int, jobs: list[tuple[str, str, str]], concurrency: int = 50) -> list[int]:
    """Send every (method, target, extra header lines) over keep-alive connections; the statuses."""
    statuses: list[int] = []
    pending = iter(jobs)

    async def worker() -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for method, target, extra in pending:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            writer.write(f"{method} {target} HTTP/1.1\r\nHost: proxy\r\n{extra}\r\n".encode())
            answer = await (read_head(reader) if method == "HEAD" else read_response(reader))
            statuses.append(answer.status)
            if answer.header("connection") == "close":  # the guard's refusals close
                writer.close()
                connection = None
        if connection is not None:
            connection[1].close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def _samples(stack: Stack, name: str) -> list[Any]:
    families = text_string_to_metric_families(stack.metrics.exposition().decode())
    return [s for f in families for s in f.samples if s.name == name]


async def test_random_paths_and_codes_keep_metric_series_bounded(make_stack: Any) -> None:
    """10,000 random paths and 10,000 random error codes leave the series within the closed sets."""
    stack: Stack = await make_stack()
    rng = random.Random(20240607)
    paths = [(rng.choice(SENT_METHODS), _random_path(rng), "") for _ in range(10_000)]
    errors = [
        (
            "GET",
            rng.choice(CODE_PATHS).replace("{id}", f"{rng.getrandbits(64):x}"),
            f"X-Simulate: error={_random_code(rng)}:400\r\n",
        )
        for _ in range(10_000)
    ]
    assert len({path for _, path, _ in paths}) > 9_000
    statuses = await _drive(stack.port, paths + errors)
    assert len(statuses) == 20_000
    assert {str(status) for status in statuses} <= STATUSES

    routes = stack.proxy.router.names
    requests = _samples(stack, "defender_proxy_requests_total")
    api_errors = _samples(stack, "defender_api_errors_total")
    assert sum(s.value for s in requests) == 20_000
    assert sum(s.value for s in api_errors) == statuses.count(404) + 10_000
    # Every label value from its closed set…
    assert {s.labels["route"] for s in requests + api_errors} <= routes
    assert {s.labels["method"] for s in requests} <= METHOD_LABELS
    assert {s.labels["status"] for s in requests + api_errors} <= STATUSES
    assert {s.labels["source"] for s in requests} <= SOURCES
    code_labels = {s.labels["code"] for s in api_errors}
    dynamic = code_labels - KNOWN_CODES - {OTHER}
    assert len(dynamic) == MAX_DYNAMIC_CODES  # the budget filled up…
    assert OTHER in code_labels  # …and the rest went to "other"
    not_found_codes = {"_not_json", "_empty"}
    assert {s.labels["code"] for s in api_errors if s.labels["status"] == "404"} <= not_found_codes
    assert {s.labels["route"] for s in api_errors if s.labels["status"] == "400"} <= {
        stack.proxy.router.match("GET", path.replace("{id}", "1")).name for path in CODE_PATHS
    }
    # …so the series are bounded by the product of the sets, whatever the traffic: every request
    # series, the error= requests' (3 routes × status 400 × the code budget) and the 404s'
    # (any route × 404 × _not_json or _empty).
    requests_bound = len(routes) * len(METHOD_LABELS) * len(STATUSES) * len(SOURCES)
    code_budget = len(KNOWN_CODES) + MAX_DYNAMIC_CODES + 1
    errors_bound = len(CODE_PATHS) * 1 * code_budget + len(routes) * 1 * len(not_found_codes)
    assert requests_bound + errors_bound < 5_000
    assert len(requests) <= requests_bound
    assert len(api_errors) <= errors_bound
    assert len(requests) + len(api_errors) <= requests_bound + errors_bound


# --- secrets ----------------------------------------------------------------------------------

JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJhdWQiOiJodHRwczovL2FwaS5zZWN1cml0eWNlbnRlci5taWNyb3NvZnQuY29tIiwic3ViIjoicGxhbnRlZCJ9"
    ".UExBTlRFRC1KV1QtU0lHTkFUVVJFLWRvLW5vdC1sb2c"
)
BASIC_PASSWORD = "Pl4nted-B4sic-Pw"
BASIC = base64.b64encode(f"svc-soar:{BASIC_PASSWORD}".encode()).decode()
PROXY_PASSWORD = "Pl4nted-Pr0xy-Pw"
PROXY_BASIC = base64.b64encode(f"gateway:{PROXY_PASSWORD}".encode()).decode()
COOKIE = "Pl4nted-C00kie-V4lue"
QUERY = {
    "access_token": "Pl4nted-Acc3ss-T0ken",
    "sig": "Pl4nted-S1gn4ture",
    "client_secret": "Pl4nted-Cl1ent-S3cret",
}
SECRETS = (JWT, JWT.rsplit(".", 1)[1], BASIC, BASIC_PASSWORD, PROXY_BASIC, PROXY_PASSWORD, COOKIE,
           *QUERY.values())  # fmt: skip


def _with_secrets(line: str, *headers: str, bearer: bool = True) -> bytes:
    authorization = f"Bearer {JWT}" if bearer else f"Basic {BASIC}"
    planted = (
        "Host: proxy",
        f"Authorization: {authorization}",
        f"Proxy-Authorization: Basic {PROXY_BASIC}",
        f"Cookie: session={COOKIE}; theme=dark",
        "Connection: close",
    )
    return _request(line.encode(), *(h.encode() for h in (*planted, *headers)))


async def test_planted_secrets_never_reach_logs_metrics_or_proxy_answers(
    simulator: TestServer, tmp_path: Path
) -> None:
    """Tokens in Authorization, Proxy-Authorization, Cookie, the query: nowhere the proxy writes."""
    config = tmp_path / "proxy.yaml"
    config.write_text(CONFIG.format(upstream=simulator.port))
    process = await start_cli("run", "--config", str(config))
    assert process.proc.stdout is not None
    try:
        line = await process.wait_for("listening")
    except BaseException:
        await process.stop()
        raise
    # Left out until fixed (reported): a malformed request carrying a token (a control byte after
    # it) makes aiohttp write the raw line to stderr and into its 400.
    # Everything it writes from here on, read until it exits.
    rest = asyncio.create_task(process.proc.stdout.read())
    try:
        port = int(line["proxy"].rsplit(":", 1)[1])
        admin = int(line["admin"].rsplit(":", 1)[1])
        q = QUERY
        requests = [
            # Upstream answers: a success, a Defender error, a Graph error.
            _with_secrets(f"GET /api/alerts?access_token={q['access_token']}&$top=1 HTTP/1.1"),
            _with_secrets(
                f"GET /api/machines?sig={q['sig']} HTTP/1.1",
                "X-Simulate: error=Unauthorized",
                bearer=False,
            ),
            _with_secrets(
                f"GET /v1.0/security/alerts_v2?client_secret={q['client_secret']} HTTP/1.1",
                "X-Simulate: graph-error=InvalidAuthenticationToken:401",
            ),
            # The proxy's own answers: guard 400 (path, other origin), 413, an unreadable
            # X-Defender-Proxy-* header holding a token, 502 and 504 from the upstream's failures.
            _with_secrets(f"GET /api/%2e%2e/machines?access_token={q['access_token']} HTTP/1.1"),
            _with_secrets(
                f"GET http://evil.example/api/alerts?sig={q['sig']} HTTP/1.1", bearer=False
            ),
            _with_secrets(
                f"POST /api/alerts?client_secret={q['client_secret']} HTTP/1.1",
                "Content-Length: 99999999",
            ),
            _with_secrets("GET /api/alerts HTTP/1.1", f"X-Defender-Proxy-Priority: Bearer {JWT}"),
            _with_secrets(f"GET /api/alerts?sig={q['sig']} HTTP/1.1", "X-Simulate: reset"),
            _with_secrets(
                f"GET /api/alerts?access_token={q['access_token']} HTTP/1.1",
                "X-Simulate: slow=1500ms",
                bearer=False,
            ),
            # An upstream error code shaped like a secret.
            _with_secrets(
                "GET /api/machines HTTP/1.1",
                f"X-Simulate: error=client_secret={q['client_secret']}:400",
            ),
        ]
        answers = [await exchange(port, raw) for raw in requests]
        # The secrets were really sent: the upstream gets Authorization byte for byte.
        echo = await exchange(port, _with_secrets("GET /api/alerts HTTP/1.1", "X-Simulate: echo"))
        assert [a.status for a in answers] == [200, 401, 401, 400, 400, 413, 400, 502, 504, 400]
        assert ["Authorization", f"Bearer {JWT}"] in orjson.loads(echo.body)["headers"]
        own = [a for a in answers if a.header(PROXY_HEADER) is not None]
        expected_own = {"BadRequest", "PayloadTooLarge", "BadGateway", "GatewayTimeout"}
        assert {a.header(PROXY_HEADER) for a in own} == expected_own
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
                metrics = await response.text()
        assert "defender_proxy_requests_total" in metrics
    finally:
        await stop_process(process.proc)
    output = b"".join(orjson.dumps(entry) + b"\n" for entry in process.lines) + await rest
    logged = [orjson.loads(raw) for raw in output.splitlines() if raw.startswith(b"{")]
    assert sum(1 for entry in logged if entry.get("event") == "request") == len(requests) + 1
    written = {
        "process output": output.decode(errors="replace"),
        "metrics": metrics,
        "proxy answers": b"".join(a.body + repr(a.headers).encode() for a in own).decode(),
    }
    for place, text in written.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} in {place}"
