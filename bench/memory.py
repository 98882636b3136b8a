"""Where the proxy's idle memory goes: RSS after each import stage, then of started processes.

Run with ``make bench`` (or ``python -m bench.memory``). Three tables, medians of ``BENCH_ROUNDS``
(3) fresh processes each:

- **import stages**: one interpreter imports the stages in turn (Python alone, asyncio, uvloop,
  aiohttp, its server, the logging and metrics libraries, then the proxy's layers up to its CLI)
  and reports its VmRSS after each: what every stage adds;
- **started and idle**: VmRSS two seconds after the admin port answers, of a bare aiohttp server
  on uvloop (one route: the floor any aiohttp service starts from), of the same server holding
  the libraries the proxy's request path is built on (``LIBRARIES``: metrics, logs, JSON, the
  upstream's parser, brotli; the floor of any proxy made of them), of ``defender-proxy run`` on
  its embedded defaults (its upstream an ``https://`` origin on 127.0.0.1 that nothing serves, so
  the TLS context is built as in production and nothing leaves the machine; on jemalloc where the
  machine has it, as ``run`` starts), of the same on ``allocator: system``, of the same with
  the config file ``bench.overhead`` runs it with, and of ``UPSTREAMS`` listeners to ``https``
  origins with the system's CA bundle as ``tls.ca_bundle`` (what each TLS context costs);
- **modules held**: how many modules the started proxy holds beyond the bare server's, by
  top-level package, and whether any of those it should not load at all (the simulator, PyYAML,
  OpenTelemetry, redis-py, azure-identity, MSAL, cryptography) is among them.

Everything listens on 127.0.0.1 ports of its own. The tables are written to
``bench/results/memory.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.services import BENCH_THROTTLE, ROOT, scratch_dir, unwind_on_sigterm
from bench.stats import median, rss_mib, write_json
from tests.support.ports import free_port

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
#: Seconds a started process is left idle before its RSS is read.
SETTLE = 2.0

#: (label, statement) run in turn by one interpreter, cumulatively.
STAGES: list[tuple[str, str]] = [
    ("python", ""),
    ("+ asyncio", "import asyncio"),
    ("+ uvloop", "import uvloop"),
    ("+ aiohttp", "import aiohttp"),
    ("+ aiohttp.web", "import aiohttp.web"),
    ("+ structlog, orjson", "import structlog, orjson"),
    ("+ prometheus_client", "import prometheus_client"),
    ("+ proxy.config", "import proxy.config"),
    ("+ proxy.metrics", "import proxy.metrics"),
    ("+ proxy.quota.limiter", "import proxy.quota.limiter"),
    ("+ proxy.handler", "import proxy.handler"),
    ("+ proxy.app", "import proxy.app"),
    ("+ proxy.serve, proxy.cli", "import proxy.serve, proxy.cli"),
]

#: Packages a proxy on its defaults never needs: any of them loaded is a regression.
UNWANTED = ("yaml", "opentelemetry", "redis", "azure", "msal", "cryptography", "proxy.simulator")

_STAGE_SCRIPT = """
import json, re, sys
def rss():
    text = open("/proc/self/status").read()
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", text).group(1)) / 1024
out = []
for label, statement in json.loads(sys.argv[1]):
    exec(statement)
    out.append([label, rss()])
print(json.dumps(out))
"""

#: What the proxy's request path is built on beyond aiohttp and uvloop, imported by the "bare
#: server with the libraries" row: what any proxy made of them holds before a line of its own.
LIBRARIES = "import prometheus_client, structlog, orjson, httptools, brotli"

_BARE_SCRIPT = """
import asyncio, sys
import uvloop
from aiohttp import web
# libraries

async def main(port):
    app = web.Application()
    async def hello(request):
        return web.Response(text="hello")
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1])))
"""

# The proxy as `defender-proxy run` starts it; once its admin port answers, the names of the
# modules it holds go to the file named by argv[1] and the process stops itself.
_MODULES_SCRIPT = """
import os, signal, socket, sys, threading, time

