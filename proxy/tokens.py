"""Tokens the proxy mints for callers that bring none: one per app and scope, minted once.

A ``TokenSource`` holds one app's credential (``proxy.credentials``) for one scope and the token
minted with it, which every request without ``Authorization`` on every listener with that
credential is sent with. Tokens come from azure-identity's async credentials (the client
credentials grant: a secret, a certificate's signed assertion, or a federated token): this
module decides only *when* to mint and what a failure means.

- **Single flight.** However many requests need a token at once, one task mints it; the others
  await that task (shielded: a caller that leaves does not cancel it).
- **Ahead of expiry.** A background task mints the next token before the current one is due
  (``refresh_on`` when Entra gives one, else five minutes before expiry, or half-way through a
  shorter life), while requests go on with the current one. A token is used until
  ``USABLE_MARGIN`` before it expires; a request never gets one closer to its end.
- **Files are read at every mint.** The secret, the certificate and the federated token are read
  anew each time, with a fresh credential object (azure-identity's own token cache is therefore
  never consulted, and never disagrees with the schedule here). The secret and certificate files
  are also polled: a changed file is minted with at once, so a bad rotation shows in the metrics
  while the old token still serves.
- **Failure is an answer.** A mint that fails (an AADSTS code, no answer within ``MINT_TIMEOUT``,
  an unreadable file) ends every waiting request with a 503 in the Defender envelope, its log line
  naming the code. The next attempt waits out a back-off (1 s doubling to ``MAX_BACKOFF``, at
  least the identity provider's ``Retry-After``); requests that find no usable token meanwhile
  get the same 503 at once, without a token request.

Counted in ``defender_proxy_token_requests_total{result,code}``; the credential's end date in
``defender_proxy_credential_expiry_seconds{upstream,kind}``. No token, secret or assertion is
ever logged or counted: the log lines carry the app, the tenant, the scope and the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from proxy.credentials import CredentialFileError, Credentials, read_certificate, read_secret
from proxy.errors import TokenUnavailableError
from proxy.identity import NO_CLAIMS, Claims, read_claims
from proxy.logs import get_logger
from proxy.metrics import Metrics

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncSupportsTokenInfo

    from proxy.config import Settings

__all__ = [
    "MAX_BACKOFF",
    "MINT_TIMEOUT",
    "USABLE_MARGIN",
    "MintError",
    "Minted",
    "TokenSource",
    "sources_for",
]

#: The longest one mint may take, from reading the files to the token (requests wait as long);
#: ``timeouts.read`` when that is shorter.
MINT_TIMEOUT: Final = 30.0
#: A token is not handed to a request in its last seconds (or last quarter of a short life).
USABLE_MARGIN: Final = 30.0
#: How long before expiry the next token is minted, unless Entra says when (``refresh_on``).
REFRESH_AHEAD: Final = 300.0
#: The back-off between failed mints doubles from 1 s up to this.
MAX_BACKOFF: Final = 60.0
#: How often the secret and certificate files are checked for a change.
POLL_INTERVAL: Final = 2.0
#: Distinct AADSTS codes counted by name; any more are counted as ``other`` (a hostile or broken
#: authority cannot grow the metric without bound).
MAX_CODES: Final = 32
_AADSTS: Final = re.compile(r"AADSTS(\d{1,9})\b")
#: What a bearer token may hold (RFC 6750's b64token); its length is bounded apart (padding
#: included: ``a`` and a megabyte of ``=`` is b64token too).
_TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: The longest token sent: Entra's are a few KiB, and an API refuses a header line much longer.
MAX_TOKEN: Final = 16384
#: The longest life a token is taken to have: Entra's are one to 24 hours.
MAX_LIFETIME: Final = 2 * 86400.0

#: The failures whose series are made at 0 when a source is made (the common ones).
COUNTED_FROM_START: Final = (
    "7000215",
    "7000222",
    "700027",
    "700016",
    "90002",
    "unreachable",
    "unknown",
    "credential_file",
)

#: What the common AADSTS codes of the client credentials grant mean, in the 503's message.
REASONS: Final = {
    "7000215": "the identity provider refused the client secret as not valid",
    "7000222": "the client secret has expired",
    "700027": "the identity provider refused the certificate's assertion "
    "(a certificate not registered on the app, or expired)",
    "700016": "the app is not registered in the tenant",
    "90002": "the tenant does not exist",
    "7000218": "the identity provider got no client secret or assertion",
    "700213": "no federated credential of the app matches the workload's token",
    "700024": "the workload's federated token is outside its valid time",
    "90055": "the identity provider is throttling token requests",
    "50196": "the identity provider is throttling token requests",
    "90033": "the identity provider is unavailable",
    "unreachable": "the identity provider could not be reached",
    "credential_file": "the proxy cannot read its credential file",
}

# azure-identity and azure-core log through the standard library: a failed token request as a
# warning carrying the identity provider's whole description. The proxy logs each mint itself,
# in its own format, so theirs are silenced.
for _name in ("azure.identity", "azure.core"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class Minted:
    """A token, as sent (``Bearer …``) and as read, and until when it is handed out."""

    authorization: str = ""
    claims: Claims = NO_CLAIMS
    expires_on: float = 0.0
    usable_until: float = 0.0

    def __repr__(self) -> str:  # never the token itself
        return f"Minted(expires_on={self.expires_on}, app={self.claims.app})"


class MintError(Exception):
    """A mint that failed: ``code`` (an AADSTS number, ``unreachable``, ``unknown`` or
    ``credential_file``), a reason fit for a caller, and how long the authority asked to wait."""

    def __init__(
        self, code: str, reason: str, retry_after: float = 0.0, error: str = "", detail: str = ""
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.retry_after = retry_after
        #: the OAuth ``error`` (invalid_client …) or the failure's type; never its description
        self.error = error
        #: more for the proxy's own log line only, never for a caller (a file's path, say)
        self.detail = detail


def _shown(code: str) -> str:
    return f"AADSTS{code}" if code.isdigit() else code


def _unavailable(failure: MintError, wait: float) -> TokenUnavailableError:
    """The 503 of the requests ``failure`` leaves without a token, for ``wait`` more seconds."""
    return TokenUnavailableError(_shown(failure.code), failure.reason, wait)


class TokenSource:
    """One app's tokens for one scope, shared by the listeners named ``names``."""

    def __init__(
        self,
        credentials: Credentials,
        names: Iterable[str],
        metrics: Metrics,
        verify: bool | str = True,
        connect_timeout: float = 5.0,
        timeout: float = MINT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        interval: float = POLL_INTERVAL,
    ) -> None:
        assert credentials.scope is not None, "the scope is settled when the config is parsed"
        self.credentials = credentials
        self.names = tuple(names)
        self._scope = credentials.scope
        self._metrics = metrics
        self._verify = verify
        self._connect_timeout = connect_timeout
        self._timeout = min(timeout, MINT_TIMEOUT)
        self._clock = clock
        self._interval = interval
        self._log = get_logger("credentials").bind(
            client_id=credentials.client_id, tenant=credentials.tenant_id, scope=self._scope
        )
        self._current: Minted | None = None
        self._minting: asyncio.Task[Minted] | None = None
        self._failure: MintError | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._refresh_at = 0.0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._codes: set[str] = set()
        #: the credential's file changed since the last mint (``_watch``)
        self._changed = False
        if credentials.secret_expires is not None:
            self._expires("secret", credentials.secret_expires)
        # Every series an alert reads exists from the start at 0: increase() over a series born
        # at its first failure would miss that failure.
        metrics.token_requests.labels("ok", "")
        for code in COUNTED_FROM_START:
            metrics.token_requests.labels("failed", code)

    async def start(self) -> None:
        """Mint the first token in the background and start watching the credential's file."""
        self._tasks.append(asyncio.create_task(self._refresher()))
        if self.credentials.file is not None and self.credentials.kind != "federated":
            self._tasks.append(asyncio.create_task(self._watch(self.credentials.file)))
        self._wake.set()

    async def close(self) -> None:
        """Stop refreshing and watching; a mint under way is abandoned."""
        tasks: list[asyncio.Task[Any]] = list(self._tasks)
        if self._minting is not None and not self._minting.done():
            tasks.append(self._minting)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, MintError):
                await task
        self._tasks.clear()

    async def token(self) -> Minted:
        """A usable token: the current one, or the one being minted; raises ``ProxyError`` (503)
        when none can be had."""
        current = self._current
        if current is not None and self._clock() < current.usable_until:
            return current
        task = self._minting
        if task is None or task.done():
            failure = self._failure
            wait = self._retry_at - self._clock()
            if failure is not None and wait > 0:
                raise _unavailable(failure, wait)
            task = self._mint_soon()
        try:
            return await asyncio.shield(task)
        except MintError as failure:
            raise _unavailable(failure, self._retry_at - self._clock()) from None

    def _mint_soon(self) -> asyncio.Task[Minted]:
        if self._minting is None or self._minting.done():
            self._minting = asyncio.create_task(self._mint())
            # A failure nobody awaits (a background refresh) is still consumed.
            self._minting.add_done_callback(_consume)
        return self._minting

    async def _mint(self) -> Minted:
        started = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                info = await self._request()
        except MintError as failure:
            self._failed(failure)
            raise
        except TimeoutError:
            late = MintError(
                "unreachable",
                REASONS["unreachable"],
                error="timeout",
                detail=f"no token within {self._timeout:g} s from {self.credentials.authority}",
            )
            self._failed(late)
            raise late from None
        token, expires_on, refresh_on = info
        now = self._clock()
        if not _usable(token) or not now < expires_on < now + MAX_LIFETIME:
            # It goes into a header line as it is: a CR or LF in it would be a header of the
            # authority's choosing, sent to the API.
            odd = MintError(
                "unknown", "the identity provider's answer is not a usable bearer token"
            )
            self._failed(odd)
            raise odd
        life = max(expires_on - now, 0.0)
        margin = min(USABLE_MARGIN, life / 4)
        minted = Minted(
            f"Bearer {token}", read_claims(f"Bearer {token}"), expires_on, expires_on - margin
        )
        self._current = minted
        self._failure = None
        self._failures = 0
        self._count("ok", "")
        ahead = min(REFRESH_AHEAD, life / 2)
        # Entra's refresh_in, unless it is nonsense: past already, or so soon that the proxy
        # would mint again and again (a broken or hostile authority).
        sensible = refresh_on is not None and now + min(60.0, life / 4) <= refresh_on < expires_on
        due = refresh_on if sensible and refresh_on is not None else expires_on - ahead
        self._refresh_at = max(due, now + 1.0)
        self._wake.set()
        self._log.info(
            "token minted",
            kind=self.credentials.kind,
            expires_in=round(life),
            mint_ms=round((now - started) * 1000, 1),
        )
        return minted

    def _failed(self, failure: MintError) -> None:
        self._failure = failure
        self._failures += 1
        backoff = min(MAX_BACKOFF, 2.0 ** (self._failures - 1))
        self._retry_at = self._clock() + max(backoff, min(failure.retry_after, MAX_BACKOFF * 5))
        self._count("failed", failure.code)
        self._wake.set()
        self._log.warning(
            "token request failed",
            kind=self.credentials.kind,
            token_error=_shown(failure.code),
            error=failure.error,
            reason=failure.detail or failure.reason,
            failures_in_a_row=self._failures,
            retry_in_s=round(self._retry_at - self._clock(), 1),
            token_still_usable=self._current is not None
            and self._clock() < self._current.usable_until,
        )

    def _count(self, result: str, code: str) -> None:
        if code and code not in self._codes:
            if len(self._codes) >= MAX_CODES:
                code = "other"
            else:
                self._codes.add(code)
        self._metrics.token_requests.labels(result, code).inc()

    def _expires(self, kind: str, when: float) -> None:
        for name in self.names:
            self._metrics.credential_expiry.labels(name, kind).set(when)

    async def _request(self) -> tuple[str, float, float | None]:
        """One token request: the files read now, a credential made from them, and its answer.

        Whatever fails in it is a ``MintError``: anything else would end the refresher's task
        and reach the waiting requests as a 500, with no back-off before the next request."""
        credential: AsyncSupportsTokenInfo | None = None
        try:
            # In a thread, so that a file on a slow volume holds no request in flight. (Loading a
            # certificate credential's RSA key is CPU that holds the GIL: azure-identity loads it
            # twice, ~80 ms in all for 2048 bits, once per mint; python -m bench.credentials.)
            credential = await asyncio.to_thread(self._credential)
            info = await credential.get_token_info(self._scope)
            return info.token, float(info.expires_on), info.refresh_on
        except MintError:
            raise
        except Exception as error:
            raise _failure(error) from None
        finally:
            if credential is not None:
                with contextlib.suppress(Exception):
                    await credential.close()

    def _credential(self) -> AsyncSupportsTokenInfo:
        # Imported here: a proxy that holds no credential never loads azure-identity.
        from azure.identity.aio import (
            CertificateCredential,
            ClientAssertionCredential,
            ClientSecretCredential,
        )

        credentials = self.credentials
        options: dict[str, Any] = {
            "authority": credentials.authority,
            "disable_instance_discovery": True,
            "connection_verify": self._verify,
            "connection_timeout": self._connect_timeout,
            "read_timeout": self._timeout,
            # One HTTP request per mint: the back-off between mints is this module's, and each
            # request is counted.
            "retry_total": 0,
        }
        tenant, client = credentials.tenant_id, credentials.client_id
        try:
            if credentials.kind == "secret":
                secret = credentials.secret
                if secret is None:
                    assert credentials.file is not None
                    secret = read_secret(credentials.file)
                return ClientSecretCredential(tenant, client, secret, **options)
            if credentials.kind == "certificate":
                assert credentials.file is not None
                certificate = read_certificate(credentials.file, check_key=False)
                self._expires("certificate", certificate.not_after)
                return CertificateCredential(
                    tenant, client, certificate_data=certificate.pem, **options
                )
        except CredentialFileError as error:
            raise MintError(
                "credential_file", REASONS["credential_file"], error="file", detail=str(error)
            ) from None
        path = credentials.file
        assert path is not None

        def assertion() -> str:
            try:
                return read_secret(path)
            except CredentialFileError as error:
                raise MintError(
                    "credential_file", REASONS["credential_file"], error="file", detail=str(error)
                ) from None

        return ClientAssertionCredential(tenant, client, assertion, **options)

    async def _refresher(self) -> None:
        """Mint when the token is due, after a failure's back-off, or when the file changed."""
        while True:
            now = self._clock()
            due = self._retry_at if self._failure is not None else self._refresh_at
            if self._current is None and self._failure is None:
                due = now  # the first token
            if due > now:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due - now):
                        await self._wake.wait()
            self._wake.clear()
            now = self._clock()
            due = self._retry_at if self._failure is not None else self._refresh_at
            if self._changed or (self._current is None and self._failure is None) or now >= due:
                self._changed = False
                with contextlib.suppress(MintError):
                    await asyncio.shield(self._mint_soon())

    async def _watch(self, path: str) -> None:
        """Poll ``path``; a change (kubelet's symlink swap included) is minted with at once."""
        seen = _signature(path)
        while True:
            await asyncio.sleep(self._interval)
            now = _signature(path)
            if now != seen:
                seen = now
                self._log.info("credential file changed", file=path)
                self._changed = True
                self._failure = None  # a new file deserves an attempt now, not after a back-off
                self._failures = 0
                self._retry_at = 0.0
                self._wake.set()


