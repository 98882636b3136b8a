"""The start of ``run`` for any settings ``check-config`` accepts: nothing raises before listening.

``run`` builds the router, the limiter and its store, the admin app (whose start opens the
upstream pool with its TLS context and warms the store) and the proxy's server, then admits
requests. Documents are generated near every bound (the largest and smallest accepted values,
and just past them) with some hostile values mixed in; whatever ``load_settings`` accepts must
get through all of that and the first admission of every route.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from pathlib import Path

import pytest
import trustme
import uvloop
import yaml
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy import logs
from proxy.app import build, proxy_server
from proxy.config import ConfigError, Settings, load_settings, parse_settings
from proxy.forward import tls_context
from proxy.metrics import Metrics
from proxy.quota_headers import RateLimitFields

CA_BUNDLE = "CA-BUNDLE-PATH"  # replaced by a real PEM file's path in each example
HUGE = "9" * 400
Strategy = st.SearchStrategy[object]


def durations(most: str, seconds: float, positive: bool = True) -> tuple[Strategy, Strategy]:
    """(durations accepted, up to the bound ``most`` of ``seconds``; durations just past it)."""
    edges: list[object] = ["1ms", "0.001", 1, most, f" {most} "]
    if not positive:
        edges += ["0s", 0]
    inside = st.one_of(
        st.sampled_from(edges),
        st.floats(min_value=0.001 if positive else 0.0, max_value=seconds),
        st.integers(min_value=1 if positive else 0, max_value=int(seconds)),
    )
    past: list[object] = [f"{HUGE}s", seconds * 1.001, int(seconds) + 1]
    if positive:
        past.append("0s")
    return inside, st.sampled_from(past)


def sizes(least: int, most: str, size: int) -> tuple[Strategy, Strategy]:
    """(sizes accepted, from ``least`` to the bound ``most`` of ``size`` bytes; sizes past it)."""
    inside = st.one_of(st.sampled_from([least, str(least), most]), st.integers(least, size))
    return inside, st.sampled_from([least - 1, size + 1, f"{HUGE}KiB"])


def counts(most: int) -> tuple[Strategy, Strategy]:
    """(whole numbers from 1 to ``most``; 0 and ``most`` + 1)."""
    inside = st.one_of(st.sampled_from([1, most]), st.integers(1, most))
    return inside, st.sampled_from([0, most + 1])


def choices(*accepted: str) -> tuple[Strategy, Strategy]:
    """(one of ``accepted``; the same with a trailing newline, which is refused)."""
    return st.sampled_from(accepted), st.sampled_from([f"{value}\n" for value in accepted])


LIMITS = st.one_of(
    st.sampled_from(["100000/1d", "1/1ms", "1/86400s", "5/1.5ms"]),
    st.builds("{}/{}ms".format, st.integers(1, 100_000), st.integers(1, 86_400_000)),
)
ROUTES = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["machines.get", "new.route", "other", "advancedqueries.run"])},
        optional={
            "match": st.lists(
                st.sampled_from(["GET /new/{id}", "* /x/**", "POST /api/v1.0/y*z", "GET /"]),
                min_size=1,
                max_size=3,
            ),
            "limits": st.lists(LIMITS, min_size=1, max_size=3, unique=True),
            "priority": st.sampled_from(["interactive", "bulk"]),
            "mode": st.sampled_from(["enforce", "shadow"]),
        },
    ),
    max_size=3,
    unique_by=lambda route: str(route["name"]),
)
# Stores that refuse connections at once: the start must fall back, never fail.
STORES = (
    "memory",
    "redis://127.0.0.1:1/2147483646",
    "redis://127.0.0.1:1/0?password=p&client_name=dp",
    "rediss://127.0.0.1:1/0",
    f"rediss://127.0.0.1:1/0?ssl_cert_reqs=none&ssl_check_hostname=false&ssl_ca_certs={CA_BUNDLE}",
    "unix:///nonexistent/redis.sock?db=2147483646",
    "redis+cluster://127.0.0.1:1",
    "rediss+cluster://127.0.0.1:1?ssl_cert_reqs=required&client_name=dp",
)
UPSTREAMS = st.lists(
    st.fixed_dictionaries(
        {
            "origin": st.sampled_from(
                [
                    "https://api.security.microsoft.com",
                    "https://graph.microsoft.com",
                    "http://[::1]:1",
                ]
            ),
            "listen": st.sampled_from(["127.0.0.1:0", "[::1]:0"]),
        },
        optional={"catalogue": st.sampled_from(["defender", "graph", "all", "GRAPH "])},
    ),
    min_size=1,
    max_size=16,
).map(lambda entries: [{"name": f"u-{i}", **entry} for i, entry in enumerate(entries)])
HOSTILE = st.one_of(
    st.sampled_from([10**400, float("nan"), float("inf"), -1, True, None, "", "x\n", [1, [2]]]),
    st.text(max_size=10),
)

# Per key: (values accepted, the bounds included; values just past a bound).
NEAR_BOUNDS: dict[tuple[str, ...], tuple[Strategy, Strategy]] = {
    ("upstream",): choices(
        "https://api.security.microsoft.com",
        "http://127.0.0.1:1",
        "https://[::1]:65535",
        "https://a-b.example.",
    ),
    ("listen",): choices("127.0.0.1:0", "[::1]:0", "localhost:65535", "0.0.0.0:1"),
    ("admin_listen",): choices("127.0.0.1:0", "[::1]:0"),
    ("timeouts", "connect"): durations("5m", 300),
    ("timeouts", "read"): durations("1h", 3600),
    ("timeouts", "caller"): durations("1h", 3600),
    ("timeouts", "pool"): durations("10m", 600),
    ("timeouts", "caller_keepalive"): durations("1h", 3600),
    ("log_level",): choices("debug", "error"),
    ("shutdown_grace",): durations("1h", 3600, positive=False),
    ("tls", "verify"): (st.booleans(), st.sampled_from(["true", 1])),
    ("tls", "ca_bundle"): (st.just(CA_BUNDLE), st.just("/etc/hostname")),
    ("limits", "max_body"): sizes(1, "16GiB", 16 << 30),
    ("limits", "error_body_cap"): sizes(1, "64MiB", 64 << 20),
    ("limits", "max_header_size"): sizes(1024, "1MiB", 1 << 20),
    ("limits", "caller_connections"): counts(2**20),
    ("limits", "recent_errors"): (
        st.one_of(st.sampled_from([0, 10_000]), st.integers(0, 10_000)),
        st.sampled_from([-1, 10_001, "200"]),
    ),
    ("pool", "max_connections"): counts(10_000),
    ("pool", "keepalive"): durations("1h", 3600, positive=False),
    ("allow_from",): (
        st.lists(st.sampled_from(["10.0.0.0/8", "::/0", "127.0.0.1", "fe80::1/128"])),
        st.just(["10.0.0.0/8\n"]),
    ),
    ("throttle", "store"): choices(*STORES),
    ("throttle", "namespace"): choices("default", "a" * 64, "x.y-z_1"),
    ("throttle", "mode"): choices("enforce", "shadow"),
    ("throttle", "max_wait"): durations("1h", 3600, positive=False),
    ("throttle", "store_timeout"): durations("5s", 5),
    ("throttle", "margin"): durations("9999ms", 9.999, positive=False),
    ("throttle", "max_pause"): durations("1d", 86400),
    ("throttle", "bulk_reserve"): (
        st.floats(min_value=0, max_value=1, exclude_max=True),
        st.sampled_from([1, 1.0, -0.0001]),
    ),
    ("throttle", "fallback", "expected_replicas"): counts(1000),
    ("throttle", "fallback", "cooldown"): durations("1h", 3600),
    ("throttle", "routes"): (ROUTES, st.just([{"name": "machines.get", "limits": [f"1/{HUGE}s"]}])),
    ("upstreams",): (UPSTREAMS, st.just([])),
}


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    """A document of keys near their bounds: mostly accepted values, now and then a value past
    a bound or a hostile one."""
    document: dict[str, object] = {}
    keys = draw(st.lists(st.sampled_from(sorted(NEAR_BOUNDS)), max_size=12, unique=True))
    for path in keys:
        inside, outside = NEAR_BOUNDS[path]
        kind = draw(st.integers(0, 19))
        value = draw(HOSTILE if kind == 0 else outside if kind == 1 else inside)
        target = document
        for key in path[:-1]:
            section = target.setdefault(key, {})
            assert isinstance(section, dict)
            target = section
        target[path[-1]] = value
    return document


@pytest.fixture(scope="module")
def ca_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PEM file with one CA certificate, for tls.ca_bundle."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


async def start_of_run(settings: Settings) -> int:
    """What ``serve`` does before it listens, then the first admission of every route.

    Returns how many distinct routes were admitted.
    """
    proxies, admin = build(settings, Metrics())
    admin_runner = web.AppRunner(admin, access_log=None)
    proxy_runners = [
        web.ServerRunner(proxy_server(proxy), shutdown_timeout=settings.shutdown_grace)
        for proxy in proxies
    ]
    await admin_runner.setup()  # cleanup_ctx: the upstream pools (TLS context), the store warmed
    for runner in proxy_runners:
        await runner.setup()
    try:
        # The listeners share one limiter: a route served by several is admitted once.
        admitted: set[str] = set()
        for proxy in proxies:
            if proxy.upstream.origin.startswith("https:"):
                tls_context(settings)
            assert proxy.limiter is not None
            fields = RateLimitFields(proxy.router.routes)
            for spec in proxy.router.routes:
                if spec.name in admitted:
                    continue
                admission = await proxy.limiter.admit(spec.name, f"first-{spec.name}")
                fields.fields(spec.name, admission.decision)
                admitted.add(spec.name)
        return len(admitted)
    finally:
        for runner in proxy_runners:
            await runner.cleanup()
        await admin_runner.cleanup()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_accepted_settings_always_start(ca_bundle: str, document: dict[str, object]) -> None:
    """Settings that check-config accepts build, warm and admit every route without raising;
    the rest are refused with the file and a key path."""
    text = yaml.safe_dump(document).replace(CA_BUNDLE, ca_bundle)
    logs.configure("json", "error", io.StringIO())
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "contoso.yaml")
        Path(path).write_text(text, encoding="utf-8")
        try:
            settings = load_settings(path, environ={})
        except ConfigError as error:
            refused = error.problems
        else:
            refused = []
    event("refused" if refused else "accepted")
    if refused:
        assert all(problem.startswith(f"{path}: ") for problem in refused)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(start_of_run(settings)) >= 1


# Every edge on its own, so that none is left to the luck of a draw: (key path, value).
EDGES: list[tuple[str, object]] = [
    *(("throttle.store", store) for store in STORES),
    *(("upstream", url) for url in ("https://[::1]:65535", "https://a-b.example.", "HTTP://X:1")),
    ("listen", "localhost:65535"),
    ("timeouts.connect", "5m"),
    ("timeouts.read", "1h"),
    ("timeouts.caller", "1ms"),
    ("timeouts.pool", "10m"),
    ("timeouts.caller_keepalive", "1h"),
    ("shutdown_grace", "1h"),
    ("tls.ca_bundle", CA_BUNDLE),
    ("limits.max_body", "16GiB"),
    ("limits.error_body_cap", "64MiB"),
    ("limits.max_header_size", "1KiB"),
    ("limits.max_header_size", "1MiB"),
    ("limits.caller_connections", 2**20),
    ("limits.recent_errors", 0),
    ("limits.recent_errors", 10_000),
    ("pool.max_connections", 10_000),
    ("pool.keepalive", 0),
    ("throttle.max_wait", "1h"),
    ("throttle.max_wait", 0),
    ("throttle.store_timeout", "1ms"),
    ("throttle.margin", "9.999s"),
    ("throttle.max_pause", "1d"),
    ("throttle.bulk_reserve", 0.999999),
    ("throttle.fallback.expected_replicas", 1000),
    ("throttle.fallback.cooldown", "1ms"),
    (
        "throttle.routes",
        [{"name": "new.route", "match": ["* /x/**"], "limits": ["100000/1d", "1/1ms"]}],
    ),
    ("throttle.routes", [{"name": "machines.get", "limits": ["1/86400s"], "priority": "bulk"}]),
]


@pytest.mark.parametrize(("path", "value"), EDGES, ids=[f"{p}={v!r}"[:60] for p, v in EDGES])
def test_each_edge_value_starts(ca_bundle: str, path: str, value: object) -> None:
    """Each accepted edge value (a bound, a store URL with options) builds, warms and admits."""
    for key in reversed(path.split(".")):
        value = {key: value}
    text = yaml.safe_dump(value).replace(CA_BUNDLE, ca_bundle)
    logs.configure("json", "error", io.StringIO())
    settings = parse_settings(yaml.safe_load(text), "contoso.yaml", {})
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(start_of_run(settings)) >= 1
