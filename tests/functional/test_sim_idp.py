"""The simulator's stand-in Entra ID, driven by the real client libraries (azure-identity on MSAL)
over real TLS: tokens the simulator's API accepts, and Entra's refusals as the libraries see them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential
from azure.identity.aio import ClientAssertionCredential, ClientSecretCredential
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_aiohttp import AiohttpClient

from proxy.simulator import SimConfig, make_app
from proxy.simulator.directory import (
    EXCHANGE_AUDIENCE,
    App,
    Federated,
    Secret,
    certificate,
)
from tests.idpkit import (
    APP,
    DEFENDER,
    GRAPH,
    OLD_SECRET,
    ROLES,
    SECRET,
    TENANT,
    Idp,
    running_idp,
    tls_client,
    write_files,
)

ISSUER = "https://oidc.cluster.example/"
SUBJECT = "system:serviceaccount:security:defender-proxy"


@dataclass
class FederatedIdp:
    """The identity provider and the key of the cluster issuer its federated credential trusts."""

    idp: Idp
    issuer_key: rsa.RSAPrivateKey


@pytest.fixture
async def idp_with_issuer(tmp_path: Path) -> AsyncIterator[FederatedIdp]:
    """The identity provider on an HTTPS port of 127.0.0.1, knowing one app in one tenant."""
    files = write_files(tmp_path)
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app = App(
        TENANT,
        APP,
        ROLES,
        (Secret(SECRET), Secret(OLD_SECRET, expired=True)),
        (certificate(files.app_cert.read_bytes()),),
        (Federated(ISSUER, SUBJECT, EXCHANGE_AUDIENCE, issuer_key.public_key()),),
    )
    async with running_idp(files, (app,)) as running:
        yield FederatedIdp(running, issuer_key)


@pytest.fixture
def idp(idp_with_issuer: FederatedIdp) -> Idp:
    """The identity provider alone."""
    return idp_with_issuer.idp


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def _secret_token(idp: Idp, secret: str = SECRET, scope: str = DEFENDER) -> str:
    async with ClientSecretCredential(TENANT, APP, secret, **idp.credential_kwargs()) as cred:
        return (await cred.get_token(scope)).token


async def test_a_secret_gets_a_token_the_simulator_accepts(
    idp: Idp, aiohttp_client: AiohttpClient
) -> None:
    """ClientSecretCredential gets a signed Defender token with tid, appid and the app's roles
    from one token request; the simulator's --check-tokens serves /api/machines with it."""
    token = await _secret_token(idp)
    claims = _claims(token)
    assert claims["aud"] == "https://api.securitycenter.microsoft.com"
    assert (claims["tid"], claims["appid"], claims["ver"]) == (TENANT, APP, "1.0")
    assert claims["roles"] == list(ROLES)
    assert claims["exp"] - time.time() > 3000
    keys = await idp.control("GET", f"/{TENANT}/discovery/v2.0/keys")
    jwk = jwt.PyJWK(keys["keys"][0])
    assert jwt.decode(token, jwk, algorithms=["RS256"], audience=claims["aud"])["appid"] == APP
    api = await aiohttp_client(make_app(SimConfig(check_tokens=True)))
    async with api.get("/api/machines", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
    stats = await idp.control("GET", "/_sim/identity")
    assert (stats["token_requests"], stats["issued"], stats["refused"]) == (1, 1, {})
    assert stats["requests"][0]["credential"] == "secret"


async def test_a_graph_scope_gets_a_graph_token(idp: Idp, aiohttp_client: AiohttpClient) -> None:
    """The audience follows the scope: a Graph .default scope gives a Graph token, which the
    simulator's Defender endpoints refuse 401 for its audience."""
    token = await _secret_token(idp, scope=GRAPH)
    assert _claims(token)["aud"] == "https://graph.microsoft.com"
    api = await aiohttp_client(make_app(SimConfig(check_tokens=True)))
    async with api.get("/api/machines", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 401


@pytest.mark.parametrize(
    ("secret", "code"), [("not-the-secret", "AADSTS7000215"), (OLD_SECRET, "AADSTS7000222")]
)
async def test_a_wrong_or_expired_secret_is_refused_with_its_code(
    idp: Idp, secret: str, code: str
) -> None:
    """A wrong secret raises ClientAuthenticationError carrying AADSTS7000215; a registered but
    expired one AADSTS7000222."""
    with pytest.raises(ClientAuthenticationError) as caught:
        await _secret_token(idp, secret)
    assert code in str(caught.value)
    assert secret not in str(caught.value)
    stats = await idp.control("GET", "/_sim/identity")
    assert stats["refused"] == {code.removeprefix("AADSTS"): 1}


async def test_a_registered_certificate_gets_a_token_and_another_is_refused(idp: Idp) -> None:
    """CertificateCredential (sync, on MSAL) reads the tenant's discovery document and nothing
    else (no instance discovery), then signs a client assertion the provider verifies against
    the registered certificate; a certificate registered nowhere is refused with AADSTS700027."""

    def token(path: Path) -> str:
        cred = CertificateCredential(TENANT, APP, str(path), **idp.credential_kwargs())
        with cred:
            return cred.get_token(DEFENDER).token

    claims = _claims(await asyncio.to_thread(token, idp.files.app_key_and_cert))
    assert (claims["appid"], claims["appidacr"]) == (APP, "2")
    stats = await idp.control("GET", "/_sim/identity")
    assert stats["discovery_requests"] >= 1
    assert stats["other_requests"] == []
    with pytest.raises(ClientAuthenticationError) as caught:
        await asyncio.to_thread(token, idp.files.stranger_key_and_cert)
    assert "AADSTS700027" in str(caught.value)


async def test_a_federated_token_is_a_client_assertion(idp_with_issuer: FederatedIdp) -> None:
    """Workload identity: a token of the federated issuer about the federated subject gets an app
    token; one about another subject is refused with AADSTS700213."""
    idp = idp_with_issuer.idp

    def federated(subject: str) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": EXCHANGE_AUDIENCE, "exp": now + 600}
        return jwt.encode(claims, idp_with_issuer.issuer_key, algorithm="RS256")

    kwargs = idp.credential_kwargs()
    async with ClientAssertionCredential(TENANT, APP, lambda: federated(SUBJECT), **kwargs) as cred:
        assert _claims((await cred.get_token(DEFENDER)).token)["appid"] == APP
    async with ClientAssertionCredential(
        TENANT, APP, lambda: federated("system:serviceaccount:other:sa"), **kwargs
    ) as cred:
        with pytest.raises(ClientAuthenticationError) as caught:
            await cred.get_token(DEFENDER)
    assert "AADSTS700213" in str(caught.value)


async def test_a_planned_429_is_honoured_before_the_token(idp: Idp) -> None:
    """The next token request answered 429 with Retry-After: 1: the credential waits at least that
    long, asks again and gets its token; the provider counts both requests."""
    planned = await idp.control("POST", "/_sim/identity/fail", {"status": 429, "retry_after": 1})
    assert planned["planned"]["code"] == 90055
    await _secret_token(idp)
    stats = await idp.control("GET", "/_sim/identity")
    assert (stats["token_requests"], stats["issued"], stats["refused"]) == (2, 1, {"90055": 1})
    first, second = stats["requests"]
    assert second["at"] - first["at"] >= 1.0
    assert stats["planned"] == []


async def test_the_next_n_requests_fail_with_the_planned_code(idp: Idp) -> None:
    """``{"count": 2, "code": 700016}``: two token requests are refused with it, the third is not."""
    await idp.control("POST", "/_sim/identity/fail", {"count": 2, "code": 700016})
    for _ in range(2):
        with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
            await _secret_token(idp)
    await _secret_token(idp)
    stats = await idp.control("GET", "/_sim/identity")
    assert (stats["issued"], stats["refused"]) == (1, {"700016": 2})
    await idp.control("POST", "/_sim/identity/reset")
    assert (await idp.control("GET", "/_sim/identity"))["token_requests"] == 0


async def test_refusals_have_entras_shape(idp: Idp) -> None:
    """An unknown app: 400 unauthorized_client with AADSTS700016, error_codes, trace and
    correlation ids (the caller's client-request-id) and the three lines Entra appends."""
    form = {
        "grant_type": "client_credentials",
        "client_id": "00000000-0000-0000-0000-00000000dead",
        "client_secret": "x",
        "scope": DEFENDER,
    }
    connector = aiohttp.TCPConnector(ssl=tls_client(idp.files))
    headers = {"client-request-id": "5f0e6bd2-0000-4000-8000-000000000001"}
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"{idp.url}/{TENANT}/oauth2/v2.0/token", data=form, headers=headers
        ) as response,
    ):
        assert response.status == 400
        body = await response.json()
    assert body["error"] == "unauthorized_client"
    assert body["error_codes"] == [700016]
    assert body["correlation_id"] == headers["client-request-id"]
    description = body["error_description"]
    assert description.startswith("AADSTS700016: Application with identifier")
    assert f"\r\nTrace ID: {body['trace_id']}\r\n" in description
    assert f"Timestamp: {body['timestamp']}" in description


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"tenant": "11111111-2222-3333-4444-555555555555"}, 400, 90002),
        ({"grant_type": "password"}, 400, 70003),
        ({"scope": "https://api.securitycenter.microsoft.com/Machine.Read.All"}, 400, 1002012),
        ({"scope": "https://vault.azure.net/.default"}, 400, 500011),
        ({"client_secret": None}, 401, 7000218),
        ({"client_secret": None, "client_assertion": "not-a-jwt"}, 401, 50027),
    ],
)
async def test_malformed_requests_get_their_codes(
    idp: Idp, change: dict[str, str | None], status: int, code: int
) -> None:
    """Unknown tenant, other grants, a scope without /.default or of an unknown resource, no
    credential, a malformed assertion: each its AADSTS code and status."""
    form = {
        "grant_type": "client_credentials",
        "client_id": APP,
        "client_secret": SECRET,
        "scope": DEFENDER,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    tenant = str(change.pop("tenant", TENANT))
    sent = {key: value for key, value in {**form, **change}.items() if value is not None}
    connector = aiohttp.TCPConnector(ssl=tls_client(idp.files))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"{idp.url}/{tenant}/oauth2/v2.0/token", data=sent) as response,
    ):
        assert response.status == status
        assert (await response.json())["error_codes"] == [code]


