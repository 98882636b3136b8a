"""The differential framing harness: raw requests through the real proxy to a recording upstream.

One proxy (the real low-level server of ``proxy.app``, on a real loopback socket, in this process)
and one h11 upstream (``tests.rawupstream``) serve every case; each case gets a new caller
connection, a fresh upstream pool and a fresh recording, so nothing one case leaves behind can be
read by the next. A case is a ``Conversation`` (``tests.framegen``); ``Harness.run`` writes its
bytes, reads every answer until the proxy closes the connection, waits until the proxy, its pool
and the upstream are all idle, and compares three accounts of the same traffic:

- the proxy's log lines (one per request it read, ``source: upstream`` when it forwarded one;
  one ``request refused by the HTTP parser`` line for what aiohttp's parser refused),
- what the upstream parsed (method, target, headers, whole body, and its answer),
- what the caller sent (with the reading RFC 9112 gives it) and the answers it got.

``Mismatch.kind`` is a short class name: the report groups failures by it.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from proxy import app as wiring
from proxy import forward, logs
from proxy.config import Limits, Settings, Timeouts, effective_routes, route_policies
from proxy.errors import PROXY_HEADER
from proxy.handler import Proxy
from proxy.metrics import Metrics
from proxy.quota.limiter import Limiter
from proxy.quota.memory import MemoryStore
from proxy.routing import Router
from proxy.throttle_config import SHADOW, Throttle
from tests.framegen import Conversation, Reading, Sent
from tests.httpraw import RawResponse, read_response
from tests.rawupstream import RawUpstream, Recording, UpstreamRequest

# How long a caller waits for the proxy to end a conversation. Every conversation is complete:
# a proxy that reads it as RFC 9112 does answers it all or refuses and closes, in milliseconds;
# only one that waits for bytes that never come (a body or a request it reads differently) stalls.
STALL = 2.0
# Bounds (in 1 ms steps) on waiting for the proxy and the upstream to go idle after a case.
_IDLE_STEPS = 3000
REQUEST = "request"
PARSER_REFUSAL = "request refused by the HTTP parser"
# Fields the proxy itself sets on the upstream request: its framing, Host and the request id.
OWN = frozenset({"host", "content-length", "transfer-encoding", "client-request-id"})
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection",
     "proxy-authenticate", "proxy-authorization", "transfer-encoding"}
)  # fmt: skip
_SPACES = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class Mismatch:
    """One disagreement between the three accounts of a case."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.detail}"


@dataclass
class Observed:
    """Everything one case produced."""

    answers: list[RawResponse]
    lines: list[dict[str, Any]]
    recording: Recording
    stalled: bool


