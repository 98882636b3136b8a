"""A lean Redis client for the quota's one call per request: one pipelined connection, RESP2.

redis-py spends about 150 µs of CPU on each script call (a connection checked out of its pool and
back, retry and deprecation wrappers, a reply parser written for every RESP3 type), and the quota
makes one such call per forwarded request. This client keeps a single connection per replica and
writes each call the moment it is made, however many are in flight; Redis answers in order, so
replies are matched to calls first in, first out. It speaks only what the store needs: ``AUTH``,
``SELECT``, ``PING``, ``SCRIPT LOAD`` and ``EVALSHA`` (a script the server lost, after a restart,
is loaded again on its ``NOSCRIPT`` reply).

It serves ``redis://`` and ``rediss://`` URLs (``[user:password@]host[:port][/db]``); the store
keeps redis-py for Redis Cluster and for URLs with query options.

Every call is bounded by ``timeout``: a reply that has not come by then takes the connection down
with it (the calls still on it fail at once) and the next call connects afresh, so a stopped or
hung server costs each caller one timeout, never more. A caller that leaves before its reply
does not disturb the others: the reply is read in its turn and dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Final
from urllib.parse import unquote, urlsplit

from proxy import trust

Reply = int | bytes | str | None | list["Reply"]
Arg = str | int | bytes

_CRLF: Final = b"\r\n"


class ReplyError(Exception):
    """Redis answered a call with an error reply (``-ERR …``)."""


class SetupError(ReplyError):
    """Redis refused a new connection's ``AUTH`` or ``SELECT``: no call can succeed until the
    URL or the server changes, so the message says which step and why (never the password)."""


class _IncompleteError(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def encode(args: Sequence[Arg]) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buffer: bytes | bytearray, pos: int = 0) -> tuple[Reply | ReplyError, int]:
    """One RESP2 reply from ``buffer`` at ``pos``: (value, position after it).

    Raises ``_IncompleteError`` when the buffer ends first and ``ValueError`` on bytes that are not
    RESP. An error reply is returned (not raised) as a ``ReplyError``, so that a reply nested in
    an array and a top-level one are read alike.
    """
    end = buffer.find(_CRLF, pos)
    if end < 0:
        raise _IncompleteError
    kind, line = buffer[pos : pos + 1], bytes(buffer[pos + 1 : end])
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line.decode(), pos
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise _IncompleteError
        return bytes(buffer[pos : pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Reply] = []
        for _ in range(count):
            item, pos = parse(buffer, pos)
            if isinstance(item, ReplyError):
                raise ValueError(f"an error inside an array reply: {item}")
            items.append(item)
        return items, pos
    raise ValueError(f"a reply of unknown type {bytes(kind)!r}")


class _Connection(asyncio.Protocol):
    """One connection to Redis and the calls waiting on it, oldest first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self.closed = False
        #: commands sent and replies read on this connection so far
        self.sent = 0
        self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        pos = 0
        try:
            while self._waiting:
                reply, pos = parse(self._buffer, pos)
                self.answered += 1
                future = self._waiting.popleft()
                if future.done():
                    continue
                if isinstance(reply, ReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except _IncompleteError:
            pass
        except ValueError as exc:
            self.fail(ConnectionError(f"Redis sent something that is not RESP: {exc}"))
            return
        if pos:
            del self._buffer[:pos]
        if not self._waiting and self._buffer:
            self.fail(ConnectionError("Redis sent a reply nobody asked for"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_waiting(ConnectionError("the connection to Redis was closed"))

    def call(self, args: Sequence[Arg]) -> asyncio.Future[Reply]:
        """Send one command; the future is its reply."""
        future: asyncio.Future[Reply] = self._loop.create_future()
        if self.closed or self._transport is None:
            future.set_exception(ConnectionError("the connection to Redis is closed"))
            return future
        self._transport.write(encode(args))
        self._waiting.append(future)
        self.sent += 1
        return future

    def fail(self, error: Exception) -> None:
        """Drop the connection: every call on it fails with ``error``."""
        self.closed = True
        self._fail_waiting(error)
        if self._transport is not None:
            self._transport.abort()

    def _fail_waiting(self, error: Exception) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)


class Script:
    """A Lua script called by its SHA1, loaded again when the server does not know it."""

    def __init__(self, client: Client, source: str) -> None:
        self._client = client
        self.script = source
        # Redis names scripts by SHA1: an identifier here, not a safeguard.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Reply:
        """Run the script with ``keys`` and ``args``."""
        command: list[Arg] = ["EVALSHA", self.sha, len(keys), *keys, *args]
        try:
            return await self._client.execute(command)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._client.script_load(self.script)
        return await self._client.execute(command)


class Client:
    """A single pipelined connection to one Redis server, made on first use and after a loss;
    over ``rediss://``, the server's certificate is checked against ``ca_bundle`` when given,
    else against the system's CAs."""

    def __init__(self, url: str, timeout: float, ca_bundle: str | None = None) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss") or parts.query or not parts.hostname:
            raise ValueError("the lean client takes redis:// or rediss:// URLs without options")
        self._host = parts.hostname
        self._port = parts.port or 6379
        # ca_bundle (tls.ca_bundle) replaces the system's CAs, as for the upstream.
        self._tls = trust.verifying(ca_bundle) if scheme == "rediss" else None
        database = parts.path.strip("/")
        self._hello: list[list[Arg]] = []
        if parts.password is not None:
            user = unquote(parts.username or "")
            password = unquote(parts.password)
            self._hello.append(["AUTH", user, password] if user else ["AUTH", password])
        if database not in ("", "0"):
            self._hello.append(["SELECT", int(database)])
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        #: connections opened so far
        self.opened = 0

    @property
    def lost(self) -> bool:
        """Whether a connection was open and is gone: the next call connects afresh, perhaps to
        a server that restarted and knows nothing of what it held."""
        return self.opened > 0 and (self._connection is None or self._connection.closed)

    def register_script(self, source: str) -> Script:
        """A script to call by SHA."""
        return Script(self, source)

    async def execute(self, command: Sequence[Arg]) -> Reply:
        """Send ``command`` and wait for its reply, at most ``timeout`` (connecting included)."""
        loop = asyncio.get_running_loop()
        connection = self._connection
        left = self._timeout
        if connection is None or connection.closed:
            began = loop.time()
            connection = await self._connect()  # within the timeout: _open keeps to it
            left = max(0.0, self._timeout - (loop.time() - began))
        future = connection.call(command)
        timer = loop.call_later(left, _expire, connection, connection.sent, self._timeout)
        try:
            reply = await future
        except asyncio.CancelledError:
            # The caller left: its reply, when it comes, is read and dropped in turn; the timer
            # stays, so a reply that never comes still takes the connection down at the deadline.
            raise
        except BaseException:
            timer.cancel()
            raise
        timer.cancel()
        return reply

    async def execute_command(self, *args: Arg) -> Reply:
        """``execute`` with the command's words as arguments (redis-py's spelling)."""
        return await self.execute(args)

    async def _connect(self) -> _Connection:
        # Callers arriving while a connection is being made share it (and its failure); one that
        # gives up waiting leaves it to the others.
        task = self._connecting
        if task is None or (task.done() and not _usable(task)):
            task = asyncio.get_running_loop().create_task(self._open())
            self._connecting = task
        return await asyncio.shield(task)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            _, connection = await loop.create_connection(
                lambda: _Connection(loop),
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._host if self._tls is not None else None,
            )
            try:
                # AUTH and SELECT go out together; both must succeed before the first call.
                replies = [connection.call(command) for command in self._hello]
                results = await asyncio.gather(*replies, return_exceptions=True)
                for command, result in zip(self._hello, results, strict=True):
                    if isinstance(result, ReplyError):
                        step = f"SELECT {command[1]!s}" if command[0] == "SELECT" else "AUTH"
                        raise SetupError(f"Redis refused {step}: {result}")
                    if isinstance(result, BaseException):
                        raise result
            except BaseException:
                connection.fail(ConnectionError("Redis refused the connection's set-up"))
                raise
        self._connection = connection
        self.opened += 1
        return connection

    async def ping(self) -> bool:
        """Whether the server answers ``PING``."""
        return await self.execute(["PING"]) == "PONG"

    async def script_load(self, source: str) -> str:
        """Load ``source`` on the server; its SHA1."""
        sha = await self.execute(["SCRIPT", "LOAD", source])
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    async def aclose(self) -> None:
        """Close the connection (calls still on it fail)."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._connection is not None:
            self._connection.fail(ConnectionError("the Redis client was closed"))
            self._connection = None


def _usable(task: asyncio.Task[_Connection]) -> bool:
    """Whether a finished connecting task left an open connection."""
    return not task.cancelled() and task.exception() is None and not task.result().closed


def _expire(connection: _Connection, call: int, seconds: float) -> None:
    """The deadline of the ``call``-th command on ``connection``: no reply yet, no connection."""
    if not connection.closed and connection.answered < call:
        connection.fail(TimeoutError(f"Redis did not answer within {seconds:g}s"))
