"""A private ``redis-server``: its command line, waiting until it answers, stopping it.

The shared Redis on 6379 belongs to nobody's test or benchmark: each one that needs Redis starts
its own on a free port, without persistence. Tests use ``RedisServer`` (asyncio; it can stop the
server, as an orchestrator would, and start it again on the same port); benchmarks use ``launch``
and ``wait_answers`` (plain subprocesses, stopped with the bench's other services). Commands go
over a raw socket in RESP, so neither needs a Redis client.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.procs import stop_process
from tests.support.ports import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def command_line(port: int, workdir: Path, *options: str) -> list[str]:
    """``redis-server`` on 127.0.0.1:``port``, no snapshots, no append-only file, files under
    ``workdir``; ``options`` are further arguments (``--requirepass``, ``secret``)."""
    return [
        REDIS_SERVER,
        "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", str(workdir), *options,
    ]  # fmt: skip


def encode(*args: str) -> bytes:
    """One command in RESP, as a client sends it."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def answered(reply: bytes) -> bool:
    """Whether the first line of a reply to PING shows the server up and serving."""
    # A server with a password refuses PING with NOAUTH: it is up all the same.
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def launch(
    workdir: Path, port: int, *options: str, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start ``redis-server`` (behind ``prefix``, such as ``taskset -c 1``), output discarded."""
    return subprocess.Popen(
        [*prefix, *command_line(port, workdir, *options)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _ping(port: int, timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(encode("PING"))
        # The reply is one short line; a partial read only means one more try.
        return sock.recv(64).split(b"\r\n", 1)[0]


def wait_answers(port: int, proc: subprocess.Popen[bytes], seconds: float = 15.0) -> None:
    """Return once the server on ``port`` answers PING; raise if ``proc`` exits or ``seconds``
    pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if answered(_ping(port, 0.5)):
                return
        time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} does not answer after {seconds:g}s")


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, started and stopped by the test."""

    def __init__(self, workdir: Path, port: int | None = None, *options: str) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        #: further redis-server arguments (``--requirepass``, ``secret``)
        self.options = options
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 10.0) -> None:
        """Start the server on ``self.port`` and return once it answers PING."""
        assert not self.running, "the server is already running"
        self.proc = await asyncio.create_subprocess_exec(
            *command_line(self.port, self.workdir, *self.options),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(timeout):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"redis-server on port {self.port} exited with {self.proc.returncode}"
                    )
                with contextlib.suppress(OSError):
                    if answered(await self.command("PING")):
                        return
                await asyncio.sleep(0.02)

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server and wait for it to exit (SIGKILL if it does not)."""
        await stop_process(self.proc, timeout)

    async def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Send one command and return the first line of the reply (``+PONG``, ``:3``)."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(encode(*args))
                await writer.drain()
                return (await reader.readline()).rstrip(b"\r\n")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
