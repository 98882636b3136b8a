"""A private Prometheus server for one test, and a reader for the selectors of a PromQL expression.

``PrometheusServer`` runs the real ``prometheus`` binary (Debian package ``prometheus``) on its own
loopback port with its own storage directory and the scrape configuration the test gives; queries
go through the HTTP API. ``selectors`` lists the series selectors of an expression (metric name
and label matchers) without a full PromQL parser: enough to check that what a dashboard or a rule
names exists in an exposition, and that Prometheus itself then says whether the whole expression
parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.procs import stop_process

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_MATCHER = re.compile(
    r"""([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
)
# Words followed by a parenthesised label list rather than an expression.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
# Operators, and the aggregations, which may come before their ``by (…)`` instead of a "(".
_KEYWORDS = frozenset(
    {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}
    | {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile"}
)

Matcher = tuple[str, str, str]


class PrometheusServer:
    """One ``prometheus`` process on 127.0.0.1, with its config and storage under ``workdir``."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.log = workdir / "prometheus.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The base URL of the web API."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, config: dict[str, Any], timeout: float = 20.0) -> None:
        """Write ``config`` as prometheus.yml, start the server, return once it is ready."""
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                PROMETHEUS,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        async with asyncio.timeout(timeout):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError):
                    async with self._session.get(f"{self.url}/-/ready") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)

    async def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET ``/api/v1/<path>`` and return the decoded answer, errors included."""
        assert self._session is not None, "start the server first"
        async with self._session.get(f"{self.url}/api/v1/{path}", params=params) as response:
            answer: dict[str, Any] = await response.json()
            return answer

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of ``expr`` now; AssertionError if it fails."""
        answer = await self.api("query", query=expr)
        if answer.get("status") != "success":
            raise AssertionError(f"{answer.get('errorType')}: {answer.get('error')}")
        data = answer["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server and wait for it to exit (SIGKILL if it does not)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        await stop_process(self.proc, timeout)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines Prometheus logged, for failure messages."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def selectors(expr: str) -> list[tuple[str, list[Matcher]]]:
    """Every series selector in ``expr``: (metric name or "", [(label, op, value) …])."""
    found: list[tuple[str, list[Matcher]]] = []
    i, n = 0, len(expr)
    while i < n:
        char = expr[i]
        if char in "\"'`":
            i = _after_string(expr, i)
        elif char == "[":
            i = expr.index("]", i) + 1
        elif char == "#":
            i = n if (end := expr.find("\n", i)) < 0 else end
        elif char.isdigit() or (char == "." and i + 1 < n and expr[i + 1].isdigit()):
            # a number or a duration (5m, 1e3, 0x1f): never a metric name
            while i < n and (expr[i].isalnum() or expr[i] in "._"):
                i += 1
        elif char == "{":
            end = _closing_brace(expr, i)
            matchers = _matchers(expr[i + 1 : end])
            names = [value for label, op, value in matchers if label == "__name__" and op == "="]
            found.append((names[0] if names else "", matchers))
            i = end + 1
        elif match := _IDENT.match(expr, i):
            word, i = match.group(), match.end()
            nxt = _skip_space(expr, i)
            if nxt < n and expr[nxt] == "(":
                if word in _LABEL_LISTS:
                    i = expr.index(")", nxt) + 1
                # otherwise a function: its arguments are read like the rest
            elif word in _KEYWORDS:
                pass
            elif nxt < n and expr[nxt] == "{":
                end = _closing_brace(expr, nxt)
                found.append((word, _matchers(expr[nxt + 1 : end])))
                i = end + 1
            else:
                found.append((word, []))
        else:
            i += 1
    return found


def _matchers(text: str) -> list[Matcher]:
    return [(label, op, value[1:-1]) for label, op, value in _MATCHER.findall(text)]


def _skip_space(expr: str, i: int) -> int:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return i


def _after_string(expr: str, start: int) -> int:
    quote, i = expr[start], start + 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    return i + 1


def _closing_brace(expr: str, start: int) -> int:
    i = start + 1
    while expr[i] != "}":
        i = _after_string(expr, i) if expr[i] in "\"'`" else i + 1
    return i
