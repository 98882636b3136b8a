"""A stand-in Microsoft Entra ID: the token service the demo and the tests get app tokens from.

It serves what MSAL and azure-identity call for an app's token, on its own HTTPS listener
(``defender-proxy simulate --idp-port``: both libraries insist on an https authority):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the tenant's OIDC discovery document,
  every endpoint on the listener's own origin;
- ``GET /{tenant}/discovery/v2.0/keys``: the JWKS holding the key its tokens are signed with;
- ``POST /{tenant}/oauth2/v2.0/token``: the client-credentials grant, the app proving itself with
  ``client_secret`` or with a ``client_assertion`` (a JWT signed by one of its registered
  certificates, ``iss`` = ``sub`` = the client id, ``aud`` = this token endpoint; or a federated
  token matching one of its federated credentials: workload identity).

A token is a v1 app token as Entra issues for these APIs: ``aud`` the resource of the requested
``…/.default`` scope (the Defender API or Graph), ``tid``, ``appid``, ``roles`` as the directory
grants them, ``exp`` (``token_lifetime``), signed RS256 — the simulator's API reads it with
``--check-tokens``. Refusals are Entra's (``aadsts``). Control endpoints on the same listener:
``GET /_sim/identity`` (token requests counted, by outcome and by app, and the last ones in
order; discovery and key requests; any other request, answered 404), ``POST /_sim/identity/fail`` (``{"count": N, "code": 7000215}``: the next N token
requests get that AADSTS refusal; ``{"count": N, "status": 429, "retry_after": S}``: throttled;
``"status": 503``: unavailable), ``POST /_sim/identity/answer`` (``{"count": N, "status": S,
"body": …}``: the next N token requests get that answer verbatim, unchecked:
``proxy.simulator.idp_answers``), ``POST /_sim/identity/delay`` (``{"count": N, "seconds": S}``:
the next N token requests are answered S seconds late) and ``POST /_sim/identity/reset``. Each
remembered request names the proof it was checked with: ``secret[i]`` (the app's i-th secret
in the file), ``certificate[i]`` or ``federated[i]``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ssl
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from jwt.exceptions import InvalidSubjectError

from proxy.simulator.aadsts import CODES, THROTTLED, UNAVAILABLE, refuse
from proxy.simulator.directory import App, Directory, VerifyingKey
from proxy.simulator.idp_answers import Answer, parse_answer

JWT_BEARER: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The resources a ``/.default`` scope may name, by their application ID URI.
RESOURCES: Final = frozenset(
    {
        "https://api.securitycenter.microsoft.com",
        "https://api.security.microsoft.com",
        "https://graph.microsoft.com",
    }
)
#: Token requests remembered for ``GET /_sim/identity``; the oldest go first.
MAX_REMEMBERED: Final = 1000
_ASSERTION_ALGORITHMS: Final = ["RS256", "PS256", "ES256"]
_REQUIRED_CLAIMS: Final = ["exp", "iss", "sub", "aud"]


@dataclass(frozen=True, slots=True)
class IdpSite:
    """Where the identity provider listens (HTTPS on the simulator's host) and whom it knows."""

    port: int
    cert_file: str
    key_file: str
    directory: Directory


@dataclass(frozen=True, slots=True)
class Failure:
    """A refusal planned for the next ``count`` token requests."""

    count: int
    code: int
    status: int | None = None
    retry_after: int | None = None

    def as_json(self) -> dict[str, object]:
        """The failure as ``/_sim/identity`` lists it."""
        return {
            "count": self.count,
            "code": self.code,
            "status": self.status or CODES[self.code].status,
            "retry_after": self.retry_after,
        }


class _Refused(Exception):  # noqa: N818 - carries an answer, not a failure of ours
    """A token request refused with an AADSTS code (the request's answer, not an error of ours)."""

    def __init__(self, code: int, detail: str = "", proof: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail
        self.proof = proof


class Provider:
    """The identity provider's state: the directory, its signing key, planned failures, counts."""

    def __init__(self, directory: Directory, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.clock = clock
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self.kid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        self.jwks: dict[str, Any] = {"keys": [{**jwk, "kid": self.kid, "use": "sig"}]}
        self._plan: deque[Failure] = deque()
        self._answers: deque[Answer] = deque()
        self.reset()

    def reset(self) -> None:
        """Forget every count, every planned failure and every planned answer."""
        self._plan.clear()
        self._answers.clear()
        self.delays: deque[float] = deque()
        self.token_requests = 0
        self.discovery_requests = 0
        self.keys_requests = 0
        self.elsewhere: deque[str] = deque(maxlen=MAX_REMEMBERED)
        self.outcomes: Counter[str] = Counter()
        self.by_app: dict[str, Counter[str]] = {}
        self.recent: deque[dict[str, object]] = deque(maxlen=MAX_REMEMBERED)

    def plan(self, failure: Failure) -> None:
        """Refuse the next ``failure.count`` token requests (after those planned already)."""
        self._plan.append(failure)

    def plan_answer(self, answer: Answer) -> None:
        """Answer the next ``answer.count`` token requests so (after those planned already)."""
        self._answers.append(answer)

    def next_answer(self) -> Answer | None:
        """The planned answer the token request arriving now gets, if any."""
        return _take(self._answers)

    def next_failure(self) -> Failure | None:
        """The planned failure the token request arriving now gets, if any."""
        return _take(self._plan)

    def record(
        self, tenant: str, client_id: str, credential: str, outcome: str, proof: str = ""
    ) -> None:
        """Count one token request and what it got (``issued`` or an AADSTS code), and the
        ``proof`` of the app it was checked with (``secret[0]`` …; "" when none matched)."""
        self.outcomes[outcome] += 1
        app = self.by_app.setdefault(f"{tenant}/{client_id}", Counter())
        app["requests"] += 1
        app["issued" if outcome == "issued" else "refused"] += 1
        self.recent.append(
            {
                "at": self.clock(),
                "tenant": tenant,
                "client_id": client_id,
                "credential": credential,
                "outcome": outcome,
                "proof": proof,
            }
        )

    def stats(self) -> dict[str, object]:
        """What ``GET /_sim/identity`` answers."""
        return {
            "token_requests": self.token_requests,
            "issued": self.outcomes["issued"],
            "refused": {code: n for code, n in self.outcomes.items() if code != "issued"},
            "discovery_requests": self.discovery_requests,
            "keys_requests": self.keys_requests,
            "other_requests": list(self.elsewhere),
            "apps": {name: dict(counts) for name, counts in self.by_app.items()},
            "planned": [failure.as_json() for failure in self._plan],
            "answers": [answer.as_json() for answer in self._answers],
            "requests": list(self.recent),
        }

    def mint(self, app: App, resource: str, credential: str) -> dict[str, object]:
        """The token answer for ``app`` on ``resource``: a signed v1 app token and its lifetime."""
        now = int(self.clock())
        lifetime = self.directory.token_lifetime
        tenant = app.tenant.lower()
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{tenant}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": app.client_id,
            # 1: the app proved itself with a secret; 2: with a certificate or another assertion.
            "appidacr": "1" if credential == "secret" else "2",
            "idp": f"https://sts.windows.net/{tenant}/",
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{app.client_id}")),
            "tid": tenant,
            "uti": base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode(),
            "ver": "1.0",
        }
        claims["sub"] = claims["oid"]
        if app.roles:
            claims["roles"] = list(app.roles)
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }


_Planned = TypeVar("_Planned", Answer, Failure)


def _take(plans: deque[_Planned]) -> _Planned | None:
    """The first of ``plans`` for one token request: the plan's count less one, gone at 0."""
    if not plans:
        return None
    plan = plans[0]
    if plan.count <= 1:
        plans.popleft()
    else:
        plans[0] = replace(plan, count=plan.count - 1)
    return plan


PROVIDER: Final = web.AppKey("provider", Provider)


def make_idp_app(provider: Provider) -> web.Application:
    """The identity provider as an aiohttp application, serving ``provider``."""
    app = web.Application()
    app[PROVIDER] = provider
    app.router.add_get("/_sim/identity", _stats)
    app.router.add_post("/_sim/identity/fail", _fail)
    app.router.add_post("/_sim/identity/reset", _reset)
    app.router.add_post("/_sim/identity/delay", _delay)
    app.router.add_post("/_sim/identity/answer", _answer)
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", _discovery)
    app.router.add_get("/{tenant}/discovery/v2.0/keys", _keys)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", _token)
    app.router.add_route("*", "/{tail:.*}", _elsewhere)
    return app


def tls_context(site: IdpSite) -> ssl.SSLContext:
    """The server TLS context of the identity provider's listener."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(site.cert_file, site.key_file)
    return context


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def _discovery(request: web.Request) -> web.Response:
    provider = request.app[PROVIDER]
    provider.discovery_requests += 1
    tenant = request.match_info["tenant"]
    if tenant.lower() not in provider.directory.tenants:
        return refuse(90002, request, tenant=tenant)
    base = f"{_origin(request)}/{tenant}"
    return web.json_response(
        {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{_origin(request)}/{tenant.lower()}/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "tenant_region_scope": None,
            "cloud_instance_name": request.host,
        }
    )


async def _keys(request: web.Request) -> web.Response:
    provider = request.app[PROVIDER]
    provider.keys_requests += 1
    if request.match_info["tenant"].lower() not in provider.directory.tenants:
        return refuse(90002, request, tenant=request.match_info["tenant"])
    return web.json_response(provider.jwks)


async def _token(request: web.Request) -> web.Response:
    provider = request.app[PROVIDER]
    provider.token_requests += 1
    form = await request.post()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    tenant = request.match_info["tenant"]
    client_id = fields.get("client_id", "")
    credential = _credential_kind(fields)
    answer = provider.next_answer()
    failure = None if answer is not None else provider.next_failure()
    if provider.delays:
        await asyncio.sleep(provider.delays.popleft())
    if answer is not None:
        provider.record(tenant, client_id, credential, "answered")
        return answer.response()
    try:
        if failure is not None:
            provider.record(tenant, client_id, credential, str(failure.code))
            return refuse(
                failure.code,
                request,
                client_id=client_id,
                tenant=tenant,
                status=failure.status,
                retry_after=failure.retry_after,
            )
        app, resource, proof = _check(request, provider, tenant, fields)
    except _Refused as refused:
        provider.record(tenant, client_id, credential, str(refused.code), refused.proof)
        return refuse(
            refused.code, request, client_id=client_id, tenant=tenant, detail=refused.detail
        )
    provider.record(tenant, client_id, credential, "issued", proof)
    return web.json_response(provider.mint(app, resource, credential))


def _credential_kind(fields: dict[str, str]) -> str:
    if "client_secret" in fields:
        return "secret"
    if "client_assertion" in fields:
        return "assertion"
    return "none"


def _check(
    request: web.Request, provider: Provider, tenant: str, fields: dict[str, str]
) -> tuple[App, str, str]:
    """The app the request proves itself to be, the resource it asks for and the proof of the
    app it was checked with; raises _Refused."""
    if tenant.lower() not in provider.directory.tenants:
        raise _Refused(90002)
    for name in ("grant_type", "client_id", "scope"):
        if not fields.get(name):
            raise _Refused(900144, name)
    if fields["grant_type"] != "client_credentials":
        raise _Refused(70003, fields["grant_type"])
    app = provider.directory.app(tenant, fields["client_id"])
    if app is None:
        raise _Refused(700016)
    scope = fields["scope"]
    if len(scope.split()) != 1 or not scope.endswith("/.default"):
        raise _Refused(1002012, scope)
    resource = scope.removesuffix("/.default").rstrip("/")
    if resource.lower() not in RESOURCES:
        raise _Refused(500011, resource)
    if "client_secret" in fields:
        proof = _check_secret(app, fields["client_secret"])
    elif fields.get("client_assertion_type") == JWT_BEARER and fields.get("client_assertion"):
        endpoint = f"{_origin(request)}/{tenant}/oauth2/v2.0/token"
        proof = _check_assertion(app, fields["client_assertion"], endpoint, provider.clock())
    else:
        raise _Refused(7000218)
    return app, resource.lower(), proof


def _check_secret(app: App, presented: str) -> str:
    for index, secret in enumerate(app.secrets):
        if hmac.compare_digest(secret.value.encode(), presented.encode()):
            if secret.expired:
                raise _Refused(7000222, proof=f"secret[{index}]")
            return f"secret[{index}]"
    raise _Refused(7000215)


def _check_assertion(app: App, assertion: str, endpoint: str, now: float) -> str:
    try:
        header = jwt.get_unverified_header(assertion)
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        raise _Refused(50027) from None
    if issuer != app.client_id:
        _check_federated(app, assertion, str(issuer), now)
        return "federated"
    index, key = _registered_key(app, header)
    try:
        jwt.decode(
            assertion,
            key,
            algorithms=_ASSERTION_ALGORITHMS,
            audience=endpoint,
            issuer=app.client_id,
            subject=app.client_id,
            options={"require": _REQUIRED_CLAIMS},
            leeway=0,
        )
    except jwt.InvalidSignatureError:
        raise _Refused(700027, "The signature of the client assertion is not valid.") from None
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        raise _Refused(700024) from None
    except jwt.InvalidAudienceError:
        raise _Refused(50012) from None
    except (jwt.InvalidIssuerError, InvalidSubjectError):
        raise _Refused(700021) from None
    except jwt.PyJWTError:
        raise _Refused(50027) from None
    return f"certificate[{index}]"


def _registered_key(app: App, header: dict[str, Any]) -> tuple[int, VerifyingKey]:
    """The key of the registered certificate the assertion's header names by thumbprint."""
    named = {
        "sha256": _thumbprint(header.get("x5t#S256")),
        "sha1": _thumbprint(header.get("x5t")),
    }
    for index, cert in enumerate(app.certificates):
        if cert.sha256 == named["sha256"] or cert.sha1 == named["sha1"]:
            return index, cert.key
    shown = next((value.hex().upper() for value in named.values() if value), "none")
    raise _Refused(700027, f"The key was not found., Thumbprint of key used by client: '{shown}'")


def _thumbprint(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return None


def _check_federated(app: App, assertion: str, issuer: str, now: float) -> None:
    """Workload identity: the assertion is another issuer's token about a federated subject."""
    candidates = [cred for cred in app.federated if cred.issuer == issuer]
    if not candidates:
        raise _Refused(700211, issuer)
    claims = jwt.decode(assertion, options={"verify_signature": False})
    subject = str(claims.get("sub"))
    candidates = [cred for cred in candidates if cred.subject == subject]
    if not candidates:
        raise _Refused(700213, subject)
    audiences = claims.get("aud")
    presented = set(audiences) if isinstance(audiences, list) else {str(audiences)}
    matching = [cred for cred in candidates if cred.audience in presented]
    if not matching:
        raise _Refused(700212, " ".join(sorted(presented)))
    cred = matching[0]
    try:
        jwt.decode(
            assertion,
            cred.key,
            algorithms=_ASSERTION_ALGORITHMS,
            audience=cred.audience,
            issuer=issuer,
            options={"require": ["exp", "iss", "sub", "aud"]},
            leeway=0,
        )
    except jwt.InvalidSignatureError:
        raise _Refused(700027, "The signature of the federated token is not valid.") from None
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        raise _Refused(700024) from None
    except jwt.PyJWTError:
        raise _Refused(50027) from None


async def _elsewhere(request: web.Request) -> web.Response:
    # Kept so a test can tell a client asked for something the provider does not serve (MSAL's
    # instance discovery, say) instead of only seeing its failure.
    request.app[PROVIDER].elsewhere.append(f"{request.method} {request.path}")
    return web.json_response({"error": "not_found"}, status=404)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[PROVIDER].stats())


async def _reset(request: web.Request) -> web.Response:
    request.app[PROVIDER].reset()
    return web.json_response({"reset": True})


async def _delay(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        if not isinstance(body, dict) or set(body) - {"count", "seconds"}:
            raise ValueError('the body must be {"count": N, "seconds": S}')
        count, seconds = body.get("count", 1), body.get("seconds")
        if type(count) is not int or not 1 <= count <= 10_000:
            raise ValueError("count must be a whole number of token requests, 1 to 10000")
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not 0 < seconds <= 600
        ):
            raise ValueError("seconds must be a number above 0, at most 600")
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    request.app[PROVIDER].delays.extend([float(seconds)] * count)
    return web.json_response({"delayed": count, "seconds": seconds})


async def _answer(request: web.Request) -> web.Response:
    try:
        answer = parse_answer(await request.json())
    except ValueError as exc:  # orjson's and json's decode errors are ValueErrors too
        return web.json_response({"error": str(exc)}, status=400)
    request.app[PROVIDER].plan_answer(answer)
    return web.json_response({"planned": answer.as_json()})


async def _fail(request: web.Request) -> web.Response:
    try:
        failure = _failure(await request.json())
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    request.app[PROVIDER].plan(failure)
    return web.json_response({"planned": failure.as_json()})


def _failure(body: object) -> Failure:
    """The failure a ``POST /_sim/identity/fail`` body plans; ValueError says what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(body) - {"count", "code", "status", "retry_after"}
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    count = body.get("count", 1)
    if type(count) is not int or count < 1:
        raise ValueError("count must be a whole number of token requests, at least 1")
    status, retry_after = body.get("status"), body.get("retry_after")
    if status not in (None, 429, 503):
        raise ValueError("status must be 429 (throttled) or 503 (unavailable)")
    if retry_after is not None and (type(retry_after) is not int or retry_after < 0):
        raise ValueError("retry_after must be a whole number of seconds")
    if status == 429:
        # Entra throttles client credentials with 429 and Retry-After: 60.
        return Failure(count, THROTTLED, 429, 60 if retry_after is None else retry_after)
    if status == 503:
        return Failure(count, UNAVAILABLE, 503, retry_after)
    code = body.get("code")
    if code not in CODES:
        known = ", ".join(str(known) for known in sorted(CODES))
        raise ValueError(f"code must be one of the AADSTS codes {known}, or give a status")
    return Failure(count, code, None, retry_after)
