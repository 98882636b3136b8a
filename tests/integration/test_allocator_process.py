"""The real CLI on jemalloc: ``run`` starts itself again on it where the machine has it, says so,
and a quiet process's trim gives freed memory back at once. The suite's set-up installs Debian's
libjemalloc2 (``make system-tools``), so these run everywhere the suite does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from proxy.allocator import environment_for, find_jemalloc
from tests.procs import Process, start_cli


def jemalloc() -> str:
    """The machine's libjemalloc.so.2 (the suite's set-up installs it)."""
    path = find_jemalloc()
    assert path is not None, "libjemalloc.so.2 is missing: apt-get install libjemalloc2"
    return path


def proc_files(pid: int) -> tuple[str, list[bytes]]:
    """What ``pid`` has mapped, and the environment it was started with."""
    mapped = Path(f"/proc/{pid}/maps").read_text()
    return mapped, Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def config(tmp_path: Path, simulator: TestServer, allocator: str) -> str:
    """A config file for a proxy on free ports in front of the simulator, on ``allocator``."""
    path = tmp_path / f"{allocator}.yaml"
    path.write_text(
        f"upstream: http://127.0.0.1:{simulator.port}\n"
        f"listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nallocator: {allocator}\n"
    )
    return str(path)


@pytest.mark.parametrize(("allocator", "expected"), [("auto", "jemalloc"), ("system", "system")])
async def test_run_starts_on_the_allocator_it_is_given(
    simulator: TestServer, tmp_path: Path, allocator: str, expected: str
) -> None:
    """``auto`` restarts the same process (one pid) on jemalloc: the library mapped, objects
    handed to it, and the start-up line says so; ``system`` maps no jemalloc and says that."""
    jemalloc()
    process = await start_cli("run", "--config", config(tmp_path, simulator, allocator))
    try:
        line = await process.wait_for("listening")
        pid = process.proc.pid
        mapped, environ = await asyncio.to_thread(proc_files, pid)
        assert line["allocator"] == expected
        assert ("libjemalloc.so" in mapped) is (expected == "jemalloc")
        assert (b"PYTHONMALLOC=malloc" in environ) is (expected == "jemalloc")
    finally:
        await process.stop()


async def test_jemalloc_refused_by_the_loader_is_an_error_at_start(
    simulator: TestServer, tmp_path: Path
) -> None:
    """``allocator: jemalloc`` in a second start that the loader left off jemalloc (the marker
    set, as after a refused preload): exit 2 and a line that says why, before listening."""
    env = {"DEFENDER_PROXY_ALLOCATOR_RESTARTED": "1", "PYTHONMALLOC": "pymalloc"}
    process = await start_cli("run", "--config", config(tmp_path, simulator, "jemalloc"), env=env)
    await process.drain_output()
    assert await process.proc.wait() == 2
    text = " ".join(str(line.get("text", "")) for line in process.lines)
    assert "allocator: jemalloc:" in text
    assert "still not on it" in text
    assert not [line for line in process.lines if line.get("event") == "listening"]


def test_a_closed_stderr_does_not_stop_the_second_start(
    simulator: TestServer, tmp_path: Path
) -> None:
    """Started with its stderr closed (a supervisor's ``2>&-``), ``run`` still starts again on
    jemalloc and listens."""
    with subprocess.Popen(
        [sys.executable, "-m", "proxy", "run", "--config", config(tmp_path, simulator, "auto")],
        stdout=subprocess.PIPE,
        env={**os.environ, "DEFENDER_PROXY_LOG_FORMAT": "json"},
        preexec_fn=lambda: os.close(2),
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert b'"event":"listening"' in line, line
            assert b'"allocator":"jemalloc"' in line
        finally:
            proc.kill()


_PURGE = """
import gc, sys
from proxy.trim import malloc_trim, resident_bytes
held = [str(i) * 8 for i in range(1_500_000)]
del held
gc.collect()
before = resident_bytes()
release = malloc_trim()
assert release is not None
code = release()
print(before, resident_bytes(), code)
"""


def test_on_jemalloc_the_trim_purges_what_was_freed_at_once() -> None:
    """Under jemalloc (its own decay waits ten seconds), the trim's purge hands back the pages a
    freed million and a half small strings held: the RSS drops by more than half of them."""
    env = environment_for(jemalloc(), os.environ)
    out = subprocess.run(
        [sys.executable, "-c", _PURGE], env=env, capture_output=True, text=True, check=True
    ).stdout
    before, after, code = (int(word) for word in out.split())
    assert code == 0
    assert before - after > 40 * 2**20, (before, after)


async def test_under_python_dash_i_auto_runs_on_the_system_allocator_after_one_try(
    simulator: TestServer, tmp_path: Path
) -> None:
    """``python -I`` ignores PYTHONMALLOC: the second start sees CPython's arenas still in use,
    ``auto`` goes on once (listening, ``allocator: system``) rather than starting a third time,
    and ``jemalloc`` is refused with exit 2, naming -E/-I."""
    results = {}
    for allocator in ("auto", "jemalloc"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-m", "proxy", "run", "--config",
            config(tmp_path, simulator, allocator),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "DEFENDER_PROXY_LOG_FORMAT": "json"}, cwd=Path.cwd(),
        )  # fmt: skip
        process = Process(proc, [])
        try:
            if allocator == "auto":
                results[allocator] = (await process.wait_for("listening"))["allocator"]
            else:
                await process.drain_output()
                results[allocator] = str(await proc.wait())
                text = " ".join(str(line.get("text", "")) for line in process.lines)
                assert "-E or -I" in text
        finally:
            await process.stop()
    assert results == {"auto": "system", "jemalloc": "2"}
