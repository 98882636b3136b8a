"""Differential framing: the upstream parses exactly the requests the proxy read, logged and answered.

Generated conversations (``tests.framegen``: Content-Length and Transfer-Encoding in their
spellings, Connection lists naming framing and Host, CL with TE, signed and duplicated lengths,
obs-fold, chunk oddities, bare LF, Expect, pipelined bodies hiding requests) go as raw bytes through
the real proxy to an h11 upstream that records what it parses (``tests.framediff`` compares).

``make test`` runs ``FUZZ_EXAMPLES`` cases (200 by default); ``make fuzz`` runs the property with
50,000 through ``fuzz/run.py``; ``python -m fuzz.framing`` surveys the classes of mismatch. The
pinned conversations below are the classes the property found (on 8db9520 and while the framing
was being fixed), each as its smallest raw reproducer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings

from tests.framediff import Harness, describe
from tests.framegen import END, Conversation, Reading, Sent, conversations

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))


@pytest.fixture(scope="module")
def harness() -> Iterator[tuple[asyncio.Runner, Harness]]:
    """One proxy and one recording upstream on uvloop for the module; each case renews the rest."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        built = Harness()
        runner.run(built.start())
        try:
            yield runner, built
        finally:
            runner.run(built.close())


def _check(harness: tuple[asyncio.Runner, Harness], conversation: Conversation) -> None:
    runner, built = harness
    mismatches = runner.run(built.run(conversation))
    assert not mismatches, "\n".join([describe(conversation), *map(str, mismatches)])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(conversation=conversations())
def test_upstream_parses_exactly_what_the_proxy_read(
    harness: tuple[asyncio.Runner, Harness], conversation: Conversation
) -> None:
    """Upstream, proxy log and caller agree: same requests, whole bodies, own framing, own answers."""
    _check(harness, conversation)


def _one(
    raw: bytes,
    body: bytes,
    reading: Reading = Reading.VALID,
    closes: bool = False,
    writes: tuple[int, ...] = (),
) -> Conversation:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    headers = tuple(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
    )
    connection = frozenset(
        token.strip().lower()
        for name, value in headers
        if name == "connection"
        for token in value.split(",")
        if token.strip()
    )
    method = head.split(" ", 1)[0]
    sent = Sent("r0", method, raw, reading, body, headers, connection, closes, ())
    return Conversation((sent, END), writes)


SMUGGLED = b"GET /api/machines/s0 HTTP/1.1\r\nHost: proxy\r\n\r\n"


@pytest.mark.parametrize(
    "connection", [b"content-length", b"Content-Length", b"keep-alive, content-length"]
)
def test_connection_cannot_remove_content_length(
    harness: tuple[asyncio.Runner, Harness], connection: bytes
) -> None:
    """Connection naming Content-Length: the body still reaches the upstream as the body."""
    raw = (
        b"POST /api/machines/r0 HTTP/1.1\r\nHost: proxy\r\nContent-Length: %d\r\n"
        b"Connection: %s\r\n\r\n%s" % (len(SMUGGLED), connection, SMUGGLED)
    )
    _check(harness, _one(raw, SMUGGLED))


def test_connection_cannot_remove_transfer_encoding(
    harness: tuple[asyncio.Runner, Harness],
) -> None:
    """Connection naming Transfer-Encoding: the chunked body still reaches the upstream whole."""
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    raw = (
        b"POST /api/machines/r0 HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: transfer-encoding\r\n\r\n" + chunk
    )
    _check(harness, _one(raw, SMUGGLED))


def test_connection_cannot_remove_host(harness: tuple[asyncio.Runner, Harness]) -> None:
    """Connection naming Host: the upstream still gets its own Host."""
    raw = b"GET /api/machines/r0 HTTP/1.1\r\nHost: proxy\r\nConnection: host\r\n\r\n"
    _check(harness, _one(raw, b""))


def test_trailer_fields_stay_with_their_request(harness: tuple[asyncio.Runner, Harness]) -> None:
    """A chunked request's trailer fields never reach the upstream as headers of the next one."""
    raw = (
        b"POST /api/machines/r0 HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\nX-Trailer: t\r\n\r\n"
    )
    _check(harness, _one(raw, b""))


def test_a_chunk_broken_after_the_body_began_is_answered(
    harness: tuple[asyncio.Runner, Harness],
) -> None:
    """A chunked body that turns malformed after its first chunk was read is refused at once."""
    first = (
        b"POST /api/machines/r0 HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n"
    )
    raw = first + b"3\r\nabcXX0\r\n\r\n"
    _check(harness, _one(raw, b"", Reading.INVALID, writes=(len(first),)))


def test_an_upgrade_does_not_excuse_an_unknown_coding(
    harness: tuple[asyncio.Runner, Harness],
) -> None:
    """Transfer-Encoding not ending in chunked is refused, Upgrade or not (RFC 9112 §6.3)."""
    raw = (
        b"POST /api/machines/r0 HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: identity\r\n"
        b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n0\r\n\r\n"
    )
    _check(harness, _one(raw, b"", Reading.INVALID, closes=True))


def test_a_refusal_reaches_a_caller_still_sending(harness: tuple[asyncio.Runner, Harness]) -> None:
    """The parser's 400 reaches a caller whose next bytes are still arriving (no reset eats it)."""
    first = (
        b"POST /api/machines/r0 HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\nX-Folded: a\r\n\t"
    )
    raw = first + b"b\r\n\r\n"
    _check(harness, _one(raw, b"", Reading.LENIENT, writes=(len(first),)))


def test_an_answer_reaches_a_caller_still_sending(harness: tuple[asyncio.Runner, Harness]) -> None:
    """An upstream answer survives the proxy closing while the caller's next request arrives."""
    raw = b"POST /api/machines/r0 HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    # The next request arrives in three pieces: while the proxy answers, and after it closes.
    _check(harness, _one(raw, b"", Reading.PLAIN, writes=(len(raw) + 15, len(raw) + 50)))


def test_a_chunk_broken_after_its_data_is_answered(harness: tuple[asyncio.Runner, Harness]) -> None:
    """A last chunk that breaks after the previous chunk's data was read whole is refused at once."""
    first = (
        b"POST /api/machines/r0 HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc"
    )
    raw = first + b"\r\n0 ;a=b\r\n\r\n"
    _check(harness, _one(raw, b"abc", Reading.LENIENT, writes=(len(first),)))
