"""Real clients against the proxy as an HTTPS gateway: ``defender-proxy run`` with ``listen_tls``
in front of ``defender-proxy simulate --check-tokens --per-identity``, its certificate issued by a
trustme CA in a Secret-volume directory and rotated mid-session as the kubelet rotates it.

Each of requests, httpx, curl and the Microsoft Graph SDK (its Azure sign-in, a process of its
own) runs a scripted session: calls before the rotation, the rotation (the test waits for the
proxy's ``listen_tls reloaded`` line), a call on the kept-alive connection opened before it (old
certificate, same connection, answered), then calls on a new connection (new certificate). Every
call is answered 200 by the simulator, which accepted the token each one carried; nothing is
dropped: the proxy counted exactly the calls made, and one reload."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import requests
import trustme
from prometheus_client.parser import text_string_to_metric_families

from proxy.simulator.tokens import bearer
from tests.graphsdk import SESSION_ROLES
from tests.procs import Process, start_cli
from tests.tlsfiles import SecretDir, der_serial, issue, serial

TENANT = "11111111-1111-1111-1111-111111111111"
APP = "aaaaaaaa-0000-0000-0000-000000000001"
IDENTITY = f"{TENANT}.{APP}"
ALERTS = "/v1.0/security/alerts_v2"
HUNTING = "/v1.0/security/runHuntingQuery"
HUNT_BODY = b'{"Query": "DeviceInfo | take 2"}'

# Two processes start per test, and the Graph SDK's import alone takes seconds on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@dataclass
class Gateway:
    """The proxy on HTTPS in front of the simulator, the files it serves and their CA."""

    proxy: Process
    port: int
    admin: int
    simulator: int
    secret: SecretDir
    ca: trustme.CA
    ca_file: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def authorization(self) -> str:
        return bearer(
            TENANT,
            APP,
            aud="https://graph.microsoft.com",
            exp=int(time.time()) + 3600,
            roles=list(SESSION_ROLES),
        )

    async def rotate(self) -> int:
        """Publish a new leaf, wait until the proxy serves it; its serial."""
        leaf = issue(self.ca, "rotated")
        self.secret.put(leaf)
        line = await self.proxy.wait_for("listen_tls reloaded", timeout=30)
        assert int(line["serial"], 16) == serial(leaf)
        return serial(leaf)

    async def counted(self) -> dict[str, float]:
        """What the proxy counted: answered requests by status, and reloads by result."""
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.admin}/metrics") as response:
                text = await response.text()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "defender_proxy_requests_total":
                    key = f"status {sample.labels['status']}"
                    found[key] = found.get(key, 0) + sample.value
                elif sample.name == "defender_proxy_listen_tls_reloads_total":
                    found[f"reloads {sample.labels['result']}"] = sample.value
        return found

    async def upstream_saw(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.simulator}/_sim/stats") as response:
                stats: dict[str, Any] = await response.json()
        return stats

    async def assert_every_call_arrived(self, calls: int) -> None:
        """The simulator admitted ``calls`` requests, all with the session's token; the proxy
        answered as many, all 200, and reloaded once."""
        stats = await self.upstream_saw()
        assert stats["requests"] == calls
        # Keyed "<route> <identity>": per app + tenant, hunting per tenant.
        quotas = stats["quotas"]
        assert {key.split(" ", 1)[1] for key in quotas} <= {IDENTITY, TENANT}
        assert sum(quota["requests"] for quota in quotas.values()) == calls
        assert await self.counted() == {"status 200": calls, "reloads ok": 1, "reloads failed": 0}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """The simulator checking tokens, and the proxy serving a first leaf on HTTPS."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    secret = SecretDir(tmp_path / "tls")
    secret.put(issue(ca, "first"))
    processes: list[Process] = []
    try:
        simulator = await start_cli("simulate", "--port", "0", "--check-tokens", "--per-identity")
        processes.append(simulator)
        line = await simulator.wait_for("_text")
        sim_port = int(line["text"].strip().rsplit(":", 1)[1])
        config = tmp_path / "proxy.yaml"
        config.write_text(
            f"upstream: http://127.0.0.1:{sim_port}\n"
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
            f"listen_tls: {{cert: '{secret.files.cert}', key: '{secret.files.key}'}}\n"
            "timeouts: {connect: 2s, read: 20s}\nshutdown_grace: 1s\n"
        )
        proxy = await start_cli("run", "--config", str(config))
        processes.append(proxy)
        listening = await proxy.wait_for("listening")
        (listener,) = listening["listeners"]
        assert listener["scheme"] == "https"
        yield Gateway(
            proxy,
            int(listener["listen"].rsplit(":", 1)[1]),
            int(listening["admin"].rsplit(":", 1)[1]),
            sim_port,
            secret,
            ca,
            ca_file,
        )
    finally:
        for process in processes:
            await process.stop()


