"""Reading identity from a bearer token: claims, validation, scopes, the identity bound, labels."""

from __future__ import annotations

import base64
from dataclasses import replace

import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import ConfigError, parse_settings
from proxy.identity import (
    ANONYMOUS,
    MAX_TOKEN,
    NO_CLAIMS,
    OTHER,
    OVERFLOW,
    Claims,
    Identities,
    Labels,
    read_claims,
)
from proxy.quota.store import quota_key
from proxy.simulator.tokens import bearer, mint

TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "fc780465-2017-40d4-a0c5-307022471b92"
OTHER_APP = "00000003-0000-0000-c000-000000000000"


def _raw(payload: bytes) -> str:
    """A bearer header whose payload segment is ``payload``, base64url-encoded as is."""
    segment = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"Bearer eyJhbGciOiJub25lIn0.{segment}."


def test_v1_token_gives_tid_appid_and_the_claims_later_steps_read() -> None:
    """A v1 token: tid, appid as the app, and aud, exp, nbf, roles, scp, ver kept."""
    token = mint(
        tid=TID.upper(),
        appid=APP,
        aud="https://api.securitycenter.microsoft.com",
        exp=1_700_003_600,
        nbf=1_700_000_000,
        roles=["Machine.Isolate", "Alert.Read.All"],
        scp="Machine.Read Alert.Read",
        ver="1.0",
    )
    assert read_claims(f"Bearer {token}") == Claims(
        tid=TID,
        app=APP,
        aud="https://api.securitycenter.microsoft.com",
        exp=1_700_003_600,
        nbf=1_700_000_000,
        roles=("Machine.Isolate", "Alert.Read.All"),
        scp=("Machine.Read", "Alert.Read"),
        ver="1.0",
        readable=True,
    )


def test_v2_token_gives_azp_as_the_app() -> None:
    """A v2 token names its client in azp; the scheme is case-insensitive."""
    claims = read_claims(bearer(TID, APP, version="2.0").replace("Bearer", "bearer"))
    assert (claims.tid, claims.app, claims.ver) == (TID, APP, "2.0")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not-a-jwt",
        "Bearer a.b",
        "Bearer a.%%%.c",
        "Bearer a.Zm9v.c",  # "foo": not JSON
        "Bearer a.A.c",  # one base64 character: not a whole byte
        _raw(b"[1, 2, 3]"),  # JSON, not an object
        _raw(b"\xff\xfe{}"),  # not UTF-8
        _raw(b"[" * 5000 + b"]" * 5000),  # nested far deeper than any decoder's stack
        "Bearer " + mint(tid=TID, appid=APP) + "x" * MAX_TOKEN,  # too long to read
    ],
)
def test_an_unreadable_token_has_no_claims(header: str | None) -> None:
    """Anything that is not a readable bearer JWT reads as no claims, without raising."""
    assert read_claims(header) == NO_CLAIMS


@pytest.mark.parametrize(
    "tid",
    [
        "contoso",
        "{72f988bf-86f1-41af-91ab-2d7cd011db47}",
        "72f988bf-86f1-41af-91ab-2d7cd011db47:x",
        "72f988bf-86f1-41af-91ab-2d7cd011db47\n",
        "72f988bf86f141af91ab2d7cd011db47",
        "}:{" * 20,
        42,
        ["72f988bf-86f1-41af-91ab-2d7cd011db47"],
        {"a": {"b": 1}},
        None,
    ],
)
def test_ids_that_are_not_guids_are_dropped(tid: object) -> None:
    """tid and appid outside the GUID form (braces, colons, newlines, other types) are not ids."""
    claims = read_claims(f"Bearer {mint(tid=tid, appid=tid, azp=tid, ver=[1], exp='soon')}")
    assert claims.readable
    assert replace(claims, readable=False) == NO_CLAIMS


def test_claim_lists_are_bounded() -> None:
    """roles and scp keep at most 100 printable entries of at most 256 characters."""
    roles = ["r" * 300, "bad\nrole", *(f"Role.{i}" for i in range(200))]
    claims = read_claims(f"Bearer {mint(roles=roles, scp=' '.join(roles[2:]))}")
    assert claims.roles == tuple(f"Role.{i}" for i in range(98))
    assert claims.scp == tuple(f"Role.{i}" for i in range(100))


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: _raw(b)))
def test_any_header_reads_without_raising_and_ids_stay_guids(header: str) -> None:
    """Whatever the header, reading it never raises and tid/app are GUIDs or None."""
    claims = read_claims(header)
    for value in (claims.tid, claims.app):
        assert value is None or (len(value) == 36 and set(value) <= set("0123456789abcdef-"))


