"""Tests for proxy.quota.resp's wire format: commands out, replies in, split anywhere."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.quota import resp

# Replies as RESP2 can carry them: integers, bulk strings (or null), arrays of those (or null).
LEAVES = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.binary(max_size=40) | st.none()
REPLIES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=6), max_leaves=20)


def wire(reply: resp.Reply) -> bytes:
    """``reply`` as a server writes it."""
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%b\r\n" % (len(reply), reply)
    if isinstance(reply, str):
        return b"+%b\r\n" % reply.encode()
    return b"*%d\r\n" % len(reply) + b"".join(wire(item) for item in reply)


@settings(max_examples=300, deadline=None)
@given(REPLIES)
def test_a_reply_reads_back_as_written(reply: resp.Reply) -> None:
    """Every reply shape is read back whole, and the position lands just after it."""
    data = wire(reply) + b":7\r\n"
    value, pos = resp.parse(data)
    assert value == reply
    assert resp.parse(data, pos) == (7, len(data))


@settings(max_examples=300, deadline=None)
@given(REPLIES, st.data())
def test_a_reply_cut_short_asks_for_more(reply: resp.Reply, data: st.DataObject) -> None:
    """Any proper prefix of a reply is incomplete, never misread as a shorter value."""
    whole = wire(reply)
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    with pytest.raises(resp._IncompleteError):
        resp.parse(whole[:cut])


def test_simple_strings_and_errors() -> None:
    """+OK is a str; -ERR is returned as a ReplyError carrying the server's text."""
    assert resp.parse(b"+PONG\r\n") == ("PONG", 7)
    error, _ = resp.parse(b"-NOSCRIPT No matching script\r\n")
    assert isinstance(error, resp.ReplyError)
    assert str(error) == "NOSCRIPT No matching script"


def test_a_null_array_is_none() -> None:
    """*-1 (a null array) reads as None."""
    assert resp.parse(b"*-1\r\n") == (None, 5)


@pytest.mark.parametrize("data", [b"?what\r\n", b":12x\r\n", b"*1\r\n-ERR inside\r\n"])
def test_bytes_that_are_not_resp_are_refused(data: bytes) -> None:
    """An unknown type byte, a malformed number or an error inside an array is a ValueError."""
    with pytest.raises(ValueError):
        resp.parse(data)


@given(st.lists(st.binary(max_size=30) | st.integers() | st.text(max_size=10), max_size=8))
def test_commands_are_arrays_of_bulk_strings(args: list[resp.Arg]) -> None:
    """A command goes out as an array of bulk strings, integers and text in their decimal/UTF-8
    form, read back unchanged by the reply parser (the same grammar)."""
    value, pos = resp.parse(resp.encode(args))
    expected = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    assert value == expected
    assert pos == len(resp.encode(args))


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://node:7000",
        "unix:///run/redis.sock",
        "redis://cache:6379/0?client_name=x",
        "redis:///0",
    ],
)
def test_urls_the_lean_client_does_not_take(url: str) -> None:
    """Cluster, unix sockets, query options and host-less URLs are left to redis-py."""
    with pytest.raises(ValueError, match="lean client"):
        resp.Client(url, 1.0)
