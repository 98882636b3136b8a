"""Credentials out of text that came from outside, before it is written anywhere.

``scrub`` is the one place that decides what looks like a secret; ``proxy.logs`` runs it over every
field of every line that the proxy did not make itself from a closed set. It replaces:

- the value after a secret-like key, in every shape text carries one: ``key=value`` (queries,
  forms, cookies, ``;sig=`` path parameters), ``key: value`` (headers), JSON and Python
  ``"key": "value"`` (escaped too, as a JSON document quoted inside a message has it). A key is
  secret-like when its name *ends* in one of ``_KEY_ENDINGS``, so ``client_secret``,
  ``x-api-key``, ``X-Amz-Signature`` and ``AccountKey`` need no entry of their own.
  ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie`` lose their whole value,
  to the end of the line. After a name ending in ``code`` (an OAuth authorization code, but also
  ``"code": "NotFound"``) the value is replaced unless it is an ordinary code: letters with
  ``_ . -`` (``InvalidRequest``, ``Request_ResourceNotFound``), or a number of up to five digits;
- the credentials after an authentication scheme (``Basic``, ``Bearer``, ``Negotiate`` …, and the
  whole parameter list of ``Digest``, ``AWS4-HMAC-SHA256`` …), unless they are one plain word:
  "Basic authentication failed" stays readable;
- JWT-shaped strings (a base64url JSON object, then ``.``-separated segments: JWS and JWE) and
  opaque tokens of three long base64url segments, wherever they stand;
- the password of ``scheme://user:password@``.

Text with a ``%`` is also read percent-decoded (up to three times, for double encoding): a path's
``%3F`` is a ``?`` to most readers and ``%3D`` an ``=``, so a secret that shows only once decoded is
caught, and then the decoded form, scrubbed, is what comes back.

It runs on every field of every line, so it is built to be cheap. Most text a proxy logs (paths,
ids) has none of the characters any shape needs (``= : . %``, a space, ``ey``/``ew``), and a few
substring tests return it as it is, the same object. Keys and schemes are found from the separator or space that must follow them: the text is
lowered and reversed once, and a pattern that starts with ``[:=]`` (or a space) lets the regex
engine skip straight to those few places, where one anchored match of the reversed names says
whether a secret follows. Matching every name at every position is ten times slower.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

REDACTED: Final = "[redacted]"

# Name endings of keys whose value is a secret whatever it looks like.
_KEY_ENDINGS: Final = (
    "token", "secret", "password", "passwd", "passphrase", "pwd", "sig", "signature",
    "credential", "credentials", "auth", "assertion", "session", "sessionid", "session_id",
    "session-id", "sessid", "sas", "apikey",
    *(f"{kind}{joint}key"
      for kind in ("api", "access", "account", "private", "secret", "subscription",
                   "sharedaccess", "shared_access", "shared-access", "signing", "client", "master")
      for joint in ("", "-", "_")),
)  # fmt: skip
# Header names whose whole value is a credential (a cookie list, a scheme and its parameters).
_HEADER_ENDINGS: Final = ("authorization", "cookie")
# After a name ending in `code` (OAuth's code, but also an error code) only an unusual value is one.
_CODE_ENDING: Final = "code"
_ORDINARY_CODE: Final = re.compile(r"[A-Za-z][A-Za-z_.\-]{0,63}|[0-9]{1,5}")
# Schemes followed by one token68 credential, and schemes followed by auth-params.
_TOKEN_SCHEMES: Final = (
    "basic", "bearer", "negotiate", "ntlm", "kerberos", "dpop", "sharedkey", "sharedkeylite",
    "sharedaccesssignature",
)  # fmt: skip
_PARAM_SCHEMES: Final = (
    "digest", "aws4-hmac-sha256", "oauth", "hawk", "hoba", "vapid", "scram-sha-1", "scram-sha-256",
)  # fmt: skip


def _backwards(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(word[::-1]) for word in sorted(words, key=len, reverse=True))


# Read in the lowered, reversed text: a separator, then (`"key": ` backwards) the name's ending.
_KEYED: Final = re.compile(
    r"[:=][ \t]*(?:[\"']\\*)?"
    rf"(?:(?P<header>{_backwards(_HEADER_ENDINGS)})"
    rf"|(?P<key>{_backwards(_KEY_ENDINGS)})"
    rf"|(?P<code>{_backwards((_CODE_ENDING,))}))"
)
# Read in the lowered, reversed text: a space, then a scheme that is a whole word.
_SCHEMED: Final = re.compile(
    rf"[ \t]+(?:(?P<params>{_backwards(_PARAM_SCHEMES)})"
    rf"|(?P<token>{_backwards(_TOKEN_SCHEMES)}))(?![a-z0-9_-])"
)

_QUOTED: Final = (
    r"\\+\"(?:[^\\\n]|\\(?!\\*\"))*(?:\\+\")?"  # \"…\": a JSON string inside a JSON string
    r"|\"(?:[^\"\\\n]|\\.)*\"?"
    r"|'(?:[^'\\\n]|\\.)*'?"
)
_STOP: Final = r"\s,;\"'<>(){}\[\]\\"
_VALUE: Final = re.compile(rf"[ \t]*({_QUOTED}|[^{_STOP}&]+)")
_LINE: Final = re.compile(rf"[ \t]*({_QUOTED}|[^\r\n]+)")
_CREDENTIAL: Final = re.compile(rf"[^{_STOP}]+")
_PARAMS: Final = re.compile(r"[A-Za-z0-9_-]+=[^\r\n]*")
# A scheme name followed by a word is prose ("Basic authentication failed."), not a credential.
_PLAIN_WORD: Final = re.compile(r"[A-Za-z][a-z]*[.:!?]?")

_B64URL: Final = "[A-Za-z0-9_-]"
# A JWT's header is a JSON object: `{"`, `{ `, `{\n`, `{\t`, `{\r` encode to these.
_JWT_START: Final = re.compile(r"e(?:y[JA]|w[ok0])")
_JWT: Final = re.compile(rf"e(?:y[JA]|w[ok0]){_B64URL}{{6,}}(?:\.{_B64URL}*)*")
_OPAQUE: Final = re.compile(
    rf"(?<![A-Za-z0-9_.-]){_B64URL}{{16,}}\.{_B64URL}{{16,}}\.{_B64URL}{{16,}}"
)
_USERINFO: Final = re.compile(r"(://[^/?#@\s:]*:)[^/?#@\s]+(?=@)")

_ASCII_LOWER: Final = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_CONTROL: Final[dict[int, str]] = {c: f"%{c:02X}" for c in (*range(0x20), 0x7F)}
_DECODINGS: Final = 3


def scrub(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``[redacted]``."""
    # Every shape needs one of these; `in` is several times faster than a character class here.
    if not (
        "=" in text
        or ":" in text
        or "." in text
        or "%" in text
        or " " in text
        or "\t" in text
        or "ey" in text
        or "ew" in text
    ):
        return text
    scrubbed = _scrub(text)
    if "%" not in scrubbed:
        return scrubbed
    # What the raw text lost stays lost: decoding starts from the scrubbed form.
    current = scrubbed
    for _ in range(_DECODINGS):
        decoded = unquote(current, errors="replace")
        if decoded == current:
            break
        again = _scrub(decoded)
        if again != decoded:
            # Decoding may have made line breaks or terminal escapes: they go back to %XX.
            return again.translate(_CONTROL)
        current = decoded
    return scrubbed