@given(st.dictionaries(st.text(max_size=8), st.recursive(st.none() | st.text(), st.lists)))
def test_any_payload_object_reads_without_raising(payload: dict[str, object]) -> None:
    """Any JSON object as the payload reads without raising."""
    read_claims(_raw(orjson.dumps(payload)))


def test_scopes_key_by_app_and_tenant_by_tenant_or_not_at_all() -> None:
    """app: tid.app; tenant: tid; shared: "" (one quota for the deployment)."""
    identities = Identities(10)
    claims = read_claims(bearer(TID, APP))
    assert identities.key(claims, "app") == f"{TID}.{APP}"
    assert identities.key(claims, "tenant") == TID
    assert identities.key(claims, "shared") == ""


def test_a_token_without_what_the_scope_needs_is_anonymous() -> None:
    """No token, or one without tid (or without an app for the app scope), is anonymous."""
    identities = Identities(10)
    tenant_only = read_claims(f"Bearer {mint(tid=TID)}")
    assert identities.key(NO_CLAIMS, "app") == ANONYMOUS
    assert identities.key(NO_CLAIMS, "tenant") == ANONYMOUS
    assert identities.key(tenant_only, "app") == ANONYMOUS
    assert identities.key(tenant_only, "tenant") == TID
    assert identities.key(read_claims(f"Bearer {mint(appid=APP)}"), "app") == ANONYMOUS


def test_identities_past_max_share_overflow_and_warn_once() -> None:
    """Past max distinct identities, new ones get overflow (known ones keep theirs); one warning."""
    identities = Identities(2)
    first = read_claims(bearer(TID, APP))
    second = read_claims(bearer(TID, OTHER_APP))
    late = [read_claims(bearer(f"{i:08x}-0000-0000-0000-000000000000", APP)) for i in range(5)]
    with structlog.testing.capture_logs() as lines:
        assert identities.key(first, "app") == f"{TID}.{APP}"
        assert identities.key(second, "app") == f"{TID}.{OTHER_APP}"
        assert [identities.key(claims, "app") for claims in late] == [OVERFLOW] * 5
        assert identities.key(first, "app") == f"{TID}.{APP}"
        assert identities.key(NO_CLAIMS, "app") == ANONYMOUS
    warnings = [line for line in lines if line["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["max"] == 2


def test_labels_name_configured_ids_only() -> None:
    """A configured id gets its name, any other id other, no id anonymous."""
    labels = Labels({"contoso": TID.upper(), "soc-tool": APP})
    assert labels.of(TID) == "contoso"
    assert labels.of(APP) == "soc-tool"
    assert labels.of(OTHER_APP) == OTHER
    assert labels.of(None) == ANONYMOUS


def test_the_quota_key_keeps_one_hash_tag_over_route_and_identity() -> None:
    """The whole key, identity included, is one Redis Cluster hash tag; shared keeps today's key."""
    assert quota_key("prod", "machines.list", f"{TID}.{APP}") == (
        f"dp:{{prod:machines.list:{TID}.{APP}}}"
    )
    assert quota_key("prod", "machines.list", "") == "dp:{prod:machines.list}"


def test_identity_config_problems_are_reported_together_with_their_keys() -> None:
    """identities.max, names (shape, reserved names, GUIDs, repeats) and per each name their key."""
    data = {
        "throttle": {
            "identities": {
                "max": 0,
                "names": {"other": TID, "a{": TID, "x": "contoso", "y": APP, "z": APP.upper()},
            },
            "routes": [{"name": "machines.list", "per": "everyone"}],
        }
    }
    with pytest.raises(ConfigError) as raised:
        parse_settings(data, "c.yaml", environ={})
    problems = str(raised.value)
    for where in (
        "throttle.identities.max",
        "throttle.identities.names.other: 'other' is the label",
        "throttle.identities.names: a name: expected 1-64 characters of A-Z a-z 0-9 _ . -, got 'a{'",
        "throttle.identities.names.x: expected a tenant or app id",
        "throttle.identities.names.z: " + APP + " is already named 'y'",
        "throttle.routes[0].per: expected one of app, tenant, shared",
    ):
        assert where in problems
