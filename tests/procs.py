"""Starting the real CLI as a subprocess and reading what it prints."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass
class Process:
    """A running ``defender-proxy`` subprocess and the JSON lines it printed so far."""

    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]]

    async def wait_for(self, event: str, timeout: float = 15.0) -> dict[str, Any]:
        """The first line whose ``event`` is ``event``, reading more output as needed."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if line.get("event") == event:
                        return line
                await self._read_line()

    async def _read_line(self) -> None:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            raise AssertionError(f"process ended before the line; rc={self.proc.returncode}")
        try:
            self.lines.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            self.lines.append({"event": "_text", "text": raw.decode(errors="replace")})

    async def drain_output(self) -> None:
        """Read what is left until the process closes stdout."""
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            try:
                self.lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                self.lines.append({"event": "_text", "text": raw.decode(errors="replace")})

    async def stop(self) -> None:
        """Kill the process if it is still running."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def start_cli(*args: str, env: dict[str, str] | None = None) -> Process:
    """Start ``python -m proxy ARGS`` with JSON logs on stdout; tracing and credentials only if
    ``env`` turns them on (no ``OTEL_*`` or ``AZURE_*`` variable comes from the environment of
    the tests)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AZURE_"))}
    full_env = {**inherited, "DEFENDER_PROXY_LOG_FORMAT": "json", **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=full_env,
    )  # fmt: skip
    return Process(proc, [])


async def stop_process(proc: asyncio.subprocess.Process | None, timeout: float = 5.0) -> None:
    """SIGTERM a process and wait for it to exit (SIGKILL if it does not)."""
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
