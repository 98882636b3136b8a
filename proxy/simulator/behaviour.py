"""Turning checked ``X-Simulate`` directives into an answer, and sending it (or failing to).

An answer is planned first (status, headers, body bytes or a chunk generator, or a fault) and sent
second, so the modifiers (``slow``, ``stall-body``, ``retry-after``, ``set-header``) work the same
whatever the answer. JSON bodies go out with a Content-Length; only streams may be chunked, and
``eof-body`` alone ends its body by closing the connection. ``early-hints`` goes out first of all.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

import orjson
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict

from proxy.errors import envelope, new_target
from proxy.simulator import bodies
from proxy.simulator.directives import Directives

#: Echoes the tracking id (Defender ``target``, Graph ``request-id``) so tests can compare.
TARGET_HEADER: Final = "X-Sim-Target"
JSON: Final = "application/json; charset=utf-8"
_HUNTING_RETRY_AFTER: Final = "10"
_RESET_BODY_LENGTH: Final = 1000
_RESET_BODY_SENT: Final = b'{"value":['
_TRUNCATED_CHUNK: Final = b'{"value":[{"id":"1e5bc9d7e413ddd7902c2932e418702b84d0cc07"},'
_EARLY_HINTS: Final = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
# A status line and a header block that stops mid-field: what ``reset-headers`` sends.
_PARTIAL_HEAD: Final = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Le"


@dataclass(slots=True)
class Answer:
    """A planned response: a body in memory, or a stream with its length (``None``: chunked)."""

    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""
    stream: Iterable[bytes] | None = None
    length: int | None = None
    #: ``reset-body`` or ``truncate-chunked``: send ``body`` as the first part (then stall, if
    #: asked), then cut.
    fault: str | None = None
    #: ``eof-body``: the stream has no framing; closing the connection ends it.
    until_close: bool = False


def error_answer(
    status: int, code: str, message: str, extra: dict[str, str] | None = None
) -> Answer:
    """A Defender envelope with a fresh target, echoed in ``X-Sim-Target``."""
    target = new_target()
    headers = CIMultiDict({"Content-Type": JSON, TARGET_HEADER: target})
    headers.update(extra or {})
    return Answer(status, headers, envelope(code, message, target))


async def respond(request: web.Request, directives: Directives) -> web.StreamResponse:
    """Answer ``request`` as ``directives`` ask."""
    if directives.early_hints and request.version >= HttpVersion11:
        # Written raw ahead of the response, as aiohttp writes its own 100 Continue; never to
        # an HTTP/1.0 caller (RFC 9110 §15.2).
        await request.writer.write(_EARLY_HINTS)
    if directives.slow:
        await asyncio.sleep(directives.slow)
    if directives.answer in ("reset", "reset-headers"):
        if directives.answer == "reset-headers":
            await request.writer.write(_PARTIAL_HEAD)
            # The partial head must reach the caller before the reset, not be discarded by it.
            await asyncio.sleep(0.05)
        _reset(request)
        # aiohttp's attempt to send this finds the transport closed and gives up quietly.
        return web.Response()
    answer = await _plan(request, directives)
    adjust_headers(answer.headers, directives)
    if answer.fault is not None:
        return await _send_fault(request, answer, directives.stall)
    if answer.until_close:
        return await _send_until_close(request, answer, directives.stall)
    if answer.stream is None and not directives.stall:
        response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        _honour_connection_close(response)
        return response
    return await _send_stream(request, answer, directives.stall)


async def _plan(request: web.Request, d: Directives) -> Answer:
    match d.answer:
        case None:
            return Answer(200, CIMultiDict({"Content-Type": JSON}), bodies.DEFAULT_BODY)
        case "status" | "error" | "graph-error" | "hunting-429" | "cpu-429":
            answer = plan_error(d, request.headers.get("client-request-id"))
            assert answer is not None
            return answer
        case "body":
            return _body(d)
        case "download":
            size = d.size or 0
            headers = CIMultiDict({"Content-Type": "application/octet-stream"})
            return Answer(
                d.status or 200,
                headers,
                stream=bodies.download(size),
                length=None if d.chunked else size,
            )
        case "gzip-download":
            headers = CIMultiDict(
                {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}
            )
            return Answer(d.status or 200, headers, stream=bodies.gzip_download(d.size or 0))
        case "eof-body":
            headers = CIMultiDict({"Content-Type": "application/octet-stream"})
            return Answer(
                d.status or 200, headers, stream=bodies.download(d.size or 0), until_close=True
            )
        case "echo":
            return await _echo(request)
        case "reset-body":
            headers = CIMultiDict({"Content-Type": JSON})
            return Answer(
                d.status or 200,
                headers,
                _RESET_BODY_SENT,
                length=_RESET_BODY_LENGTH,
                fault="reset-body",
            )
        case "truncate-chunked":
            headers = CIMultiDict({"Content-Type": JSON})
            return Answer(d.status or 200, headers, _TRUNCATED_CHUNK, fault="truncate-chunked")
    raise AssertionError(f"unplanned answer {d.answer!r}")


def plan_error(d: Directives, client_request_id: str | None) -> Answer | None:
    """The answer of a status or error directive (a JSON body in memory), or None for others.

    Shared by whole requests and the requests inside a ``$batch``.
    """
    match d.answer:
        case "status":
            return _status_only(d.status or 200)
        case "error":
            return error_answer(d.status or 500, d.value, bodies.message_for(d.value))
        case "graph-error":
            return _graph_error(d, client_request_id)
        case "hunting-429":
            return error_answer(
                429, "429", bodies.HUNTING_MESSAGE, {"Retry-After": _HUNTING_RETRY_AFTER}
            )
        case "cpu-429":
            return error_answer(429, "429", bodies.CPU_MESSAGE)
    return None


def _status_only(status: int) -> Answer:
    if status in (204, 304):
        return Answer(status)
    if status < 400:
        return Answer(status, CIMultiDict({"Content-Type": JSON}), orjson.dumps({"status": status}))
    code = bodies.code_for_status(status)
    return error_answer(status, code, bodies.message_for(code))


def _graph_error(d: Directives, client_request_id: str | None) -> Answer:
    return graph_error_answer(d.status or 500, d.value, client_request_id, d.inner)


def graph_error_answer(
    status: int,
    code: str,
    client_request_id: str | None,
    inner: str | None = None,
    message: str | None = None,
) -> Answer:
    """Graph's envelope with a fresh ``request-id`` (echoed in ``X-Sim-Target``) and the caller's
    ``client-request-id``, or one made up, as Graph answers."""
    request_id = new_target()
    client_id = bodies.client_request_id(client_request_id)
    headers = CIMultiDict(
        {
            "Content-Type": JSON,
            TARGET_HEADER: request_id,
            "request-id": request_id,
            "client-request-id": client_id,
        }
    )
    envelope = bodies.graph_envelope(code, inner, request_id, client_id, message)
    return Answer(status, headers, envelope)


def _body(d: Directives) -> Answer:
    kind = d.value
    status = d.status or (502 if kind == "html" else 500)
    target = new_target()
    headers = CIMultiDict({"Content-Type": "text/html" if kind == "html" else JSON})
    if kind == "oversize":
        headers[TARGET_HEADER] = target
        length, chunks = bodies.oversize(d.size or 2 * 1024 * 1024, status, target)
        return Answer(status, headers, stream=chunks, length=length)
    body, encoding = bodies.broken_body(kind, status, target)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if kind in ("truncated", "gzip", "deflate", "br"):
        headers[TARGET_HEADER] = target
    return Answer(status, headers, body)


async def _echo(request: web.Request) -> Answer:
    # Streamed and hashed so an upload of any size costs one chunk of memory.
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(bodies.CHUNK_SIZE):
        digest.update(chunk)
        length += len(chunk)
    version = request.version
    description = {
        "method": request.method,
        "raw_path": request.raw_path,
        "version": f"HTTP/{version.major}.{version.minor}",
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_length": length,
        "body_sha256": digest.hexdigest(),
    }
    return Answer(200, CIMultiDict({"Content-Type": JSON}), orjson.dumps(description))


def adjust_headers(headers: CIMultiDict[str], d: Directives) -> None:
    """Apply the modifiers that change headers: ``retry-after``, ``set-header``, ``set-cookie``."""
    if d.retry_after is not None:
        headers["Retry-After"] = d.retry_after
    # A set-header replaces the simulator's own header of that name; repeats of it all go out.
    for name in {name for name, _ in d.headers}:
        headers.popall(name, None)
    for name, value in d.headers:
        headers.add(name, value)


def _honour_connection_close(response: web.StreamResponse) -> None:
    # A Connection: close the caller asked for should be true, not just a header.
    tokens = {t.strip().lower() for t in response.headers.get("Connection", "").split(",")}
    if "close" in tokens:
        response.force_close()


async def _send_stream(request: web.Request, answer: Answer, stall: float) -> web.StreamResponse:
    response = web.StreamResponse(status=answer.status, headers=answer.headers)
    _honour_connection_close(response)
    chunks: Iterator[bytes]
    if answer.stream is None:
        half = len(answer.body) // 2
        chunks = iter((answer.body[:half], answer.body[half:]))
        response.content_length = len(answer.body)
    else:
        chunks = iter(answer.stream)
        if answer.length is None:
            response.enable_chunked_encoding()
        else:
            response.content_length = answer.length
    await response.prepare(request)
    if _bodiless(request, answer.status):
        # aiohttp drops the headers that announce a body here, but not the body we would write.
        chunks = iter(())
    first = next(chunks, b"")
    if first:
        await response.write(first)
    if stall:
        await asyncio.sleep(stall)
    for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def _send_fault(request: web.Request, answer: Answer, stall: float) -> web.StreamResponse:
    response = web.StreamResponse(status=answer.status, headers=answer.headers)
    if answer.length is None:
        response.enable_chunked_encoding()
    else:
        response.content_length = answer.length
    await response.prepare(request)
    if not _bodiless(request, answer.status):
        await response.write(answer.body)
    if stall:
        await asyncio.sleep(stall)
    # close(), not abort(): the partial body already handed to the transport must reach the
    # caller before the connection ends, or the fault would look like a plain reset.
    transport = request.transport
    if transport is not None:
        transport.close()
    return response


async def _send_until_close(
    request: web.Request, answer: Answer, stall: float
) -> web.StreamResponse:
    # aiohttp frames every HTTP/1.1 body it sends (a length or chunks), so this head and body go
    # out raw on the request's writer, which frames nothing before a response is prepared.
    answer.headers.setdefault("Connection", "close")
    lines = [f"HTTP/1.1 {answer.status} {bodies.phrase(answer.status)}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in answer.headers.items())
    lines.append("\r\n")
    writer = request.writer
    await writer.write("".join(lines).encode("utf-8"))
    chunks = iter(()) if _bodiless(request, answer.status) else iter(answer.stream or ())
    first = next(chunks, b"")
    if first:
        await writer.write(first)
    if stall:
        await asyncio.sleep(stall)
    for chunk in chunks:
        await writer.write(chunk)
    # close(), not abort(): what was written must reach the caller; the close is the body's end.
    transport = request.transport
    if transport is not None:
        transport.close()
    # aiohttp's attempt to send this finds the transport closing and gives up quietly.
    return web.Response()


def _bodiless(request: web.Request, status: int) -> bool:
    return request.method == "HEAD" or status in (204, 304)


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 turns the close into a TCP RST: "connection reset by peer", not a polite FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