def dump():
    port = int(os.environ["DEFENDER_PROXY_ADMIN_LISTEN"].rsplit(":", 1)[1])
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(1.0)
    with open(sys.argv[1], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=dump, daemon=True).start()
from proxy.cli import main
sys.exit(main(["run"]))
"""


def _environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFENDER_PROXY_", "OTEL_"))}
    return {**env, **extra}


def _proxy_env(config: Path | None = None) -> dict[str, str]:
    """A proxy on free loopback ports in front of an https:// origin on 127.0.0.1 that nothing
    serves (its reachability check is refused there, and nothing else is sent)."""
    env = _environ(
        DEFENDER_PROXY_UPSTREAM=f"https://127.0.0.1:{free_port()}",
        DEFENDER_PROXY_LISTEN=f"127.0.0.1:{free_port()}",
        DEFENDER_PROXY_ADMIN_LISTEN=f"127.0.0.1:{free_port()}",
        DEFENDER_PROXY_LOG_FORMAT="json",
    )
    if config is not None:
        env["DEFENDER_PROXY_CONFIG"] = str(config)
    return env


#: Listeners of the "several upstreams" row: each with an ``https`` origin of its own.
UPSTREAMS = 4


def _upstreams_config(work: Path) -> Path | None:
    """A config of ``UPSTREAMS`` listeners, each in front of an ``https`` origin on 127.0.0.1
    that nothing serves, trusting the system's CA bundle named as ``tls.ca_bundle`` (so every
    TLS context made would parse it whole); None where the system has no bundle file."""
    # None where the system has no such file (typeshed says str).
    bundle: str | None = ssl.get_default_verify_paths().cafile
    if bundle is None:
        return None
    entries = "".join(
        f"  - {{name: u{number}, origin: 'https://127.0.0.1:{free_port()}', "
        f"listen: '127.0.0.1:{free_port()}', catalogue: all}}\n"
        for number in range(UPSTREAMS)
    )
    path = work / "upstreams.yaml"
    path.write_text(f"upstreams:\n{entries}tls: {{verify: true, ca_bundle: '{bundle}'}}\n")
    return path


def _wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {seconds:g}s")


@contextlib.contextmanager
def _started(args: list[str], env: dict[str, str], port: int) -> Iterator[int]:
    """A process started with ``args``, once ``port`` accepts connections; its pid."""
    proc = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, proc)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _idle_rss(args: list[str], env: dict[str, str], port: int) -> float:
    with _started(args, env, port) as pid:
        time.sleep(SETTLE)
        return rss_mib(pid)


def _printed(script: str, *args: str) -> object:
    """What ``script`` (run by this interpreter with ``args``) prints, read as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_environ(),
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)


def _stages() -> list[tuple[str, float]]:
    stages = _printed(_STAGE_SCRIPT, json.dumps(STAGES))
    assert isinstance(stages, list)
    return [(str(label), float(mib)) for label, mib in stages]


