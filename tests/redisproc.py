"""A private ``redis-server`` for one test: its own free port, no persistence, stoppable at will.

The shared Redis on 6379 belongs to nobody's test: each test that needs Redis starts its own here,
can stop it (SIGTERM, as an orchestrator would) and start it again on the same port, and kills it
at teardown. Commands go over a raw socket in RESP, so the test process needs no Redis client.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path

from tests.procs import stop_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _encode(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


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
            REDIS_SERVER,
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir), *self.options,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(timeout):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"redis-server on port {self.port} exited with {self.proc.returncode}"
                    )
                with contextlib.suppress(OSError):
                    # A server with a password refuses PING with NOAUTH: it is up all the same.
                    if (await self.command("PING")).startswith((b"+PONG", b"-NOAUTH")):
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
                writer.write(_encode(*args))
                await writer.drain()
                return (await reader.readline()).rstrip(b"\r\n")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
