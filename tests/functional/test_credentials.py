"""The proxy holding the app's credential: tokens minted by azure-identity from the simulator's
stand-in Entra ID over TLS, injected into tokenless requests, and what the API (the simulator,
checking every token) received — compared with what the proxy logged and counted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.config import parse_settings
from proxy.handler import Proxy
from proxy.metrics import Metrics
from proxy.routing import Router
from proxy.simulator import SimConfig, make_app
from proxy.simulator.directory import EXCHANGE_AUDIENCE, App, Federated, Secret, certificate
from proxy.tokens import TokenSource, sources_for
from tests.conftest import LogCapture
from tests.idpkit import APP, ROLES, SECRET, TENANT, Files, Idp, held_config, running_idp
from tests.tlsfiles import SecretDir

NEW_SECRET = "n3w-secret~after.rotation"
ISSUER = "https://oidc.cluster.example/"
SUBJECT = "system:serviceaccount:security:defender-proxy"


@dataclass
class Held:
    """The proxy holding a credential, in front of the simulator, with the provider beside it."""

    proxy: Proxy
    source: TokenSource
    client: TestClient[Any, Any]
    idp: Idp
    simulator: TestServer
    metrics: Metrics
    logs: LogCapture

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def journal(self) -> list[dict[str, Any]]:
        """What the simulator received, oldest first."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{_origin(self.simulator)}/_sim/requests") as response,
        ):
            entries: list[dict[str, Any]] = (await response.json())["requests"]
        return entries

    async def token_requests(self) -> list[dict[str, Any]]:
        """The token requests the provider received, oldest first."""
        stats = await self.idp.control("GET", "/_sim/identity")
        requests: list[dict[str, Any]] = stats["requests"]
        return requests


