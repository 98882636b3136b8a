"""Generated secrets in every shape text carries one, for the properties that grep what is logged.

A ``Plant`` is a piece of text holding a secret (``text``) and the strings that must appear nowhere
once it has been logged (``secrets``). Secrets are high-entropy, as credentials are: a letter and a
digit, then more of what a query or header value may hold. ``plants(compact=True)`` gives only
texts without spaces of at most 64 characters, the shape an upstream error code must have.
"""

from __future__ import annotations

import base64
import string
from dataclasses import dataclass

import orjson
from hypothesis import strategies as st

# What a bare value may hold: no space, quote, backslash, separator of a list, or percent sign.
VALUE_CHARS = string.ascii_letters + string.digits + "-._~+=!*$@:|^"
# What a quoted value may hold besides: spaces and list separators.
PHRASE_CHARS = VALUE_CHARS + " &;,()<>"
KEYS = (
    "code", "session", "sig", "signature", "token", "access_token", "refresh_token", "id_token",
    "client_secret", "password", "passwd", "pwd", "secret", "api-key", "x-api-key", "apikey",
    "api_key", "AccountKey", "SharedAccessKey", "X-Amz-Signature", "X-Amz-Security-Token",
    "Ocp-Apim-Subscription-Key", "sessionid", "credential", "assertion", "sas",
)  # fmt: skip
HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie")
TOKEN_SCHEMES = ("Basic", "Bearer", "Negotiate", "NTLM", "DPoP", "SharedKey", "bearer", "BASIC")
# `{k}` the key, `{v}` the value; the ones marked compact have no space.
BARE_SHAPES = (
    "{k}={v}",
    ";{k}={v}",
    "&{k}={v}&x=1",
    "{k}:{v}",
    "{k}: {v}",
    "{k} = {v}",
    "{k}%3D{v}",
)
COMPACT_BARE_SHAPES = ("{k}={v}", ";{k}={v}", "{k}:{v}", "{k}%3D{v}")
QUOTED_SHAPES = ('"{k}": "{v}"', "'{k}': '{v}'", '\\"{k}\\": \\"{v}\\"', '{k}="{v}"')
COMPACT_QUOTED_SHAPES = ('"{k}":"{v}"', "'{k}':'{v}'", '{k}="{v}"')
# JWT headers as issuers write them: compact, spaced, on several lines.
JWT_HEADERS = (
    b'{"alg":"RS256","typ":"JWT"}',
    b'{"typ":"JWT","alg":"HS256"}',
    b'{ "alg": "none" }',
    b'{\n  "alg": "ES256"\n}',
)
# Ordinary text around a plant; each ends (or starts) where a word would.
PREFIXES = ("", "Invalid request: ", "The header (", "rejected ", "[gateway] ")
SUFFIXES = ("", " was rejected", ")", ", try again", " at the gateway.")


@dataclass(frozen=True)
class Plant:
    """Text holding a secret, and what of it must never be written."""

    text: str
    secrets: tuple[str, ...]


def _high_entropy(chars: str, longest: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda letter, digit, rest: letter + digit + rest,
        st.sampled_from(string.ascii_letters),
        st.sampled_from(string.digits),
        st.text(chars, min_size=6, max_size=longest),
    )


def values(longest: int = 40) -> st.SearchStrategy[str]:
    """A secret that can stand bare after a key."""
    return _high_entropy(VALUE_CHARS, longest)


def phrases(longest: int = 40) -> st.SearchStrategy[str]:
    """A secret that needs its quotes: it may hold spaces and list separators."""
    return _high_entropy(PHRASE_CHARS, longest).map(lambda v: v.strip() or "x0")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(header: bytes, claims: dict[str, str], signature: bytes, jwe: bool) -> Plant:
    payload = _b64(orjson.dumps(claims))
    mac = _b64(signature)
    # A JWE has five segments: header, encrypted key, IV, ciphertext, tag.
    segments = [_b64(header), mac, payload, payload, mac] if jwe else [_b64(header), payload, mac]
    return Plant(".".join(segments), (payload, mac))