def _usable(token: object) -> bool:
    """Whether ``token`` may go into an ``Authorization`` line as it is (the identity provider's
    JSON may hold anything where the token belongs: a number, null, a header of its own)."""
    return isinstance(token, str) and len(token) <= MAX_TOKEN and bool(_TOKEN.fullmatch(token))


def _signature(path: str) -> tuple[int, ...]:
    try:
        found = os.stat(path)
    except OSError as error:
        return (-1, error.errno or 0)
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)


def _consume(task: asyncio.Task[Minted]) -> None:
    if not task.cancelled():
        task.exception()


def _failure(error: Exception) -> MintError:
    """What a failed token request means, from azure-identity's exception."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(error, ServiceRequestError | ServiceResponseError | OSError):
        cause = error.__cause__ or error
        return MintError("unreachable", REASONS["unreachable"], error=type(cause).__name__)
    response = getattr(error, "response", None)
    code, oauth_error = _answer_code(response)
    if code is None:
        found = _AADSTS.search(str(getattr(error, "message", "") or error))
        code = found.group(1) if found else None
    retry_after = _retry_after(response)
    if code is None:
        kind = oauth_error or type(error).__name__
        reason = (
            "the identity provider refused the token request"
            if isinstance(error, ClientAuthenticationError)
            else "the token request failed"
        )
        return MintError("unknown", reason, retry_after, kind)
    reason = REASONS.get(code, "the identity provider refused the token request")
    return MintError(code, reason, retry_after, oauth_error or "")


def _answer_code(response: object) -> tuple[str | None, str | None]:
    """The first of ``error_codes`` and the ``error`` of an Entra error answer, if it is one."""
    if response is None:
        return None, None
    try:
        body = orjson.loads(response.body())  # type: ignore[attr-defined]
    except Exception:
        return None, None
    if not isinstance(body, dict):
        return None, None
    codes = body.get("error_codes")
    code = None
    if isinstance(codes, list) and codes and isinstance(codes[0], int) and 0 <= codes[0] < 10**9:
        code = str(codes[0])
    error = body.get("error")
    shown = error if isinstance(error, str) and re.fullmatch(r"[a-z_]{1,64}", error) else None
    return code, shown


def _retry_after(response: object) -> float:
    headers = getattr(response, "headers", None)
    if headers is None:
        return 0.0
    try:
        value = float(headers.get("Retry-After", "0"))
    except (TypeError, ValueError):
        return 0.0
    return value if 0 < value < 86400 else 0.0


def sources_for(settings: Settings, metrics: Metrics) -> dict[str, TokenSource]:
    """A token source per distinct credential of ``settings``' listeners, by listener name."""
    verify: bool | str = settings.tls.ca_bundle or settings.tls.verify
    by_key: dict[tuple[str, str, str, str | None], list[str]] = {}
    held: dict[tuple[str, str, str, str | None], Credentials] = {}
    for upstream in settings.listeners:
        if upstream.credentials is not None:
            by_key.setdefault(upstream.credentials.key, []).append(upstream.name)
            held.setdefault(upstream.credentials.key, upstream.credentials)
    sources: dict[str, TokenSource] = {}
    for key, names in by_key.items():
        timeouts = settings.timeouts
        source = TokenSource(held[key], names, metrics, verify, timeouts.connect, timeouts.read)
        for name in names:
            sources[name] = source
    return sources
