"""Why a 401 or 403 happened, from the token: each cause, their order, audiences and roles."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from proxy.auth_cause import (
    CAUSES,
    EXPIRED,
    MALFORMED,
    MISSING_ROLE,
    NO_TOKEN,
    NOT_BEARER,
    NOT_YET_VALID,
    TOKEN_OK,
    WRONG_AUDIENCE,
    AuthCause,
    audiences_for,
    explain,
)
from proxy.identity import read_claims
from proxy.simulator.tokens import bearer

TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "4a5f4f6e-8b9c-4d0e-9f1a-2b3c4d5e6f70"
NOW = 1_800_000_000
DEFENDER = "https://api.security.microsoft.com"
GRAPH = "https://graph.microsoft.com"
ISOLATE = ("POST", "/api/machines/1e5bc9d7e413ddd7902c2932e418702b84d0cc07/isolate")


def _why(authorization: str | None, method: str, path: str, origin: str = DEFENDER) -> AuthCause:
    return explain(
        authorization, read_claims(authorization), method, path, audiences_for(origin), NOW
    )


def _token(**claims: Any) -> str:
    base: dict[str, Any] = {
        "aud": "https://api.securitycenter.microsoft.com",
        "exp": NOW + 3000,
        "nbf": NOW - 600,
        "roles": ["Machine.Isolate"],
    }
    base.update(claims)
    return bearer(TID, APP, **{k: v for k, v in base.items() if v is not None})


def test_no_header_and_an_empty_bearer_are_no_token() -> None:
    """No Authorization, a blank one and a Bearer with nothing after it are no_token."""
    for header in (None, "", "   ", "Bearer", "Bearer   "):
        assert _why(header, *ISOLATE).cause == NO_TOKEN


def test_another_scheme_is_not_bearer() -> None:
    """Basic, Negotiate, a bare JWT without its scheme: not_bearer."""
    bare = _token().removeprefix("Bearer ")
    for header in ("Basic dXNlcjpwYXNz", "Negotiate YII=", bare, "SharedKey a:b"):
        assert _why(header, *ISOLATE).cause == NOT_BEARER


def test_a_bearer_that_is_no_jwt_is_malformed() -> None:
    """An opaque string, two segments, a payload that is not JSON: malformed."""
    junk = base64.urlsafe_b64encode(b"not json").decode().rstrip("=")
    for header in ("Bearer abc", "Bearer a.b", f"Bearer e30.{junk}.", "Bearer a.W10.", "<<>> x"):
        assert _why(header, *ISOLATE).cause == MALFORMED


def test_an_expired_token_says_how_long_ago() -> None:
    """exp in the past: expired, with the seconds since in expired_ago_s."""
    why = _why(_token(exp=NOW - 125), *ISOLATE)
    assert why.cause == EXPIRED
    assert why.fields() == {"auth_cause": EXPIRED, "expired_ago_s": 125}


def test_a_token_not_valid_yet() -> None:
    """nbf in the future: not_yet_valid, with the seconds until valid."""
    why = _why(_token(nbf=NOW + 30), *ISOLATE)
    assert why.fields() == {"auth_cause": NOT_YET_VALID, "valid_in_s": 31}


def test_a_graph_token_sent_to_defender_is_wrong_audience() -> None:
    """aud of Graph on a Defender upstream: wrong_audience, and the audience is shown."""
    why = _why(_token(aud=GRAPH), *ISOLATE)
    assert why.fields() == {"auth_cause": WRONG_AUDIENCE, "token_aud": GRAPH}


def test_both_audience_forms_are_accepted() -> None:
    """The URI form (with or without a slash, any case) and the app-id form are the resource."""
    for aud in (
        "https://api.securitycenter.microsoft.com/",
        "HTTPS://API.SECURITY.MICROSOFT.COM",
        "fc780465-2017-40d4-a0c5-307022471b92",
        "https://api-gcc.securitycenter.microsoft.us",
    ):
        assert _why(_token(aud=aud), *ISOLATE).cause == TOKEN_OK, aud
    for aud in (GRAPH, "00000003-0000-0000-c000-000000000000"):
        token = _token(aud=aud, roles=["SecurityAlert.Read.All"])
        why = _why(token, "GET", "/v1.0/security/x", origin=GRAPH)
        assert why.cause == TOKEN_OK, aud


def test_an_audience_of_odd_shape_is_not_shown() -> None:
    """An audience that is neither a plain URI nor a GUID is shown as other, never as sent."""
    odd = "https://x.example/" + "a" * 300
    why = _why(_token(aud="secret=hunter2 https://x"), *ISOLATE)
    assert why.fields()["token_aud"] == "other"
    assert _why(_token(aud=odd), *ISOLATE).fields()["token_aud"] == "other"
    assert _why(_token(aud=None), *ISOLATE).fields()["token_aud"] == "other"


def test_the_path_decides_the_api_when_the_host_does_not() -> None:
    """On a host of neither API, /api wants a Defender audience and /v1.0 a Graph one."""
    local = "http://127.0.0.1:9000"
    assert _why(_token(aud=GRAPH), *ISOLATE, origin=local).cause == WRONG_AUDIENCE
    graph_path = ("GET", "/beta/security/incidents")
    assert _why(_token(), *graph_path, origin=local).cause == WRONG_AUDIENCE
    assert _why(_token(aud="https://anything"), "GET", "/other", origin=local).cause == TOKEN_OK


def test_a_missing_permission_is_named() -> None:
    """Without the endpoint's permission in roles or scp: missing_role, naming it."""
    why = _why(_token(roles=["Alert.Read.All"]), *ISOLATE)
    assert why.fields() == {"auth_cause": MISSING_ROLE, "missing_role": "Machine.Isolate"}


def test_a_delegated_permission_counts() -> None:
    """A delegated permission in scp (any case) satisfies the endpoint like a role."""
    why = _why(_token(roles=None, scp="openid machine.isolate"), *ISOLATE)
    assert why.cause == TOKEN_OK


def test_an_endpoint_the_reference_does_not_know_is_never_missing_a_role() -> None:
    """No documented permission: a token with no roles at all looks right (token_ok)."""
    assert _why(_token(roles=[]), "GET", "/api/somethingnew").cause == TOKEN_OK


def test_the_first_cause_in_order_wins() -> None:
    """Expired beats wrong audience beats a missing role."""
    token = _token(exp=NOW - 1, aud=GRAPH, roles=[])
    assert _why(token, *ISOLATE).cause == EXPIRED
    assert _why(_token(aud=GRAPH, roles=[]), *ISOLATE).cause == WRONG_AUDIENCE


@given(st.one_of(st.none(), st.text(max_size=300)), st.text(max_size=80))
def test_any_header_gets_one_of_the_causes_and_never_echoes_it(
    header: str | None, path: str
) -> None:
    """Whatever a caller sends, the cause is one of the fixed set, and no field repeats it."""
    why = _why(header, "POST", "/" + path)
    assert why.cause in CAUSES
    if header and len(header) > 12:
        assert header not in orjson.dumps(why.fields()).decode()


def test_the_token_never_reaches_the_fields() -> None:
    """No segment of the token appears in the fields of any cause."""
    for token in (_token(exp=NOW - 5), _token(aud=GRAPH), _token(roles=[]), _token()):
        text = orjson.dumps(_why(token, *ISOLATE).fields()).decode()
        for segment in token.removeprefix("Bearer ").split("."):
            assert not segment or segment not in text