def jwts(small: bool = False) -> st.SearchStrategy[Plant]:
    """A JWS or JWE; its payload and signature must not show either. ``small``: ≤ 64 characters."""
    if small:
        return st.builds(
            _jwt,
            st.just(b'{"alg":"none"}'),
            st.dictionaries(st.just("a"), st.text(string.ascii_letters, max_size=3), min_size=1),
            st.binary(min_size=12, max_size=16),
            st.just(False),
        )
    return st.builds(
        _jwt,
        st.sampled_from(JWT_HEADERS),
        st.dictionaries(
            st.sampled_from(["aud", "tid", "sub", "roles", "exp"]), st.text(max_size=12), min_size=1
        ),
        st.binary(min_size=16, max_size=64),
        st.booleans(),
    )


def _keyed(compact: bool) -> st.SearchStrategy[Plant]:
    longest = 20 if compact else 40
    keys = st.sampled_from(KEYS).flatmap(
        lambda k: st.sampled_from([k, k.upper(), k.lower(), k.title()])
    )
    bare = st.builds(
        lambda shape, k, v: Plant(shape.format(k=k, v=v), (v,)),
        st.sampled_from(COMPACT_BARE_SHAPES if compact else BARE_SHAPES),
        keys,
        values(longest),
    )
    quoted = st.builds(
        lambda shape, k, v: Plant(shape.format(k=k, v=v), (v,)),
        st.sampled_from(COMPACT_QUOTED_SHAPES if compact else QUOTED_SHAPES),
        keys,
        values(longest) if compact else phrases(longest),
    )
    return bare | quoted


def _headers() -> st.SearchStrategy[Plant]:
    cookie = st.builds(
        lambda name, header, v: Plant(f"{header}: {name}={v}; theme=dark", (v,)),
        st.sampled_from(["MUID", "ai_session", "x", "ESTSAUTH", "theme"]),
        st.sampled_from(["Cookie", "Set-Cookie", "cookie"]),
        values(),
    )
    credentials = st.builds(
        lambda header, scheme, v: Plant(f"{header}: {scheme} {v}", (v,)),
        st.sampled_from(HEADERS),
        st.sampled_from([*TOKEN_SCHEMES, "Digest", "Token", "Whatever"]),
        values(),
    )
    return cookie | credentials


def _schemes() -> st.SearchStrategy[Plant]:
    token68 = st.builds(
        lambda scheme, v: Plant(f"{scheme} {v}", (v,)), st.sampled_from(TOKEN_SCHEMES), values()
    )
    digest = st.builds(
        lambda v: Plant(f'Digest username="bob", realm="api", response="{v}"', (v,)), values()
    )
    aws = st.builds(
        lambda v: Plant(
            f"AWS4-HMAC-SHA256 Credential=AKIA/20260101/x, SignedHeaders=host, Signature={v}",
            (v,),
        ),
        values(),
    )
    return token68 | digest | aws


def _userinfo() -> st.SearchStrategy[Plant]:
    chars = VALUE_CHARS.replace("@", "")
    return st.builds(
        lambda v: Plant(f"https://svc:{v}@login.example/token", (v,)), _high_entropy(chars, 30)
    )


def plants(compact: bool = False) -> st.SearchStrategy[Plant]:
    """Text holding one secret in one shape, with ordinary text around it unless ``compact``."""
    if compact:
        return _keyed(True) | jwts(small=True)
    shaped = _keyed(False) | _headers() | _schemes() | jwts() | _userinfo()
    return st.builds(
        lambda prefix, plant, suffix: Plant(prefix + plant.text + suffix, plant.secrets),
        st.sampled_from(PREFIXES),
        shaped,
        st.sampled_from(SUFFIXES),
    )