def _origin(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


Hold = Callable[..., Awaitable[Held]]


@pytest.fixture
async def hold(
    tmp_path: Path,
    files: Files,
    aiohttp_server: Callable[..., Any],
    aiohttp_raw_server: Callable[..., Any],
    aiohttp_client: Callable[..., Any],
    captured_logs: LogCapture,
) -> AsyncIterator[Hold]:
    """Start the provider (knowing ``apps``), the simulator checking tokens, and a proxy whose
    ``credentials`` section is ``section`` (authority and scope filled in); ``start`` starts the
    token source's background work (the first mint, the file watch) as ``run`` does."""
    stack = contextlib.AsyncExitStack()
    started: list[TokenSource] = []
    proxies: list[Proxy] = []

    async def build(
        section: dict[str, Any],
        apps: tuple[App, ...] | None = None,
        lifetime: int = 3599,
        start: bool = True,
        interval: float = 0.05,
        **top: Any,
    ) -> Held:
        app = App(TENANT, APP, ROLES, (Secret(SECRET), Secret(NEW_SECRET)))
        idp = await stack.enter_async_context(running_idp(files, apps or (app,), lifetime))
        simulator: TestServer = await aiohttp_server(make_app(SimConfig(check_tokens=True)))
        config = held_config(_origin(simulator), idp, section, read=2, **top)
        settings = parse_settings(config, "test.yaml", environ={})
        metrics = Metrics()
        source = sources_for(settings, metrics)["default"]
        source._interval = interval  # the file watch, polled often in tests
        proxy = Proxy(settings, metrics, Router(), None, tokens=source)
        await proxy.start()
        proxies.append(proxy)
        if start:
            await source.start()
            started.append(source)
        client = await aiohttp_client(await aiohttp_raw_server(proxy.handle))
        return Held(proxy, source, client, idp, simulator, metrics, captured_logs)

    yield build
    for source in started:
        await source.close()
    for proxy in proxies:
        await proxy.close()
    await stack.aclose()


def _secret_file(tmp_path: Path, value: str = SECRET) -> Path:
    path = tmp_path / "client-secret"
    path.write_text(value + "\n", encoding="utf-8")
    return path


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Wait until ``check()`` holds, polling; fails the test after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - the state is another server's, polled
            await asyncio.sleep(0.05)


async def test_a_hundred_concurrent_tokenless_calls_make_one_token_request(
    hold: Hold, tmp_path: Path
) -> None:
    """100 calls without a token, all arriving while the first mint is still answering, make one
    token request; each is forwarded with that token, and the API (checking it) admits all."""
    held = await hold({"client_secret_file": str(_secret_file(tmp_path))}, start=False)
    await held.idp.control("POST", "/_sim/identity/delay", {"count": 1, "seconds": 1.0})
    answers = await asyncio.gather(*(held.client.get("/api/machines") for _ in range(100)))
    assert [answer.status for answer in answers] == [200] * 100
    minted = await held.token_requests()
    assert [(r["outcome"], r["proof"]) for r in minted] == [("issued", "secret[0]")]
    received = await held.journal()
    assert len(received) == 100
    assert len({entry["token"] for entry in received}) == 1
    assert received[0]["token"]
    assert held.sample("defender_proxy_token_requests_total", result="ok", code="") == 1
    lines = held.logs.lines("request")
    assert len(lines) == 100
    assert {(line["credential"], line["app"], line["tid"]) for line in lines} == {
        ("proxy", APP, TENANT)
    }


async def test_a_callers_own_authorization_is_forwarded_unchanged(
    hold: Hold, tmp_path: Path
) -> None:
    """A request that brings its own Authorization goes with it, not the minted token: the API
    sees the caller's token (refused here as unreadable), and the line has no ``credential``."""
    held = await hold({"client_secret_file": str(_secret_file(tmp_path))})
    answer = await held.client.get("/api/machines", headers={"Authorization": "Bearer abc.def"})
    assert answer.status == 401
    minted = await held.client.get("/api/machines")
    assert minted.status == 200
    received = await held.journal()
    assert received[0]["token"] == ""
    assert received[1]["token"]
    first, second = held.logs.lines("request")
    assert "credential" not in first
    assert second["credential"] == "proxy"


async def test_an_expired_secret_is_a_clear_503_and_no_call_reaches_the_api(
    hold: Hold, tmp_path: Path
) -> None:
    """AADSTS7000222: every tokenless request gets a 503 in the Defender envelope naming the
    code, with Retry-After, its line has token_error; nothing reaches the API; requests during the
    back-off ask the provider nothing more; the failure is counted by code."""
    app = App(TENANT, APP, ROLES, (Secret(SECRET, expired=True),))
    held = await hold({"client_secret_file": str(_secret_file(tmp_path))}, (app,), start=False)
    answers = await asyncio.gather(*(held.client.get("/api/machines") for _ in range(5)))
    again = await held.client.get("/api/machines")
    for answer in [*answers, again]:
        assert answer.status == 503
        assert int(answer.headers["Retry-After"]) >= 1
        error = (await answer.json())["error"]
        assert error["code"] == "ServiceUnavailable"
        assert "AADSTS7000222" in error["message"]
        assert "expired" in error["message"]
        assert error["target"]
    assert len(await held.token_requests()) == 1
    assert await held.journal() == []
    assert held.sample("defender_proxy_token_requests_total", result="failed", code="7000222") == 1
    lines = held.logs.lines("request")
    assert {(line["status"], line["token_error"]) for line in lines} == {(503, "AADSTS7000222")}
    failed = held.logs.lines("token request failed")
    assert failed[0]["token_error"] == "AADSTS7000222"
    assert failed[0]["error"] == "invalid_client"


async def test_a_rotated_secret_file_is_minted_with_at_once_without_a_restart(
    hold: Hold, tmp_path: Path
) -> None:
    """Replacing the secret file (kubelet's ..data swap) mints with the new secret at once; the
    calls after it carry the new token, the calls before it the old one, none fails."""
    secrets = SecretDir(tmp_path / "mount")
    secrets.publish({"client-secret": SECRET.encode()})
    held = await hold({"client_secret_file": str(secrets.root / "client-secret")})
    await _until(lambda: _issued(held, 1))
    before = await held.client.get("/api/machines")
    secrets.publish({"client-secret": NEW_SECRET.encode()})
    await _until(lambda: _issued(held, 2))
    after = await held.client.get("/api/machines")
    assert (before.status, after.status) == (200, 200)
    assert [r["proof"] for r in await held.token_requests()] == ["secret[0]", "secret[1]"]
    old, new = (entry["token"] for entry in await held.journal())
    assert old
    assert new
    assert old != new
    assert held.logs.lines("credential file changed")


async def test_a_bad_rotation_keeps_the_token_in_hand_serving(hold: Hold, tmp_path: Path) -> None:
    """A secret file replaced by a wrong secret is a counted AADSTS7000215 failure, while the
    token minted before keeps every call working (the alert fires before any 401)."""
    path = _secret_file(tmp_path)
    held = await hold({"client_secret_file": str(path)})
    await _until(lambda: _issued(held, 1))
    replacement = tmp_path / "next"
    replacement.write_text("not-the-secret", encoding="utf-8")
    os.replace(replacement, path)
    await _until(lambda: _requested(held, 2))
    answer = await held.client.get("/api/machines")
    assert answer.status == 200
    assert held.sample("defender_proxy_token_requests_total", result="failed", code="7000215") == 1
    failed = held.logs.lines("token request failed")
    assert failed[0]["token_still_usable"] is True


async def test_a_certificate_credential_mints_and_reports_its_expiry(
    hold: Hold, tmp_path: Path, files: Files
) -> None:
    """certificate_file: a client assertion signed with the app's key gets the token; the
    certificate's notAfter is defender_proxy_credential_expiry_seconds{kind="certificate"}."""
    from cryptography import x509

    app = App(TENANT, APP, ROLES, (), (certificate(files.app_cert.read_bytes()),))
    held = await hold({"certificate_file": str(files.app_key_and_cert)}, (app,))
    answer = await held.client.get("/api/machines")
    assert answer.status == 200
    assert [r["proof"] for r in await held.token_requests()] == ["certificate[0]"]
    not_after = x509.load_pem_x509_certificate(files.app_cert.read_bytes()).not_valid_after_utc
    gauge = held.sample(
        "defender_proxy_credential_expiry_seconds", upstream="default", kind="certificate"
    )
    assert gauge == not_after.timestamp()


async def test_an_unregistered_certificate_is_a_503_naming_700027(hold: Hold, files: Files) -> None:
    """A certificate the app does not have registered: AADSTS700027 in the 503 and the metric."""
    app = App(TENANT, APP, ROLES, (), (certificate(files.app_cert.read_bytes()),))
    held = await hold({"certificate_file": str(files.stranger_key_and_cert)}, (app,), start=False)
    answer = await held.client.get("/api/machines")
    assert answer.status == 503
    assert "AADSTS700027" in (await answer.json())["error"]["message"]
    assert held.sample("defender_proxy_token_requests_total", result="failed", code="700027") == 1


async def test_a_federated_token_file_is_read_at_every_mint(hold: Hold, tmp_path: Path) -> None:
    """federated_token_file (workload identity): the projected token is the client assertion,
    read anew at each mint, so kubelet's hourly refresh of it needs nothing from the proxy."""
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    federated = Federated(ISSUER, SUBJECT, EXCHANGE_AUDIENCE, issuer_key.public_key())
    app = App(TENANT, APP, ROLES, federated=(federated,))
    path = tmp_path / "azure-identity-token"

    def project(subject: str) -> None:
        exp = int(time.time()) + 3600
        claims = {"iss": ISSUER, "sub": subject, "aud": EXCHANGE_AUDIENCE, "exp": exp}
        path.write_text(jwt.encode(claims, issuer_key, algorithm="RS256"), encoding="ascii")

    project(SUBJECT)
    held = await hold({"federated_token_file": str(path)}, (app,), lifetime=8)
    assert (await held.client.get("/api/machines")).status == 200
    project("system:serviceaccount:other:sa")  # the next mint reads this one
    await _until(lambda: _requested(held, 2), seconds=15)
    outcomes = [(r["credential"], r["outcome"]) for r in await held.token_requests()]
    assert outcomes[:2] == [("assertion", "issued"), ("assertion", "700213")]


async def test_the_token_is_refreshed_ahead_of_expiry_in_the_background(
    hold: Hold, tmp_path: Path
) -> None:
    """With 8-second tokens, a new one is minted before the old one is due, without a request
    asking for it; calls on either side of it carry a token the API accepts."""
    held = await hold({"client_secret_file": str(_secret_file(tmp_path))}, lifetime=8)
    await _until(lambda: _issued(held, 1))
    first = await held.client.get("/api/machines")
    await _until(lambda: _issued(held, 2), seconds=15)
    second = await held.client.get("/api/machines")
    assert (first.status, second.status) == (200, 200)
    tokens = [entry["token"] for entry in await held.journal()]
    assert len(set(tokens)) == 2


async def test_a_provider_that_does_not_answer_is_a_503_not_a_hang(
    hold: Hold, tmp_path: Path
) -> None:
    """A token request the provider holds past min(30 s, timeouts.read) ends the waiting
    requests with a 503 whose log line says ``unreachable``."""
    held = await hold({"client_secret_file": str(_secret_file(tmp_path))}, start=False)
    await held.idp.control("POST", "/_sim/identity/delay", {"count": 1, "seconds": 5})
    async with asyncio.timeout(4.5):
        answer = await held.client.get("/api/machines")
    assert answer.status == 503
    assert "unreachable" in (await answer.json())["error"]["message"]
    assert (
        held.sample("defender_proxy_token_requests_total", result="failed", code="unreachable") == 1
    )
    assert held.logs.lines("request")[0]["token_error"] == "unreachable"


async def test_a_throttled_provider_is_not_asked_again_before_its_retry_after(
    hold: Hold, tmp_path: Path
) -> None:
    """A 429 with Retry-After from the provider: the requests after it get 503 at once with a
    Retry-After at least the provider's, and no second token request is made meanwhile."""
    held = await hold({"client_secret_file": str(_secret_file(tmp_path))}, start=False)
    await held.idp.control("POST", "/_sim/identity/fail", {"status": 429, "retry_after": 20})
    first = await held.client.get("/api/machines")
    second = await held.client.get("/api/machines")
    assert (first.status, second.status) == (503, 503)
    assert int(second.headers["Retry-After"]) >= 15
    assert len(await held.token_requests()) == 1


async def test_a_refused_caller_never_makes_the_proxy_mint(hold: Hold, tmp_path: Path) -> None:
    """A caller outside allow_from is refused before any token is minted for it."""
    held = await hold(
        {"client_secret_file": str(_secret_file(tmp_path))},
        start=False,
        allow_from=["10.9.9.0/24"],
    )
    answer = await held.client.get("/api/machines")
    assert answer.status == 403
    assert await held.token_requests() == []


async def test_no_secret_or_token_reaches_a_log_line_a_metric_or_an_answer(
    hold: Hold, tmp_path: Path
) -> None:
    """The secret, the minted token and each of its segments are absent from every log line, the
    exposition and the answers, for a success and for a refused secret."""
    held = await hold({"client_secret_file": str(_secret_file(tmp_path))}, lifetime=8)
    ok = await held.client.get("/api/machines")
    token = (await held.source.token()).authorization.removeprefix("Bearer ")
    await held.idp.control("POST", "/_sim/identity/fail", {"count": 50, "code": 7000215})
    await _until(lambda: _requested(held, 2), seconds=15)  # the refresh, refused
    refused = await held.client.get("/api/machines", headers={"X-Note": "after"})
    written = held.logs.text + held.metrics.exposition().decode()
    written += (
        await ok.text() + await refused.text() + repr(held.source) + repr(held.proxy.settings)
    )
    assert held.logs.lines("token request failed")
    for secret in (SECRET, token, *token.split(".")):
        assert secret not in written


async def _issued(held: Held, count: int) -> bool:
    requests = await held.token_requests()
    return sum(1 for r in requests if r["outcome"] == "issued") >= count


async def _requested(held: Held, count: int) -> bool:
    return len(await held.token_requests()) >= count


async def test_the_alerts_series_exist_at_zero_before_any_token_request(
    hold: Hold, tmp_path: Path
) -> None:
    """ok and the common failure codes are exported at 0 from the start, so the first failure of
    one of them moves increase() (a series born at its first failure would hide it)."""
    held = await hold({"client_secret_file": str(_secret_file(tmp_path))}, start=False)
    registry = held.metrics.registry
    name = "defender_proxy_token_requests_total"
    assert registry.get_sample_value(name, {"result": "ok", "code": ""}) == 0
    for code in ("7000222", "7000215", "700027", "unreachable", "credential_file"):
        assert registry.get_sample_value(name, {"result": "failed", "code": code}) == 0
    assert await held.token_requests() == []


async def test_an_unreadable_secret_file_is_named_in_the_log_not_to_the_caller(
    hold: Hold, tmp_path: Path
) -> None:
    """A secret file gone before the first mint: the caller's 503 says the proxy cannot read
    its credential file, without the file's path; the proxy's own line names the path."""
    path = _secret_file(tmp_path)
    held = await hold({"client_secret_file": str(path)}, start=False)
    path.unlink()
    answer = await held.client.get("/api/machines")
    assert answer.status == 503
    message = (await answer.json())["error"]["message"]
    assert "cannot read its credential file" in message
    assert str(tmp_path) not in message
    assert "client-secret" in held.logs.lines("token request failed")[0]["reason"]
    assert await held.token_requests() == []


async def test_a_refresh_in_of_zero_does_not_make_the_proxy_mint_again_and_again(
    hold: Hold, tmp_path: Path
) -> None:
    """An authority that says to refresh at once (refresh_in 0) is not taken at its word: the
    next mint waits for the token's own schedule, not a second."""
    held = await hold({"client_secret_file": str(_secret_file(tmp_path))}, start=False)
    body = {"token_type": "Bearer", "access_token": "e30.e30.sig", "expires_in": 3599}
    await held.idp.control(
        "POST", "/_sim/identity/answer", {"count": 5, "body": {**body, "refresh_in": 0}}
    )
    await held.source.start()
    await _until(lambda: _requested(held, 1))
    await asyncio.sleep(2.5)  # a mint a second would have made two more by now
    assert len(await held.token_requests()) == 1
    await held.source.close()
