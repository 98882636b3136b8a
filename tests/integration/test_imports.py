"""What a fresh process imports to build and start the app: the Redis client only when it is used,
cryptography only for listen_tls, OpenTelemetry only when tracing is on, no token library
(azure-identity, MSAL, PyJWT).

redis-py adds about 7 MiB to every process, and the lean RESP client and the Redis store are of no
use with the in-process store; ``proxy.quota.make_store`` imports them only when a ``redis://``
store is configured, and redis-py only for what the lean client does not serve. The OpenTelemetry
SDK, its OTLP exporter and protobuf are imported by ``proxy.tracing.start`` only when an
``OTEL_TRACES_EXPORTER`` it ships is named.
"""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from tests.support.redis import RedisServer

# Start tracing and build the app with the settings the environment gives, as `run` does; start it
# (the admin app's cleanup context opens the upstream pool, opens the quota store and warms it),
# stop it, and print what it imported.
_START = """
import asyncio, json, sys
from aiohttp import web
from proxy import serve, tracing
from proxy.app import build
from proxy.config import load_settings

async def main():
    _, spans = tracing.start()
    _, admin = build(load_settings(), tracing=spans)
    runner = web.AppRunner(admin)
    await runner.setup()
    await runner.cleanup()

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""

REDIS_CLIENT = ("proxy.quota.fallback", "proxy.quota.redis_store", "proxy.quota.resp")


async def _modules_after_start(store: str, **otel: str) -> set[str]:
    """The names in ``sys.modules`` of a fresh interpreter that built and started the app, with
    the ``OTEL_*`` variables ``otel`` (and no other)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFENDER_PROXY_", "OTEL_"))}
    env |= otel
    env |= {
        "DEFENDER_PROXY_STORE": store,
        "DEFENDER_PROXY_UPSTREAM": "http://127.0.0.1:9",  # never called: nothing is forwarded
        "DEFENDER_PROXY_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _START, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"quota store unreachable" not in out  # the store was reached: the app really started
    names: list[str] = orjson.loads(out.splitlines()[-1])
    return set(names)


def _redis_py(modules: set[str]) -> set[str]:
    return {name for name in modules if name == "redis" or name.startswith("redis.")}


def _telemetry(modules: set[str]) -> set[str]:
    return {
        name
        for name in modules
        if name.partition(".")[0] == "opentelemetry" or name.startswith("google.protobuf")
    }


async def test_the_memory_store_imports_no_redis_client() -> None:
    """With the in-process store, neither redis-py nor the lean client nor the Redis store load."""
    modules = await _modules_after_start("memory")
    assert "proxy.app" in modules
    assert "proxy.quota.memory" in modules
    assert _redis_py(modules) == set()
    assert modules.isdisjoint(REDIS_CLIENT)
    # cryptography reads a listen_tls pair: a plain-HTTP proxy port never loads it.
    assert not any(name.split(".")[0] == "cryptography" for name in modules)
    # The token libraries, and the simulator's identity provider that uses them, load only where
    # they are used.
    assert modules.isdisjoint({"azure", "msal", "jwt", "proxy.simulator"})


async def test_a_redis_url_imports_the_lean_client_only(redis_server: RedisServer) -> None:
    """A plain redis:// store loads the Redis store and the lean RESP client, not redis-py."""
    modules = await _modules_after_start(redis_server.url)
    assert modules.issuperset(REDIS_CLIENT)
    assert _redis_py(modules) == set()


async def test_a_redis_url_with_options_imports_redis_py(redis_server: RedisServer) -> None:
    """A redis:// store with query options is served by redis-py, so redis-py is imported."""
    modules = await _modules_after_start(f"{redis_server.url}?client_name=defender-proxy")
    assert modules.issuperset(REDIS_CLIENT)
    assert {"redis", "redis.asyncio"} <= _redis_py(modules)


async def test_tracing_off_imports_nothing_of_opentelemetry() -> None:
    """Without OTEL_TRACES_EXPORTER the serving modules load, and neither the OpenTelemetry API,
    SDK or exporter nor protobuf does."""
    modules = await _modules_after_start("memory")
    assert {"proxy.serve", "proxy.tracing", "proxy.handler"} <= modules
    assert "proxy.spans" not in modules
    assert _telemetry(modules) == set()


async def test_tracing_on_imports_the_sdk_and_its_exporter() -> None:
    """OTEL_TRACES_EXPORTER=otlp loads the spans module, the SDK and the OTLP/HTTP exporter."""
    modules = await _modules_after_start(
        "memory",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",  # never called: nothing is traced
    )
    assert "proxy.spans" in modules
    assert {
        "opentelemetry.sdk.trace",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    } <= _telemetry(modules)