def _session(gateway: Gateway) -> requests.Session:
    """A requests session trusting the test CA."""
    session = requests.Session()
    # Else REQUESTS_CA_BUNDLE from the environment would win over session.verify (requests#3829).
    session.trust_env = False
    session.verify = str(gateway.ca_file)
    session.headers["Authorization"] = gateway.authorization
    return session


def _requests_call(session: requests.Session, url: str) -> tuple[int, int, int, dict[str, Any]]:
    """GET ``url``: (status, peer serial, local port, JSON body)."""
    with session.get(url, stream=True, timeout=20) as response:
        connection = response.raw.connection
        assert connection is not None  # held while the streamed body is unread
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        port = sock.getsockname()[1]
        body: dict[str, Any] = response.json()
        return response.status_code, der_serial(der), port, body


async def test_a_requests_session_across_a_rotation(gateway: Gateway) -> None:
    """requests (verify = the CA file) pages the alerts through the rewritten https nextLink,
    keeps its connection across the rotation, and a new session gets the new certificate."""
    first = _session(gateway)
    url = f"{gateway.base}{ALERTS}?$top=10"
    status, old, port, page = await asyncio.to_thread(_requests_call, first, url)
    assert status == 200
    next_link = page["@odata.nextLink"]
    assert next_link.startswith(f"{gateway.base}{ALERTS}?")
    assert (await asyncio.to_thread(_requests_call, first, next_link))[:3] == (200, old, port)
    new = await gateway.rotate()
    # The kept-alive connection from before: its own certificate still, and served.
    assert (await asyncio.to_thread(_requests_call, first, url))[:3] == (200, old, port)
    first.close()
    second = _session(gateway)
    for _ in range(2):
        assert (await asyncio.to_thread(_requests_call, second, url))[:2] == (200, new)
    second.close()
    await gateway.assert_every_call_arrived(5)


async def test_an_httpx_session_across_a_rotation(gateway: Gateway) -> None:
    """httpx (verify = an SSLContext trusting the CA) keeps its pooled connection across the
    rotation; a new client gets the new certificate."""
    trust = ssl.create_default_context(cafile=str(gateway.ca_file))
    headers = {"Authorization": gateway.authorization}

    async def call(client: httpx.AsyncClient, method: str, path: str) -> tuple[int, int, int]:
        body = HUNT_BODY if method == "POST" else None
        response = await client.request(method, f"{gateway.base}{path}", content=body)
        stream = response.extensions["network_stream"]
        der = stream.get_extra_info("ssl_object").getpeercert(True)
        return response.status_code, der_serial(der), stream.get_extra_info("client_addr")[1]

    async with httpx.AsyncClient(verify=trust, headers=headers, trust_env=False) as client:
        status, old, port = await call(client, "GET", f"{ALERTS}?$top=3")
        assert status == 200
        assert await call(client, "POST", HUNTING) == (200, old, port)
        new = await gateway.rotate()
        assert await call(client, "GET", f"{ALERTS}?$top=3") == (200, old, port)
    async with httpx.AsyncClient(verify=trust, headers=headers, trust_env=False) as client:
        for _ in range(2):
            assert (await call(client, "GET", f"{ALERTS}?$top=3"))[:2] == (200, new)
    await gateway.assert_every_call_arrived(5)


_WRITE_OUT = "status=%{http_code} connects=%{num_connects} port=%{local_port}\n%{certs}~~\n"


def _curl(gateway: Gateway, *transfers: list[str]) -> list[str]:
    """curl's arguments for ``transfers`` in one invocation (one connection cache), each GET
    written out as status, connects, local port and the certificates of a new connection."""
    common = ["--cacert", str(gateway.ca_file), "-sS", "-o", "/dev/null", "-w", _WRITE_OUT]
    common += ["-H", f"Authorization: {gateway.authorization}"]
    args = ["curl"]
    for index, transfer in enumerate(transfers):
        args += [*(["--next"] if index else []), *common, *transfer]
    return args