def _scrub(text: str) -> str:
    keyed = "=" in text or ":" in text
    spaced = " " in text or "\t" in text
    if keyed or spaced:
        backwards = text.lower()[::-1]
        if len(backwards) != len(text):  # lowering changed a length (U+0130): lower ASCII only
            backwards = text.translate(_ASCII_LOWER)[::-1]
        spans = _keyed_spans(text, backwards) if keyed else []
        if spaced:
            spans += _scheme_spans(text, backwards)
        if spans:
            text = _replace(text, spans)
    if _JWT_START.search(text) is not None:
        text = _JWT.sub(_jwt, text)
    if text.count(".") >= 2:
        text = _OPAQUE.sub(REDACTED, text)
    if "://" in text:
        text = _USERINFO.sub(rf"\g<1>{REDACTED}", text)
    return text


def _keyed_spans(text: str, backwards: str) -> list[tuple[int, int]]:
    """Where the values after secret-like keys stand in ``text``."""
    spans = []
    last = len(text)
    for found in _KEYED.finditer(backwards):
        start = last - found.start()  # just after the separator, in ``text``
        value = (_LINE if found["header"] is not None else _VALUE).match(text, start)
        if value is None:
            continue
        if found["code"] is not None and _ORDINARY_CODE.fullmatch(value[1].strip("\\\"'")):
            continue
        spans.append(value.span(1))
    return spans


def _scheme_spans(text: str, backwards: str) -> list[tuple[int, int]]:
    """Where the credentials after authentication schemes stand in ``text``."""
    spans = []
    last = len(text)
    for found in _SCHEMED.finditer(backwards):
        start = last - found.start()  # the credential's first character, in ``text``
        if found["params"] is not None:
            params = _PARAMS.match(text, start)
            if params is not None:
                spans.append(params.span())
            continue
        credential = _CREDENTIAL.match(text, start)
        if credential is not None and not _PLAIN_WORD.fullmatch(credential[0]):
            spans.append(credential.span())
    return spans


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each span replaced; spans that overlap are replaced as one."""
    pieces: list[str] = []
    done = 0
    for start, end in sorted(spans):
        if start < done:
            done = max(done, end)
            continue
        pieces += (text[done:start], REDACTED)
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def _jwt(match: re.Match[str]) -> str:
    start = match.start()
    before = match.string[start - 1 : start]
    # Inside a longer word or base64 run it is not where a token starts.
    if before.isalnum() or before in ("_", "-"):
        return match[0]
    return REDACTED