def _proxy_modules(work: Path) -> set[str]:
    names = work / "modules.txt"
    subprocess.run(
        [sys.executable, "-c", _MODULES_SCRIPT, str(names)],
        env=_proxy_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    return set(names.read_text().split())


def _bare_modules() -> set[str]:
    script = _BARE_SCRIPT.replace(
        "    await asyncio.Event().wait()", "    print(json.dumps(sorted(sys.modules)))"
    ).replace("import asyncio, sys", "import asyncio, json, sys")
    names = _printed(script, str(free_port()))
    assert isinstance(names, list)
    return {str(name) for name in names}


def main() -> None:
    """Measure and print the three tables."""
    unwind_on_sigterm()
    rounds = [_stages() for _ in range(ROUNDS)]
    stages = [(label, median([r[i][1] for r in rounds])) for i, (label, _) in enumerate(rounds[0])]
    print(f"import stages (VmRSS, medians of {ROUNDS} interpreters)")
    print(f"{'stage':<28}{'MiB':>8}{'adds':>8}")
    previous = 0.0
    for label, mib in stages:
        print(f"{label:<28}{mib:>8.1f}{mib - previous if previous else mib:>+8.1f}")
        previous = mib

    idle: dict[str, float] = {}
    with scratch_dir("bench-memory-") as work:
        config = work / "bench.yaml"
        config.write_text(BENCH_THROTTLE)
        several = _upstreams_config(work)
        samples: dict[str, list[float]] = {
            "bare": [],
            "libraries": [],
            "defaults": [],
            "system": [],
            "config": [],
            "upstreams": [],
        }
        for _ in range(ROUNDS):
            for name, script in (
                ("bare", _BARE_SCRIPT),
                ("libraries", _BARE_SCRIPT.replace("# libraries", LIBRARIES)),
            ):
                port = free_port()
                samples[name].append(
                    _idle_rss([sys.executable, "-c", script, str(port)], _environ(), port)
                )
            for name, path in (
                ("defaults", None),
                ("system", None),
                ("config", config),
                ("upstreams", several),
            ):
                if name == "upstreams" and path is None:
                    continue
                env = _proxy_env(path)
                if name == "system":
                    env["DEFENDER_PROXY_ALLOCATOR"] = "system"
                if name == "upstreams":  # the config's listeners replace the shorthand's
                    del env["DEFENDER_PROXY_UPSTREAM"], env["DEFENDER_PROXY_LISTEN"]
                admin = int(env["DEFENDER_PROXY_ADMIN_LISTEN"].rsplit(":", 1)[1])
                samples[name].append(_idle_rss([sys.executable, "-m", "proxy", "run"], env, admin))
        if several is None:
            print("no system CA bundle: the row of several upstreams is left out")
            del samples["upstreams"]
        idle = {name: median(values) for name, values in samples.items()}
        print(f"\nstarted and idle (VmRSS {SETTLE:g} s after listening, medians of {ROUNDS})")
        labels = {
            "bare": "bare aiohttp server, uvloop",
            "libraries": "the same with the proxy's libraries",
            "defaults": "proxy, embedded defaults",
            "system": "the same, allocator: system",
            "config": "proxy, bench.overhead's config",
            "upstreams": f"proxy, {UPSTREAMS} https upstreams, CA bundle",
        }
        width = max(len(label) for label in labels.values()) + 1
        for name, label in labels.items():
            if name not in samples:
                continue
            values = ", ".join(f"{v:.1f}" for v in samples[name])
            over = f"  (+{idle[name] - idle['bare']:.1f} over bare)" if name != "bare" else ""
            print(f"{label:<{width}}{idle[name]:>8.1f} MiB  [{values}]{over}")

        held = _proxy_modules(work)
    bare = _bare_modules()
    extra = held - bare
    packages = Counter(name.split(".")[0] for name in extra if not name.startswith("proxy"))
    own = sorted(name for name in extra if name.startswith("proxy"))
    unwanted = sorted(
        name for name in held if any(name == u or name.startswith(u + ".") for u in UNWANTED)
    )
    print(
        f"\nmodules held: {len(held)} by the proxy on its defaults, {len(bare)} by the bare "
        f"server; {len(extra)} more, {len(own)} of them the proxy's own"
    )
    print("  beyond the bare server, by package: " + ", ".join(
        f"{name} {count}" for name, count in packages.most_common()
    ))  # fmt: skip
    print(f"  loaded that a proxy on its defaults never needs: {', '.join(unwanted) or 'none'}")
    out = write_json(
        "memory.json",
        {
            "rounds": ROUNDS,
            "stages_mib": dict(stages),
            "idle_mib": idle,
            "idle_samples_mib": samples,
            "modules": {
                "proxy": len(held),
                "bare": len(bare),
                "proxy_own": own,
                "beyond_bare_by_package": dict(packages),
                "unwanted": unwanted,
            },
        },
    )
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