def _transfers(out: bytes) -> list[dict[str, str]]:
    """Each transfer's write-out: status, connects, port and, on a new connection, the leaf's
    serial (curl lists the chain leaf first)."""
    found = []
    for chunk in out.decode().split("~~\n")[:-1]:
        head, *certs = chunk.splitlines()
        fields = dict(field.split("=", 1) for field in head.split())
        serials = [line.split(":", 1)[1] for line in certs if line.startswith("Serial Number:")]
        found.append({**fields, "serial": serials[0] if serials else ""})
    return found


async def test_a_curl_session_across_a_rotation(gateway: Gateway) -> None:
    """curl --cacert: a GET, then a POST whose body the test holds back until the rotation is
    done, then a GET — the last two on the connection of the first (old certificate); a second
    curl then connects anew and gets the new certificate."""
    held = [
        ["-X", "POST", "-T", "-", "-H", "Content-Type: application/json"],
        # A sized body, not chunked (the proxy closes a connection after a chunked request).
        ["-H", f"Content-Length: {len(HUNT_BODY)}", "-H", "Transfer-Encoding:", "-H", "Expect:"],
    ]
    kept = _curl(
        gateway,
        [f"{gateway.base}{ALERTS}?$top=1"],
        [*held[0], *held[1], f"{gateway.base}{HUNTING}"],
        [f"{gateway.base}{ALERTS}?$top=1"],
    )
    curl = await asyncio.create_subprocess_exec(
        *kept, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        # The first call is through: its connection (and handshake) is the kept one.
        await gateway.proxy.wait_for("request", timeout=30)
        new = await gateway.rotate()
        assert curl.stdin is not None
        out, _ = await asyncio.wait_for(curl.communicate(HUNT_BODY), 60)
    finally:
        if curl.returncode is None:
            curl.kill()
            await curl.wait()
    assert curl.returncode == 0
    first, posted, last = _transfers(out)
    assert (first["status"], first["connects"]) == ("200", "1")
    assert first["serial"], "a new connection lists its certificates"
    assert int(first["serial"], 16) != new
    for transfer in (posted, last):
        assert (transfer["status"], transfer["connects"]) == ("200", "0")
        assert transfer["port"] == first["port"]
    fresh = await asyncio.create_subprocess_exec(
        *_curl(gateway, [f"{gateway.base}{ALERTS}?$top=1"], [f"{gateway.base}{ALERTS}?$top=1"]),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(fresh.communicate(), 60)
    assert fresh.returncode == 0
    opened, reused = _transfers(out)
    assert (opened["status"], opened["connects"], int(opened["serial"], 16)) == ("200", "1", new)
    assert (reused["status"], reused["connects"]) == ("200", "0")
    await gateway.assert_every_call_arrived(5)


async def test_a_graph_sdk_session_with_azure_sign_in_across_a_rotation(gateway: Gateway) -> None:
    """The Graph SDK with AzureIdentityAuthenticationProvider accepts the https:// gateway,
    pages the alerts over TLS (the nextLinks name https), runs a hunting query on a connection
    kept alive from before the rotation, and a new client gets the new certificate."""
    tool = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.graphsdk",
        "https",
        str(gateway.port),
        str(gateway.ca_file),
        TENANT,
        APP,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert tool.stdout is not None
        assert tool.stdin is not None
        before = orjson.loads(await asyncio.wait_for(tool.stdout.readline(), 120))
        new = await gateway.rotate()
        tool.stdin.write(b"go\n")
        out, _ = await asyncio.wait_for(tool.communicate(), 120)
    finally:
        if tool.returncode is None:
            tool.kill()
            await tool.wait()
    assert tool.returncode == 0
    after = orjson.loads(out.splitlines()[-1])
    # 25 alerts in pages of 10: three calls. The SDK may ask for a page before the last one's
    # connection is back in its pool, so they may use more than one connection.
    assert before["alerts"] == 25
    calls = before["before"]
    assert [call["status"] for call in calls] == [200, 200, 200]
    old = calls[0]["serial"]
    assert int(old, 16) != new
    assert {call["serial"] for call in calls} == {old}
    hunted, fresh = after["after"]
    # After the rotation, on a connection kept alive from before it.
    assert hunted["port"] in {call["port"] for call in calls}
    assert (hunted["status"], hunted["serial"]) == (200, old)
    assert (fresh["status"], int(fresh["serial"], 16)) == (200, new)
    assert after["scopes"] == [["https://graph.microsoft.com/.default"]]
    await gateway.assert_every_call_arrived(5)


async def test_each_upstream_listener_serves_its_own_scheme(
    gateway: Gateway, tmp_path: Path
) -> None:
    """With upstreams, an entry's listen_tls makes its listener HTTPS and leaves the other on
    plain HTTP; the listening line says which, and each answers in its own scheme."""
    own = SecretDir(tmp_path / "own")
    leaf = issue(gateway.ca, "own")
    own.put(leaf)
    origin = f"http://127.0.0.1:{gateway.simulator}"
    config = tmp_path / "two.yaml"
    config.write_text(
        "upstreams:\n"
        f"  - {{name: secure, origin: '{origin}', listen: '127.0.0.1:0',\n"
        f"     listen_tls: {{cert: '{own.files.cert}', key: '{own.files.key}'}}}}\n"
        f"  - {{name: plain, origin: '{origin}', listen: '127.0.0.1:0'}}\n"
        "admin_listen: 127.0.0.1:0\nshutdown_grace: 1s\n"
    )
    proxy = await start_cli("run", "--config", str(config))
    try:
        line = await proxy.wait_for("listening")
        ports = {e["name"]: int(e["listen"].rsplit(":", 1)[1]) for e in line["listeners"]}
        assert {e["name"]: e["scheme"] for e in line["listeners"]} == {
            "secure": "https",
            "plain": "http",
        }
        trust = ssl.create_default_context(cafile=str(gateway.ca_file))
        headers = {"Authorization": gateway.authorization}
        async with httpx.AsyncClient(verify=trust, headers=headers, trust_env=False) as client:
            secure = await client.get(f"https://127.0.0.1:{ports['secure']}{ALERTS}?$top=1")
            stream = secure.extensions["network_stream"]
            der = stream.get_extra_info("ssl_object").getpeercert(True)
            plain = await client.get(f"http://127.0.0.1:{ports['plain']}{ALERTS}?$top=1")
        assert (secure.status_code, der_serial(der)) == (200, serial(leaf))
        assert plain.status_code == 200
        assert plain.json()["@odata.nextLink"].startswith(f"http://127.0.0.1:{ports['plain']}/")
        assert secure.json()["@odata.nextLink"].startswith(f"https://127.0.0.1:{ports['secure']}/")
    finally:
        await proxy.stop()


def _peer_serial(port: int, ca_file: Path) -> int:
    """The serial of the certificate a new connection to ``port`` is served."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der_serial(der)


async def test_sighup_switches_the_listener_to_the_pair_the_file_names_now(
    gateway: Gateway, tmp_path: Path
) -> None:
    """A reload naming other files serves their pair to new connections, counted as a reload of
    the listener's pair; a reload dropping listen_tls is named as needing a restart and the
    listener serves on over HTTPS."""
    config = tmp_path / "proxy.yaml"
    before = await asyncio.to_thread(_peer_serial, gateway.port, gateway.ca_file)
    other = SecretDir(tmp_path / "other")
    leaf = issue(gateway.ca, "other")
    other.put(leaf)
    text = config.read_text()
    config.write_text(
        text.replace(gateway.secret.files.cert, other.files.cert).replace(
            gateway.secret.files.key, other.files.key
        )
    )
    gateway.proxy.proc.send_signal(signal.SIGHUP)
    reloaded = await gateway.proxy.wait_for("reloaded", timeout=30)
    assert reloaded["changed"] == ["listen_tls"]
    now = await asyncio.to_thread(_peer_serial, gateway.port, gateway.ca_file)
    assert (before != now, now) == (True, serial(leaf))
    config.write_text("\n".join(line for line in text.splitlines() if "listen_tls" not in line))
    gateway.proxy.proc.send_signal(signal.SIGHUP)
    warned = await gateway.proxy.wait_for(
        "reload: settings that need a restart were not applied", timeout=30
    )
    assert warned["needs_restart"] == ["listen_tls"]
    assert await asyncio.to_thread(_peer_serial, gateway.port, gateway.ca_file) == serial(leaf)
    counted = await gateway.counted()
    assert (counted["reloads ok"], counted["reloads failed"]) == (1, 0)