@pytest.mark.parametrize(
    "body",
    [[], {"count": 0, "code": 7000215}, {"code": 1}, {"status": 418}, {"code": 7000215, "x": 1}],
)
async def test_a_bad_failure_plan_is_refused(idp: Idp, body: object) -> None:
    """POST /_sim/identity/fail answers 400 with the reason for a plan it cannot follow, and
    plans nothing."""
    await _refuses_the_plan(idp, "fail", body)
    assert idp.provider.stats()["planned"] == []


async def _raw_token_request(idp: Idp) -> tuple[int, str, bytes]:
    """One client-credentials request with the app's secret: status, Content-Type and body."""
    form = {"grant_type": "client_credentials", "client_id": APP, "client_secret": SECRET}
    connector = aiohttp.TCPConnector(ssl=tls_client(idp.files))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"{idp.url}/{TENANT}/oauth2/v2.0/token", data={**form, "scope": DEFENDER}
        ) as response,
    ):
        return response.status, response.headers["Content-Type"], await response.read()


async def test_planned_answers_come_verbatim_in_order_before_planned_refusals(idp: Idp) -> None:
    """Two planned answers (a JSON one twice, then a text one with a header) and a planned
    refusal: the token requests get them in that order, unchecked and byte for byte, then the
    refusal, then a token; each planned answer is remembered as ``answered``."""
    hostile = {"access_token": "a\r\nb", "expires_in": -1}
    await idp.control("POST", "/_sim/identity/fail", {"code": 7000215})
    await idp.control("POST", "/_sim/identity/answer", {"count": 2, "body": hostile})
    plan = {"status": 502, "text": "<html/>", "content_type": "text/html", "headers": {"X-A": "1"}}
    await idp.control("POST", "/_sim/identity/answer", plan)
    planned = await idp.control("GET", "/_sim/identity")
    assert [a["bytes"] for a in planned["answers"]] == [len(orjson.dumps(hostile)), 7]
    got = [await _raw_token_request(idp) for _ in range(5)]
    assert got[0] == got[1] == (200, "application/json; charset=utf-8", orjson.dumps(hostile))
    assert got[2] == (502, "text/html", b"<html/>")
    assert got[3][0] == 401
    assert (got[4][0], "access_token" in orjson.loads(got[4][2])) == (200, True)
    stats = await idp.control("GET", "/_sim/identity")
    outcomes = [request["outcome"] for request in stats["requests"]]
    assert outcomes == ["answered", "answered", "answered", "7000215", "issued"]
    assert stats["answers"] == []


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"status": 200},
        {"body": {}, "text": ""},
        {"count": 0, "body": {}},
        {"status": 99, "body": {}},
        {"text": 5},
        {"body": {}, "headers": {"X-A": "1\r\n2"}},
        {"body": {}, "x": 1},
    ],
)
async def test_a_bad_answer_plan_is_refused(idp: Idp, body: object) -> None:
    """POST /_sim/identity/answer answers 400 with the reason for a plan it cannot follow, and
    plans nothing."""
    await _refuses_the_plan(idp, "answer", body)
    assert idp.provider.stats()["answers"] == []


async def _refuses_the_plan(idp: Idp, plan: str, body: object) -> None:
    """POST /_sim/identity/``plan`` with ``body`` answers 400 with a reason."""
    connector = aiohttp.TCPConnector(ssl=tls_client(idp.files))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"{idp.url}/_sim/identity/{plan}", json=body) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]
