"""The quota store over TLS (``rediss://``) against a real redis-server with a TLS port: the
server's certificate is checked against ``tls.ca_bundle``, unless the URL names its own CAs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from proxy.config import parse_settings
from proxy.metrics import Metrics
from proxy.quota import make_store
from proxy.quota.schedule import Window
from proxy.quota.store import Quota
from tests.support.ports import free_port
from tests.support.redis import RedisServer

QUOTA = Quota("dp:{tls:test}", (Window(1000, 60_000_000),))
#: the lean client serves a URL without options; one with options goes to redis-py
CLIENTS = {"lean-client": "", "redis-py": "?client_name=dp"}


@dataclass(frozen=True)
class TlsRedis:
    """A redis-server answering TLS on ``tls_port`` with a leaf of the CA in ``ca``; its plain
    port stays open for the test's own look at what it holds."""

    server: RedisServer
    tls_port: int
    ca: Path
    #: a CA that signed nothing the server holds
    stranger: Path

    def url(self, query: str = "") -> str:
        """The ``rediss://`` URL of database 0."""
        return f"rediss://127.0.0.1:{self.tls_port}/0{query}"


@pytest.fixture
async def tls_redis(tmp_path: Path) -> AsyncIterator[TlsRedis]:
    """A private redis-server with a TLS port whose certificate names 127.0.0.1."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "stranger")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    trustme.CA().cert_pem.write_to_path(str(files["stranger"]))
    tls_port = free_port()
    server = RedisServer(
        tmp_path,
        None,
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(files["cert"]),
        "--tls-key-file", str(files["key"]),
        "--tls-ca-cert-file", str(files["ca"]),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    await server.start()
    try:
        yield TlsRedis(server, tls_port, files["ca"], files["stranger"])
    finally:
        await server.stop()


async def _reaches(store_url: str, ca_bundle: Path | None, redis: TlsRedis) -> bool:
    """Whether the store made for these settings (as ``run`` makes it) warms up on Redis and
    logs its admission there rather than in its local share."""
    data: dict[str, object] = {"throttle": {"store": store_url, "store_timeout": "2s"}}
    if ca_bundle is not None:
        data["tls"] = {"ca_bundle": str(ca_bundle)}
    settings = parse_settings(data, "contoso.yaml", {})
    assert await redis.server.command("FLUSHALL") == b"+OK"
    store = make_store(settings.throttle, Metrics(), settings.tls.ca_bundle)
    try:
        warmed = await store.warm()
        decision = await store.admit(QUOTA, "m1", 1.0, 0.0, False)
    finally:
        await store.close()
    assert decision.admitted  # from Redis, or from the local share when it cannot be reached
    held = await redis.server.command("DBSIZE")
    assert warmed == (held != b":0"), held
    return warmed


@pytest.mark.parametrize("query", CLIENTS.values(), ids=CLIENTS.keys())
async def test_tls_ca_bundle_is_trusted_for_the_store(tls_redis: TlsRedis, query: str) -> None:
    """With tls.ca_bundle naming the CA of Redis's certificate, the store reaches Redis over
    TLS and its admissions are held there."""
    assert await _reaches(tls_redis.url(query), tls_redis.ca, tls_redis)


@pytest.mark.parametrize("query", CLIENTS.values(), ids=CLIENTS.keys())
async def test_without_the_ca_the_store_falls_back(tls_redis: TlsRedis, query: str) -> None:
    """Without tls.ca_bundle (the system's CAs), or with one that did not sign Redis's
    certificate, the store cannot reach Redis: its certificate is checked, not skipped."""
    assert not await _reaches(tls_redis.url(query), None, tls_redis)
    assert not await _reaches(tls_redis.url(query), tls_redis.stranger, tls_redis)


async def test_the_urls_own_ca_wins_over_tls_ca_bundle(tls_redis: TlsRedis) -> None:
    """ssl_ca_certs in the store URL is the store's trust, whatever tls.ca_bundle names."""
    right, wrong = tls_redis.ca, tls_redis.stranger
    assert await _reaches(tls_redis.url(f"?ssl_ca_certs={right}"), wrong, tls_redis)
    assert not await _reaches(tls_redis.url(f"?ssl_ca_certs={wrong}"), right, tls_redis)
