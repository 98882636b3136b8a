"""Unsigned JWT-shaped tokens with chosen claims, for the tests, the benchmarks and the demo.

The proxy decodes a token's payload and never verifies it (``proxy.identity``), and the
simulator reads the same claims to count like Microsoft, so a token here needs no key and no
signature: a header saying ``alg: none``, the claims, and an empty third segment. Neither the
proxy nor the simulator accepts it as proof of anything; the real API would answer it 401.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

_HEADER = {"alg": "none", "typ": "JWT"}


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(**claims: Any) -> str:
    """A token carrying ``claims`` (JSON values), e.g. ``mint(tid=..., appid=..., ver="1.0")``."""
    return f"{_segment(orjson.dumps(_HEADER))}.{_segment(orjson.dumps(claims))}."


def bearer(tid: str, app: str, version: str = "1.0", **claims: Any) -> str:
    """An ``Authorization`` value for an app-only token of ``app`` in tenant ``tid``: the app id
    as ``appid`` in a v1 token, as ``azp`` in a v2 one."""
    app_claim = "appid" if version == "1.0" else "azp"
    token = mint(tid=tid, ver=version, idtyp="app", **{app_claim: app}, **claims)
    return f"Bearer {token}"
