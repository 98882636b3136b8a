"""What a fresh process imports to build and start the app: the Redis client only when it is used,
cryptography only for listen_tls, OpenTelemetry only when tracing is on, no token library
(azure-identity, MSAL, PyJWT); and what ``defender-proxy run`` holds once it listens: no PyYAML
without a config file, no simulator, and none of what only some requests need (the reference
table, the body readers, the $batch scanner) until one comes.

redis-py adds about 7 MiB to every process, and the lean RESP client and the Redis store are of no
use with the in-process store; ``proxy.quota.make_store`` imports them only when a ``redis://``
store is configured, and redis-py only for what the lean client does not serve. The OpenTelemetry
SDK, its OTLP exporter and protobuf are imported by ``proxy.tracing.start`` only when an
``OTEL_TRACES_EXPORTER`` it ships is named.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

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


# `defender-proxy run` as the console script runs it; once the admin port answers /healthz (so
# the start-up line is written: an accepted connection alone came before it on a loaded
# machine), the names in sys.modules go to the file argv[1] names and the process stops itself
# with SIGTERM.
_RUN = """
import os, signal, socket, sys, threading, time

def answered(port):
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as sock:
            sock.settimeout(2.0)
            sock.sendall(b"GET /healthz HTTP/1.0\\r\\n\\r\\n")
            return sock.recv(64).startswith(b"HTTP/1.")
    except OSError:
        return False

def dump():
    port = int(os.environ["DEFENDER_PROXY_ADMIN_LISTEN"].rsplit(":", 1)[1])
    for _ in range(600):
        if answered(port):
            break
        time.sleep(0.05)
    with open(sys.argv[1], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=dump, daemon=True).start()
from proxy.cli import main
sys.exit(main(["run"]))
"""

# Modules a proxy on its embedded defaults has no use for until a request needs them (or never):
# PyYAML without a file, the simulator, the reference table and what reads request bodies, the
# $batch answer scanner, difflib's suggestions, ctypes (malloc_trim, after a burst).
_LATER = (
    "yaml", "proxy.config_file", "proxy.simulator", "proxy.reference", "proxy.body_keys",
    "proxy.body_hints", "proxy.batch_answer", "difflib", "ctypes",
)  # fmt: skip


async def _modules_of_run(tmp_path: Path, **environ: str) -> set[str]:
    """The names in ``sys.modules`` of ``defender-proxy run`` once it listens, with the
    ``DEFENDER_PROXY_*`` variables ``environ`` (and free loopback ports)."""
    names = tmp_path / "modules.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFENDER_PROXY_", "OTEL_"))}
    env |= {
        # An https:// origin on loopback that nothing serves: the TLS context is made as in
        # production, and the reachability check is refused there.
        "DEFENDER_PROXY_UPSTREAM": f"https://127.0.0.1:{_free_port()}",
        "DEFENDER_PROXY_LISTEN": f"127.0.0.1:{_free_port()}",
        "DEFENDER_PROXY_ADMIN_LISTEN": f"127.0.0.1:{_free_port()}",
        "DEFENDER_PROXY_LOG_FORMAT": "json",
        **environ,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RUN, str(names), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert b'"event":"listening"' in out  # it really started
    return set(names.read_text().split())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _loaded(modules: set[str], names: tuple[str, ...]) -> set[str]:
    return {m for m in modules for n in names if m == n or m.startswith(n + ".")}


async def test_run_on_the_embedded_defaults_loads_only_what_serving_needs(tmp_path: Path) -> None:
    """`defender-proxy run` without a config file, once listening, has loaded neither PyYAML,
    the simulator, the reference table, the body readers, the batch scanner, difflib nor ctypes;
    nor OpenTelemetry, a Redis client or a token library."""
    modules = await _modules_of_run(tmp_path)
    assert {"proxy.cli", "proxy.serve", "proxy.handler", "proxy.trim"} <= modules
    assert _loaded(modules, _LATER) == set()
    assert _redis_py(modules) == set()
    assert modules.isdisjoint(REDIS_CLIENT)
    assert _telemetry(modules) == set()
    assert _loaded(modules, ("azure", "msal", "jwt", "cryptography")) == set()


async def test_run_with_a_config_file_loads_the_yaml_reader(tmp_path: Path) -> None:
    """With a config file, PyYAML and the file reader are loaded to read it, and the rest that
    serving does not need still is not."""
    config = tmp_path / "proxy.yaml"
    config.write_text("timeouts:\n  connect: 3s\n")
    modules = await _modules_of_run(tmp_path, DEFENDER_PROXY_CONFIG=str(config))
    assert {"yaml", "proxy.config_file"} <= modules
    assert _loaded(modules, _LATER[2:]) == set()
