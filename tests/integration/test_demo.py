"""``make demo`` (``deploy/demo.sh``) run for real: it stops on a taken port or a failed start-up,
and prints its lines to paste only once the proxy and the simulator are ready."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.redisproc import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "demo.sh"
BANNER = b"Paste these"
END = b"Ctrl-C stops both."
# Start-up of two Python processes on a busy shared machine; the script's own bound is 20 s.
START_BOUND = 40.0


@contextmanager
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 with a listener on it that is not the demo's."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFENDER_PROXY_")}
    return {**env, "PYTHON": sys.executable, **extra}


@asynccontextmanager
async def demo(ports: list[int], **extra: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``bash deploy/demo.sh SIM PROXY ADMIN`` in its own process group, ended with it."""
    process = await asyncio.create_subprocess_exec(
        "bash", str(DEMO), *map(str, ports),
        cwd=ROOT, env=_env(**extra), start_new_session=True,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.communicate(), 10)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.communicate()


async def _finish(process: asyncio.subprocess.Process) -> tuple[int, bytes, bytes]:
    out, err = await asyncio.wait_for(process.communicate(), START_BOUND)
    assert process.returncode is not None
    return process.returncode, out, err


@pytest.mark.parametrize(
    ("which", "variable"), [(0, "SIM_PORT"), (1, "DEMO_PORT"), (2, "DEMO_ADMIN_PORT")]
)
async def test_a_taken_port_stops_the_demo_before_anything_starts(
    which: int, variable: str
) -> None:
    """A port in use: exit code 1, a message naming the port and its variable, no lines to paste."""
    ports = [free_port(), free_port(), free_port()]
    with held_port() as taken:
        ports[which] = taken
        async with demo(ports) as process:
            code, out, err = await _finish(process)
        # The holder still owns its port: nothing was started that took it over.
        probe = socket.socket()
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", taken))
        probe.close()
    assert code == 1
    assert f"port {taken} (".encode() in err
    assert b"already in use" in err
    assert f"make demo {variable}=<port>".encode() in err
    assert BANNER not in out
    assert b"listening" not in out  # nothing was started


async def test_a_process_failing_at_start_up_stops_the_demo() -> None:
    """The proxy exiting during start-up (a config it cannot read): exit code 1, no lines to paste."""
    ports = [free_port(), free_port(), free_port()]
    async with demo(ports, DEFENDER_PROXY_CONFIG="/nonexistent/proxy.yaml") as process:
        code, out, err = await _finish(process)
    assert code == 1
    assert b"make demo: the proxy exited during start-up" in err
    assert BANNER not in out


async def test_the_demo_prints_its_lines_once_ready_and_they_work() -> None:
    """Free ports: the banner comes once both are ready, and its first line is answered 200."""
    sim, port, admin = free_port(), free_port(), free_port()
    async with demo([sim, port, admin]) as process:
        assert process.stdout is not None
        seen = b""
        async with asyncio.timeout(START_BOUND):
            while END not in seen:
                line = await process.stdout.readline()
                assert line, f"the demo ended early: {seen!r}"
                seen += line
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/api/machines") as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{admin}/readyz") as ready:
                assert ready.status == 200
    assert process.returncode is not None
    assert f"127.0.0.1:{port}/api/machines".encode() in seen