class Harness:
    """The proxy in front of the recording upstream; ``run`` sends one conversation."""

    def __init__(self) -> None:
        self.upstream = RawUpstream()
        self.stream = io.StringIO()
        self.port = 0
        self.cases = 0
        self._runner: web.ServerRunner | None = None
        self._server: web.Server | None = None
        self._proxy: Proxy | None = None
        self._logging: dict[str, Any] | None = None

    async def start(self) -> None:
        self._logging = structlog.get_config()
        logs.configure("json", "debug", self.stream)
        await self.upstream.start()
        # Shadow mode: every request is admitted (and counted) and none waits.
        throttle = Throttle(mode=SHADOW)
        settings = Settings(
            upstream=f"http://127.0.0.1:{self.upstream.port}",
            timeouts=Timeouts(connect=2.0, read=5.0),
            limits=Limits(max_body=64 * 1024, max_header_size=8192),
            throttle=throttle,
        )
        metrics = Metrics()
        router = Router(effective_routes(throttle))
        limiter = Limiter(throttle, router.routes, route_policies(throttle), MemoryStore(), metrics)
        self._proxy = Proxy(settings, metrics, router, limiter)
        await self._proxy.start()
        self._server = wiring.proxy_server(self._proxy)
        self._runner = web.ServerRunner(self._server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._proxy is not None:
            await self._proxy.close()
        await self.upstream.close()
        if self._logging is not None:
            structlog.configure(**self._logging)  # as the harness found it

    @property
    def upstream_host(self) -> str:
        return f"127.0.0.1:{self.upstream.port}"

    async def run(self, conversation: Conversation) -> list[Mismatch]:
        """Send one conversation; every mismatch between the three accounts of it."""
        return compare(conversation, await self.observe(conversation), self.upstream_host)

    async def observe(self, conversation: Conversation) -> Observed:
        """Send one conversation and collect what the caller, the proxy and the upstream saw."""
        self.cases += 1
        offset = len(self.stream.getvalue())
        raw = conversation.raw
        answers: list[RawResponse] = []
        stalled = False
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            async with asyncio.timeout(STALL):
                cuts = [0, *conversation.writes, len(raw)]
                for start, end in itertools.pairwise(cuts):
                    # The proxy may answer and close before it has read everything.
                    try:
                        writer.write(raw[start:end])
                        await writer.drain()
                    except (ConnectionError, RuntimeError):  # uvloop: "the handler is closed"
                        break
                    # A few turns of the loop: the proxy reads this write (and starts its
                    # handler) before the next one arrives, as it would from a slower caller.
                    for _ in range(4):
                        await asyncio.sleep(0)
                while True:
                    try:
                        answer = await read_response(reader)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        break
                    if not 100 <= answer.status < 200:
                        answers.append(answer)
        except TimeoutError:
            stalled = True
        finally:
            writer.close()
        await self._settle()
        lines = [orjson.loads(x) for x in self.stream.getvalue()[offset:].splitlines() if x]
        return Observed(answers, lines, self.upstream.reset(), stalled)

    async def _settle(self) -> None:
        """Wait until the proxy has no connection and no request, then renew its pool and wait
        until the upstream has seen every connection close (it has then parsed every byte)."""
        proxy, server = self._proxy, self._server
        assert proxy is not None
        assert server is not None
        for _ in range(_IDLE_STEPS):
            if not server.connections and proxy.in_flight == 0:
                break
            await asyncio.sleep(0.001)
        pool = proxy.pool
        proxy.pool = forward.make_pool(proxy.settings)
        if pool is not None:
            await pool.close()
        for _ in range(_IDLE_STEPS):
            if self.upstream.recording.open == 0:
                break
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)  # the log lines of the last loop iteration are written now


def _norm(value: str) -> str:
    return _SPACES.sub(" ", value).strip()


def _path(target: str) -> str:
    return target.partition("?")[0]


def _refused(line: dict[str, Any]) -> bool:
    if line["event"] == PARSER_REFUSAL:
        return True
    return bool(line["source"] == "proxy" and 400 <= line["status"] < 500)


def compare(conversation: Conversation, seen: Observed, upstream_host: str) -> list[Mismatch]:
    """Every disagreement between the caller's, the proxy's and the upstream's account."""
    out: list[Mismatch] = []
    handled = [x for x in seen.lines if x.get("event") in (REQUEST, PARSER_REFUSAL)]
    forwarded = [x for x in handled if x["event"] == REQUEST and x["source"] == "upstream"]
    complete = seen.recording.complete
    out += [
        Mismatch("proxy-crash", str(x.get("error")))
        for x in seen.lines
        if x.get("event") == "unexpected error"
    ]
    out += [Mismatch("upstream-unparsable", error) for error in seen.recording.errors]
    logged = [(x["method"], x["path"]) for x in forwarded]
    parsed = [(u.method, _path(u.target)) for u in complete]
    aligned = logged == parsed
    if not aligned:
        kind = "smuggled" if len(parsed) > len(logged) else "forwarded-unlogged"
        out.append(Mismatch(kind, f"the upstream parsed {parsed}, the proxy logged {logged}"))
    cut = {x["path"] for x in handled if x["event"] == REQUEST and x["source"] == "proxy"}
    out += [
        Mismatch("upstream-partial", f"{p.method} {p.target} unfinished")
        for p in seen.recording.partial
        if _path(p.target) not in cut
    ]
    if seen.stalled:
        last = handled[-1] if handled else {}
        out.append(Mismatch("stalled", f"no answer and no close within {STALL} s; the proxy's "
                            f"last line: {last.get('path')} {last.get('status')} {last.get('note', '')}"))  # fmt: skip
    by_path = {r.path: r for r in conversation.requests}
    if aligned:
        for line, upstream in zip(forwarded, complete, strict=True):
            out += _check_forwarded(line, upstream, by_path.get(line["path"]), upstream_host)
    out += _check_answers(handled, forwarded, complete if aligned else None, seen.answers)
    out += _check_reading(conversation, handled, forwarded, complete if aligned else None, seen)
    return out


