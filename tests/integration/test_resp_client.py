"""The lean Redis client against a real redis-server: pipelining, scripts, AUTH, SELECT, faults."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from proxy.quota import resp
from tests.support.redis import RedisServer

SCRIPT = "return {tonumber(ARGV[1]) + 1, KEYS[1]}"


async def _clients(redis_server: RedisServer) -> int:
    reply = await resp.Client(redis_server.url, 2.0).execute_command("INFO", "clients")
    assert isinstance(reply, bytes)
    line = next(x for x in reply.decode().splitlines() if x.startswith("connected_clients:"))
    return int(line.split(":")[1]) - 1  # less the connection asking


async def test_concurrent_calls_share_one_connection(redis_server: RedisServer) -> None:
    """500 calls in flight at once are all answered, each with its own reply, on one connection."""
    client = resp.Client(redis_server.url, 2.0)
    script = client.register_script(SCRIPT)
    replies = await asyncio.gather(*(script(keys=[f"k{i}"], args=[i]) for i in range(500)))
    assert replies == [[i + 1, f"k{i}".encode()] for i in range(500)]
    assert await _clients(redis_server) == 1
    await client.aclose()


async def test_a_script_the_server_lost_is_loaded_again(redis_server: RedisServer) -> None:
    """After SCRIPT FLUSH (as after a restart) the next call loads the script and succeeds."""
    client = resp.Client(redis_server.url, 2.0)
    script = client.register_script(SCRIPT)
    assert await script(keys=["a"], args=[1]) == [2, b"a"]
    assert await redis_server.command("SCRIPT", "FLUSH") == b"+OK"
    assert await script(keys=["b"], args=[2]) == [3, b"b"]
    await client.aclose()


async def test_error_replies_raise_with_the_servers_text(redis_server: RedisServer) -> None:
    """An error reply raises ReplyError; the connection stays usable for the next call."""
    client = resp.Client(redis_server.url, 2.0)
    with pytest.raises(resp.ReplyError, match="unknown command"):
        await client.execute_command("NOSUCHCOMMAND")
    assert await client.ping()
    await client.aclose()


async def test_the_database_in_the_url_is_selected(redis_server: RedisServer) -> None:
    """redis://…/3 reads and writes database 3, not 0."""
    three = resp.Client(f"redis://127.0.0.1:{redis_server.port}/3", 2.0)
    zero = resp.Client(f"redis://127.0.0.1:{redis_server.port}/0", 2.0)
    assert await three.execute_command("SET", "where", "three") == "OK"
    assert await three.execute_command("EXISTS", "where") == 1
    assert await zero.execute_command("EXISTS", "where") == 0
    await three.aclose()
    await zero.aclose()


async def test_password_and_user_authenticate(tmp_path: Path) -> None:
    """A password (alone, or with the default user) authenticates; a wrong one is refused
    without the password in the error."""
    secured = RedisServer(tmp_path, None, "--requirepass", "s3cret-pw")
    await secured.start()
    try:
        for url in (
            f"redis://:s3cret-pw@127.0.0.1:{secured.port}/0",
            f"redis://default:s3cret-pw@127.0.0.1:{secured.port}/0",
        ):
            client = resp.Client(url, 2.0)
            assert await client.ping()
            await client.aclose()
        wrong = resp.Client(f"redis://:wr0ng-pw@127.0.0.1:{secured.port}/0", 2.0)
        with pytest.raises(resp.ReplyError) as caught:
            await wrong.ping()
        assert "wr0ng-pw" not in str(caught.value)
        await wrong.aclose()
    finally:
        await secured.stop()


async def test_a_paused_server_costs_one_timeout_then_the_client_recovers(
    redis_server: RedisServer,
) -> None:
    """With the server stopped (SIGSTOP) a call fails after the timeout, and the calls in flight
    with it; once the server runs again the next call connects afresh and succeeds."""
    client = resp.Client(redis_server.url, 0.2)
    assert await client.ping()
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(client.ping() for _ in range(5)), return_exceptions=True)
        took = time.monotonic() - started
        assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
        assert 0.15 <= took < 0.6
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert await client.ping()
    await client.aclose()


async def test_a_restarted_server_is_reconnected(redis_server: RedisServer) -> None:
    """After the server restarts on its port, calls succeed again on a new connection."""
    client = resp.Client(redis_server.url, 1.0)
    assert await client.ping()
    await redis_server.stop()
    with pytest.raises((ConnectionError, OSError)):
        await client.ping()
    await redis_server.start()
    assert await client.ping()
    assert await _clients(redis_server) == 1
    await client.aclose()


async def test_an_abandoned_call_does_not_shift_the_replies(redis_server: RedisServer) -> None:
    """A call cancelled before its reply drops the connection, so no later call reads its reply."""
    client = resp.Client(redis_server.url, 2.0)
    slow = asyncio.ensure_future(client.execute_command("BLPOP", "never", "0.3"))
    await asyncio.sleep(0.05)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert await client.execute_command("ECHO", "mine") == b"mine"
    await client.aclose()


async def test_a_caller_leaving_does_not_fail_the_others(redis_server: RedisServer) -> None:
    """A call cancelled while others wait behind it on the connection leaves them their replies."""
    client = resp.Client(redis_server.url, 2.0)
    before = await client.execute_command("CLIENT", "ID")
    slow = asyncio.ensure_future(client.execute_command("BLPOP", "never", "0.3"))
    await asyncio.sleep(0.05)
    behind = asyncio.ensure_future(client.execute_command("ECHO", "behind"))
    await asyncio.sleep(0.05)
    slow.cancel()
    assert await behind == b"behind"
    assert await client.execute_command("CLIENT", "ID") == before  # the same connection
    await client.aclose()


async def test_an_abandoned_call_on_a_hung_server_still_ends_the_connection(
    redis_server: RedisServer,
) -> None:
    """A call given up by its caller while the server is stopped takes the connection down at
    the client's own deadline, so the server's next answers come on a fresh connection."""
    client = resp.Client(redis_server.url, 0.2)
    before = await client.execute_command("CLIENT", "ID")
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.ping(), 0.05)
        await asyncio.sleep(0.3)  # past the client's deadline for the abandoned call
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert await client.execute_command("CLIENT", "ID") != before
    await client.aclose()


async def test_an_unreachable_server_fails_fast() -> None:
    """Nothing listening: the call fails with a connection error, not a hang."""
    client = resp.Client("redis://127.0.0.1:1/0", 1.0)
    started = time.monotonic()
    with pytest.raises(OSError):
        await client.ping()
    assert time.monotonic() - started < 0.5
    await client.aclose()
