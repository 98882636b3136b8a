"""The real CLI on the worst config values: ``check-config`` and ``run`` both exit 2, naming the key.

Each of these once passed ``check-config`` and crashed ``run`` (or ``check-config`` itself) with a
traceback, or left the proxy in fallback for ever.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

NINES = "9" * 400

WORST = [
    ("limits: {max_body: NINESKiB}\n", "limits.max_body: must be at most 16GiB"),
    (
        "throttle:\n  routes:\n    - {name: machines.get, limits: ['1/NINESs']}\n",
        "throttle.routes[0].limits[0]: the window must be at most 1d",
    ),
    ("throttle: {max_wait: NINESs}\n", "throttle.max_wait: must be at most 1h"),
    ("tls: {ca_bundle: NOT_A_CERTIFICATE}\n", "tls.ca_bundle: "),
    ('throttle: {namespace: "prod\\n"}\n', "throttle.namespace: expected 1-64 characters"),
    (
        "throttle: {store: 'redis://127.0.0.1:6379/99999999999999999999'}\n",
        "throttle.store: the database must be at most 2147483646",
    ),
    ("listen: 2024-02-30\n", "invalid YAML: a value cannot be read"),
    ("listen: " + "[" * 3000 + "]" * 3000 + "\n", "invalid YAML: nested too deeply"),
    (
        "listen_tls: {cert: NOT_A_CERTIFICATE, key: NOT_A_CERTIFICATE}\n",
        "listen_tls.cert: ",
    ),
]
IDS = [
    "max_body",
    "limit",
    "max_wait",
    "ca_bundle",
    "namespace",
    "database",
    "date",
    "nesting",
    "listen_tls",
]
# Should a regression let `run` start, it must not take a fixed port from anything else.
FREE_PORTS = "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"


async def cli(*args: str) -> tuple[int, str]:
    """Run ``python -m proxy ARGS`` to its end: (exit code, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFENDER_PROXY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "DEFENDER_PROXY_LOG_FORMAT": "json"},
    )
    try:
        async with asyncio.timeout(20):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # it started serving instead of refusing: stop it
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize(("text", "problem"), WORST, ids=IDS)
async def test_check_config_and_run_refuse_the_worst_values(
    tmp_path: Path, text: str, problem: str
) -> None:
    """check-config and run both exit 2 with the file and key path on stderr, and no traceback."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("this is not a certificate\n", encoding="utf-8")
    config = tmp_path / "proxy.yaml"
    config.write_text(
        FREE_PORTS + text.replace("NINES", NINES).replace("NOT_A_CERTIFICATE", str(bundle)),
        encoding="utf-8",
    )
    for args in (("check-config", str(config)), ("run", "--config", str(config))):
        code, err = await cli(*args)
        assert "Traceback" not in err, err
        assert code == 2, err
        assert f"{config}: {problem}" in err, err
