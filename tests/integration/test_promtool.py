"""The metrics exposition passes ``promtool check metrics`` after a mix of traffic."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from tests.conftest import Stack


async def test_exposition_is_clean_for_promtool(make_stack: Any) -> None:
    """promtool finds nothing to complain about in the exposition, errors and markers included."""
    stack: Stack = await make_stack(quota=True)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus; `make test` installs it)"
    # hunting-429 comes last: the pause it causes would hold the requests after it.
    for directive in ("", "error=Unauthorized", "error=Forbidden", "body=html",
                      "graph-error=UnknownError:500", "reset", "hunting-429"):  # fmt: skip
        headers = {"X-Simulate": directive} if directive else {}
        response = await stack.client.get("/api/machines", headers=headers)
        await response.read()
    response = await stack.client.request("CONNECT", "/")
    await response.read()
    exposition = stack.metrics.exposition()
    assert b"defender_api_errors_total{" in exposition
    assert b"defender_proxy_admissions_total{" in exposition
    assert b"defender_proxy_quota_remaining{" in exposition
    result = subprocess.run(  # noqa: ASYNC221 - a short local check
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b""
    assert result.stderr.strip() == b""