def _check_forwarded(
    line: dict[str, Any], upstream: UpstreamRequest, sent: Sent | None, upstream_host: str
) -> list[Mismatch]:
    """One forwarded request: its body as the proxy read it, its framing, its headers."""
    out: list[Mismatch] = []
    what = f"{upstream.method} {upstream.target}"
    if line.get("quota") is None:
        out.append(Mismatch("unadmitted", f"{what} was forwarded without an admission"))
    if len(upstream.body) != line["bytes_in"]:
        out.append(
            Mismatch("body-length", f"{what}: upstream got {len(upstream.body)} body bytes, "
                     f"the proxy logged {line['bytes_in']} read")
        )  # fmt: skip
    lengths, codings = upstream.values("content-length"), upstream.values("transfer-encoding")
    own = (lengths == [str(len(upstream.body))] and not codings) or (
        codings == ["chunked"] and not lengths
    )
    if not own and (lengths or codings or upstream.body):
        out.append(Mismatch("upstream-framing", f"{what}: Content-Length {lengths}, "
                            f"Transfer-Encoding {codings}, {len(upstream.body)} body bytes"))  # fmt: skip
    if upstream.values("host") != [upstream_host]:
        out.append(Mismatch("upstream-host", f"{what}: Host {upstream.values('host')}"))
    ids = upstream.values("client-request-id")
    if ids and ids != [line["request_id"]]:
        out.append(Mismatch("request-id", f"{what}: sent {ids}, logged {line['request_id']!r}"))
    out += [
        Mismatch("hop-by-hop-forwarded", f"{what}: {name} reached the upstream")
        for name in sorted({n for n, _ in upstream.headers} & (HOP_BY_HOP - OWN))
    ]
    if sent is None:
        return out
    caller: dict[str, set[str]] = {}
    for name, value in sent.headers:
        caller.setdefault(name, set()).add(_norm(value))
    for name, value in upstream.headers:
        if name in OWN or name in HOP_BY_HOP:
            continue
        if name not in caller:
            out.append(Mismatch("header-invented", f"{what}: {name}: {value!r} was never sent"))
        elif _norm(value) not in caller[name]:
            out.append(Mismatch("header-changed", f"{what}: {name}: {value!r}, "
                                f"the caller sent {sorted(caller[name])}"))  # fmt: skip
        elif name in sent.connection:
            out.append(Mismatch("connection-named-forwarded", f"{what}: {name}"))
    return out


def _check_answers(
    handled: list[dict[str, Any]],
    forwarded: list[dict[str, Any]],
    complete: list[UpstreamRequest] | None,
    answers: list[RawResponse],
) -> list[Mismatch]:
    """One answer per request the proxy read, in order, each the right one."""
    # A request whose caller left before its answer (499) has none.
    expected = [x for x in handled if x.get("status") != 499]
    if len(expected) != len(answers):
        statuses = [a.status for a in answers]
        return [Mismatch("answer-count", f"{len(expected)} requests read and answered "
                         f"({[x.get('status') for x in expected]}), caller got {statuses}")]  # fmt: skip
    out: list[Mismatch] = []
    for n, answer in enumerate(answers):
        framing = [
            (k, v) for k, v in answer.headers if k in ("content-length", "transfer-encoding")
        ]
        if len(framing) > 1:
            out.append(Mismatch("answer-framing", f"answer {n} is framed by {framing}"))
    echoes = {id(x): u.answer for x, u in zip(forwarded, complete or [], strict=False)}
    for n, (line, answer) in enumerate(zip(expected, answers, strict=True)):
        if line["event"] == REQUEST and line["source"] == "upstream":
            # The echo names the request the upstream answered: it must be this line's.
            want = echoes.get(id(line))
            parts = answer.body.split(b" ")
            named = [p.decode("latin-1") for p in parts[2:4]] if parts[0] == b"echo" else []
            if (
                answer.header(PROXY_HEADER) is not None
                or named != [line["method"], line["path"]]
                or (want is not None and answer.body != want)
            ):
                out.append(Mismatch("answer-crossed", f"answer {n} to {line['path']}: "
                                    f"{answer.status} {answer.body[:80]!r}, expected {want!r}"))  # fmt: skip
        elif answer.header(PROXY_HEADER) is None or answer.status != line["status"]:
            out.append(Mismatch("answer-crossed", f"answer {n}: {answer.status} "
                                f"{answer.body[:80]!r} for the proxy's own {line['status']}"))  # fmt: skip
    return out


