"""``make demo`` (``deploy/demo.sh``) run for real: it stops on a taken port or a failed start-up,
prints its lines to paste only once the proxy, the simulator and its identity provider are ready,
and the proxy's tokenless calls succeed through the one token it minted."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.faultkit import sample
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "demo.sh"
BANNER = b"Paste these"
END = b"Ctrl-C stops them all."
# Start-up of two Python processes on a busy shared machine; the script's own bound is 20 s.
START_BOUND = 40.0
TOKEN_REQUESTS = "defender_proxy_token_requests_total"


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


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFENDER_PROXY_")}
    return {**env, "PYTHON": sys.executable, "TMPDIR": str(tmp), **extra}


def _ports() -> list[int]:
    return [free_port() for _ in range(4)]


@asynccontextmanager
async def demo(
    ports: list[int], tmp: Path, **extra: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``bash deploy/demo.sh SIM PROXY ADMIN IDP`` (its files under ``tmp``) in its own process
    group, ended with it."""
    process = await asyncio.create_subprocess_exec(
        "bash", str(DEMO), *map(str, ports),
        cwd=ROOT, env=_env(tmp, **extra), start_new_session=True,
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
    ("which", "variable"),
    [(0, "SIM_PORT"), (1, "DEMO_PORT"), (2, "DEMO_ADMIN_PORT"), (3, "DEMO_IDP_PORT")],
)
async def test_a_taken_port_stops_the_demo_before_anything_starts(
    which: int, variable: str, tmp_path: Path
) -> None:
    """A port in use: exit code 1, a message naming the port and its variable, no lines to paste,
    no files written."""
    ports = _ports()
    with held_port() as taken:
        ports[which] = taken
        async with demo(ports, tmp_path) as process:
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
    assert os.listdir(tmp_path) == []


async def test_a_process_failing_at_start_up_stops_the_demo(tmp_path: Path) -> None:
    """The proxy exiting during start-up (a log format it does not know): exit code 1, no lines
    to paste, and the demo's directory (the secret in it) removed."""
    async with demo(_ports(), tmp_path, DEFENDER_PROXY_LOG_FORMAT="xml") as process:
        code, out, err = await _finish(process)
    assert code == 1
    assert b"make demo: the proxy exited during start-up" in err
    assert BANNER not in out
    assert os.listdir(tmp_path) == []


async def _metric(session: aiohttp.ClientSession, admin: int, **labels: str) -> float:
    async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
        return sample(await response.text(), TOKEN_REQUESTS, **labels) or 0.0


async def test_the_demo_prints_its_lines_once_ready_and_they_work(tmp_path: Path) -> None:
    """Free ports: the banner comes once all are ready; a tokenless call is answered 200 by the
    token-checking API through the token the proxy minted, several calls cost the identity
    provider one token request, a refusal planned there shows when the secret file is touched
    (calls still 200), and the directory holding the secret is gone once the demo ends."""
    sim, port, admin, idp = ports = _ports()
    async with demo(ports, tmp_path) as process:
        assert process.stdout is not None
        seen = b""
        async with asyncio.timeout(START_BOUND):
            while END not in seen:
                line = await process.stdout.readline()
                assert line, f"the demo ended early: {seen!r}"
                seen += line
        text = seen.decode()
        ca = re.search(r"--cacert (\S+) ", text)
        secret = re.search(r"touch (\S+);", text)
        assert ca is not None
        assert secret is not None
        identity_line = next(line for line in text.splitlines() if "/_sim/identity |" in line)
        trusting = ssl.create_default_context(cafile=ca[1])
        idp_origin = f"https://127.0.0.1:{idp}"
        machines = f"http://127.0.0.1:{port}/api/machines"
        async with aiohttp.ClientSession() as session:
            # The API checks tokens: the same call made straight to it, without one, is refused.
            async with session.get(f"http://127.0.0.1:{sim}/api/machines") as direct:
                assert direct.status == 401
            async with session.post(f"http://127.0.0.1:{sim}/_sim/reset") as reset:
                assert reset.status == 200
            for _ in range(5):
                async with session.get(machines) as response:
                    assert response.status == 200
            async with session.get(f"http://127.0.0.1:{admin}/readyz") as ready:
                assert ready.status == 200
            async with session.get(f"http://127.0.0.1:{sim}/_sim/requests") as journal:
                received = (await journal.json())["requests"]
            async with session.get(f"{idp_origin}/_sim/identity", ssl=trusting) as stats:
                identity = await stats.json()
            assert identity["token_requests"] == 1
            assert identity["issued"] == 1
            assert await _metric(session, admin, result="ok") == 1
            # The five calls reached the API, all with one and the same minted token.
            assert [e["path"] for e in received] == ["/api/machines"] * 5
            assert len({e["token"] for e in received}) == 1
            assert received[0]["token"]
            # The banner's own line reads that count.
            shown = await asyncio.create_subprocess_exec(
                "bash", "-c", identity_line.strip(), stdout=asyncio.subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(shown.communicate(), START_BOUND)
            assert out.strip() == b'"token_requests": 1'

            async with session.post(
                f"{idp_origin}/_sim/identity/fail", json={"count": 1, "code": 7000222}, ssl=trusting
            ) as planned:
                assert planned.status == 200
            os.utime(secret[1])
            async with asyncio.timeout(START_BOUND):
                while await _metric(session, admin, result="ok") < 2:
                    async with session.get(machines) as response:
                        assert response.status == 200
                    await asyncio.sleep(0.2)
            assert await _metric(session, admin, result="failed", code="7000222") == 1
            async with session.get(f"{idp_origin}/_sim/identity", ssl=trusting) as stats:
                identity = await stats.json()
            assert identity["token_requests"] == 3
            assert identity["refused"] == {"7000222": 1}
        demo_dir = Path(secret[1]).parent
        assert demo_dir.parent == tmp_path
        assert demo_dir.is_dir()
    assert process.returncode is not None
    assert f"127.0.0.1:{port}/api/machines".encode() in seen
    assert not demo_dir.exists()