def _check_reading(
    conversation: Conversation,
    handled: list[dict[str, Any]],
    forwarded: list[dict[str, Any]],
    complete: list[UpstreamRequest] | None,
    seen: Observed,
) -> list[Mismatch]:
    """The proxy read the caller's requests as RFC 9112 does: same boundaries, same bodies."""
    out: list[Mismatch] = []
    bodies = {id(x): bytes(u.body) for x, u in zip(forwarded, complete or [], strict=False)}
    # A server may end a connection after any answer that says so (RFC 9112 §9.6); the requests
    # after it were never read, and a client sends them again on a new connection.
    answered = [x for x in handled if x.get("status") != 499]
    closing = {
        id(x)
        for x, answer in zip(answered, seen.answers, strict=False)
        if "close" in (answer.header("connection") or "").lower()
    }
    sent = conversation.requests
    index = 0
    stopped = False
    for line in handled:
        if stopped or index >= len(sent):
            out.append(Mismatch("read-past-end", f"the proxy read on after {sent[index - 1].rid}"
                                f" (Connection: close, a refusal or the last request): {line}"))  # fmt: skip
            return out
        request = sent[index]
        index += 1
        if _refused(line):
            # aiohttp's parser refuses what it has buffered as one: a plain request is refused
            # with a broken one that follows it in the same read.
            later = [r.reading for r in sent[index:]]
            batch = (
                line["event"] == PARSER_REFUSAL
                and min(later, default=Reading.PLAIN) < Reading.PLAIN
            )
            if request.reading is Reading.PLAIN and not batch:
                out.append(Mismatch("plain-refused", f"{request.rid}: {line.get('status')} "
                                    f"{line.get('message', '')}"))  # fmt: skip
            stopped = True
            continue
        if line["path"] != request.path:
            out.append(Mismatch("desync", f"the proxy read {line['method']} {line['path']} "
                                f"where the caller sent {request.method} {request.path}"))  # fmt: skip
            return out
        if line["source"] == "upstream":
            if request.reading is Reading.INVALID:
                out.append(Mismatch("invalid-forwarded", f"{request.rid}: {request.notes}"))
            elif id(line) in bodies and bodies[id(line)] != request.body:
                out.append(Mismatch("body-changed", f"{request.rid}: upstream got "
                                    f"{bodies[id(line)]!r}, the caller sent {request.body!r}"))  # fmt: skip
        elif not (seen.stalled and line["status"] == 499):
            out.append(Mismatch("proxy-failed", f"{request.rid}: {line['status']} "
                                f"{line.get('code')} {line.get('message')}"))  # fmt: skip
        stopped = request.closes or id(line) in closing
    if not stopped and not seen.stalled:
        out.append(Mismatch("unanswered", f"the proxy closed after reading {index} of "
                            f"{len(sent)} requests"))  # fmt: skip
    return out


def describe(conversation: Conversation) -> str:
    """A failing case for the report: the raw bytes and each request's reading and oddities."""
    parts = [f"raw = {conversation.raw!r}", f"writes split at {list(conversation.writes)}"]
    parts += [f"  {r.rid}: {r.reading.name} {list(r.notes)}" for r in conversation.requests]
    return "\n".join(parts)
