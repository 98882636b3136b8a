"""``listen_tls``: the config's pair, checked as it will be served; the server context's settings;
``ServerTls`` reloading a rotated pair, keeping the old one when the new one does not load."""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import trustme
import yaml
from cryptography.hazmat.primitives import serialization

from proxy.config import ConfigError, ListenTls, parse_settings
from proxy.listen_tls import PairError, ServerTls, load
from proxy.metrics import Metrics
from tests.conftest import LogCapture
from tests.tlsfiles import SecretDir, issue, serial

ENTRY = {"name": "a", "origin": "http://127.0.0.1:9", "listen": "127.0.0.1:0"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """One test CA for the module."""
    return trustme.CA()


@pytest.fixture
def secret(ca: trustme.CA, tmp_path: Path) -> SecretDir:
    """A Secret-volume directory holding a first leaf."""
    directory = SecretDir(tmp_path / "tls")
    directory.put(issue(ca, "first"))
    return directory


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, "proxy.yaml", environ={})
    return caught.value.problems


def _pair(files: ListenTls) -> dict[str, str]:
    return {"cert": files.cert, "key": files.key}


def test_the_top_level_pair_serves_every_listener_without_its_own(
    secret: SecretDir, ca: trustme.CA, tmp_path: Path
) -> None:
    """Top-level listen_tls is each upstream's default; an entry's own listen_tls overrides it."""
    own = SecretDir(tmp_path / "own")
    own.put(issue(ca, "own"))
    upstreams = [ENTRY, {**ENTRY, "name": "b", "listen_tls": _pair(own.files)}]
    settings = parse_settings(
        {"listen_tls": _pair(secret.files), "upstreams": upstreams}, environ={}
    )
    assert [u.listen_tls for u in settings.listeners] == [secret.files, own.files]
    assert [u.scheme for u in settings.listeners] == ["https", "https"]


def test_the_shorthand_listener_serves_the_top_level_pair(secret: SecretDir) -> None:
    """With upstream + listen, the one listener serves listen_tls; without it, plain HTTP."""
    (listener,) = parse_settings({"listen_tls": _pair(secret.files)}, environ={}).listeners
    assert (listener.listen_tls, listener.scheme) == (secret.files, "https")
    (plain,) = parse_settings({}, environ={}).listeners
    assert (plain.listen_tls, plain.scheme) == (None, "http")


def test_an_entry_may_serve_https_alone(secret: SecretDir) -> None:
    """An upstream's own listen_tls makes only its listener HTTPS."""
    upstreams = [{**ENTRY, "listen_tls": _pair(secret.files)}, {**ENTRY, "name": "b"}]
    settings = parse_settings({"upstreams": upstreams}, environ={})
    assert [u.scheme for u in settings.listeners] == ["https", "http"]


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    """Unknown keys, a missing key and each unreadable file are reported together, per key."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM at all\n")
    problems = _problems(
        {
            "listen_tls": {"cert": str(junk), "key": str(tmp_path / "missing.key"), "ca": "x"},
            "upstreams": [{**ENTRY, "listen_tls": {"key": str(junk)}}],
        }
    )
    assert problems == [
        "proxy.yaml: listen_tls.ca: unknown key (known: cert, key)",
        f"proxy.yaml: listen_tls.cert: '{junk}' holds no PEM certificate "
        "(-----BEGIN CERTIFICATE-----)",
        f"proxy.yaml: listen_tls.key: no such file: '{tmp_path / 'missing.key'}'",
        "proxy.yaml: upstreams[0].listen_tls.cert: required: listen_tls needs both cert and key",
        f"proxy.yaml: upstreams[0].listen_tls.key: '{junk}' holds no PEM private key",
    ]


@pytest.mark.parametrize("value", ["/etc/tls/tls.crt", ["a", "b"], 3])
def test_listen_tls_must_be_a_mapping(value: object) -> None:
    """A path or a list in place of {cert, key} is one problem that shows the shape wanted."""
    (problem,) = _problems({"listen_tls": value})
    assert problem.startswith("proxy.yaml: listen_tls: expected a mapping such as {cert: ")


def test_a_key_of_another_certificate_is_refused_without_showing_either_file(
    secret: SecretDir, ca: trustme.CA, tmp_path: Path
) -> None:
    """A key that does not match the leaf is a problem on listen_tls.key naming both files, and
    nothing of what either file holds."""
    other = issue(ca, "other")
    key = tmp_path / "other.key"
    other.private_key_pem.write_to_path(str(key))
    (problem,) = _problems({"listen_tls": {"cert": secret.files.cert, "key": str(key)}})
    assert problem == (
        f"proxy.yaml: listen_tls.key: the key in '{key}' does not match the certificate in "
        f"'{secret.files.cert}' (the chain's first certificate)"
    )
    secret_lines = key.read_text().splitlines()[1:-1]
    assert not any(line in problem for line in secret_lines)


def test_an_encrypted_key_is_refused_without_a_prompt(secret: SecretDir, tmp_path: Path) -> None:
    """A password-protected key is a problem (OpenSSL would otherwise ask on the terminal)."""
    private = serialization.load_pem_private_key(Path(secret.files.key).read_bytes(), None)
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret password"),
    )
    key = tmp_path / "encrypted.key"
    key.write_bytes(encrypted)
    (problem,) = _problems({"listen_tls": {"cert": secret.files.cert, "key": str(key)}})
    assert problem == f"proxy.yaml: listen_tls.key: '{key}' is encrypted: give the key unencrypted"


def test_a_directory_or_a_huge_file_is_not_a_pair(tmp_path: Path) -> None:
    """A directory is no file; a file over 1MiB is not read to its end."""
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"-" * ((1 << 20) + 1))
    assert _problems({"listen_tls": {"cert": str(tmp_path), "key": str(huge)}}) == [
        f"proxy.yaml: listen_tls.cert: no such file: '{tmp_path}'",
        f"proxy.yaml: listen_tls.key: '{huge}' is larger than 1MiB: not a PEM file",
    ]


def test_the_context_is_tls_1_2_up_with_http_1_1_only(secret: SecretDir) -> None:
    """The server context refuses TLS below 1.2, compression and renegotiation, offers only
    forward-secret suites without SHA-1; the leaf's subject, serial and expiry are read."""
    served = load(secret.files)
    context = served.context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates asked for
    ciphers = context.get_ciphers()
    assert {c["kea"] for c in ciphers} <= {"kx-any", "kx-ecdhe", "kx-dhe"}  # forward secret
    assert not [c["name"] for c in ciphers if c["digest"] in ("sha1", "md5")]
    assert "CN=first" in served.subject
    assert served.not_after > datetime.now(UTC)


def test_a_rotated_pair_is_reloaded_and_counted(
    secret: SecretDir, ca: trustme.CA, captured_logs: LogCapture
) -> None:
    """A kubelet-style swap is seen at the next look: the new leaf serves, ok is counted, the
    expiry gauge follows, and the log line names the certificate, never the key."""
    metrics = Metrics()
    tls = ServerTls("gw", secret.files, metrics)
    first = tls.served
    assert tls.check() is None  # nothing changed: nothing loaded
    second = issue(ca, "second")
    secret.put(second)
    assert tls.check() is True
    assert int(tls.served.serial, 16) == serial(second)
    assert tls.served.context is not first.context
    assert tls.context is first.context  # the socket's context stays; its callback hands over
    value = metrics.registry.get_sample_value
    assert value("defender_proxy_listen_tls_reloads_total", {"listener": "gw", "result": "ok"}) == 1
    failed = {"listener": "gw", "result": "failed"}
    assert value("defender_proxy_listen_tls_reloads_total", failed) == 0
    expiry = value("defender_proxy_listen_tls_expiry_seconds", {"listener": "gw"})
    assert expiry == tls.served.not_after.timestamp()
    (line,) = captured_logs.lines("listen_tls reloaded")
    assert (line["listener"], line["serial"]) == ("gw", tls.served.serial)
    assert "CN=second" in line["subject"]
    key_body = second.private_key_pem.bytes().decode().splitlines()[1]
    assert key_body not in captured_logs.text


def test_a_half_written_pair_keeps_the_old_one_until_the_key_arrives(
    secret: SecretDir, ca: trustme.CA, captured_logs: LogCapture
) -> None:
    """A new certificate beside the old key fails to load: a warning, failed counted, the old
    pair still served; once the key is written too, the new pair serves."""
    metrics = Metrics()
    tls = ServerTls("gw", secret.files, metrics)
    old = tls.served
    new = issue(ca, "new")
    secret.overwrite("tls.crt", new.cert_chain_pems[0].bytes())
    assert tls.check() is False
    assert tls.served is old
    (warning,) = captured_logs.lines(
        "listen_tls reload failed: the certificate loaded before keeps serving"
    )
    assert warning["level"] == "warning"
    assert warning["problems"][0].startswith("listen_tls.key: the key in ")
    assert "CN=first" in warning["subject"]  # what keeps serving
    assert tls.check() is None  # the same broken pair is not tried (nor warned about) again
    secret.overwrite("tls.key", new.private_key_pem.bytes())
    assert tls.check() is True
    assert int(tls.served.serial, 16) == serial(new)
    value = metrics.registry.get_sample_value
    counted = {
        result: value(
            "defender_proxy_listen_tls_reloads_total", {"listener": "gw", "result": result}
        )
        for result in ("ok", "failed")
    }
    assert counted == {"ok": 1, "failed": 1}


def test_use_switches_files_or_keeps_the_old_ones(
    secret: SecretDir, ca: trustme.CA, tmp_path: Path
) -> None:
    """use() serves and watches other files; files that do not load leave everything as it was."""
    tls = ServerTls("gw", secret.files, Metrics())
    broken = ListenTls(secret.files.cert, str(tmp_path / "nothing.key"))
    assert tls.use(broken) is False
    assert tls.files == secret.files
    elsewhere = SecretDir(tmp_path / "elsewhere")
    leaf = issue(ca, "elsewhere")
    elsewhere.put(leaf)
    assert tls.use(elsewhere.files) is True
    assert (tls.files, int(tls.served.serial, 16)) == (elsewhere.files, serial(leaf))
    assert tls.check() is None
    rotated = issue(ca, "rotated")
    elsewhere.put(rotated)
    assert tls.reload() is True
    assert int(tls.served.serial, 16) == serial(rotated)


def test_a_pair_that_broke_before_start_is_an_error(secret: SecretDir, tmp_path: Path) -> None:
    """ServerTls refuses to start on files that no longer load, naming the key at fault."""
    with pytest.raises(PairError) as caught:
        ServerTls("gw", ListenTls(secret.files.cert, str(tmp_path / "gone.key")), Metrics())
    assert caught.value.problems == [("key", f"no such file: '{tmp_path / 'gone.key'}'")]


def test_check_config_says_which_listeners_serve_https(
    secret: SecretDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config marks the shorthand's listener (https) and fills the scheme column per
    upstream from the resolved listen_tls."""
    from proxy import cli

    pair = _pair(secret.files)
    shorthand = tmp_path / "one.yaml"
    shorthand.write_text(yaml.safe_dump({"listen_tls": pair, "listen": "127.0.0.1:8443"}))
    several = tmp_path / "two.yaml"
    upstreams = [{**ENTRY, "listen": "127.0.0.1:8443", "listen_tls": pair}, {**ENTRY, "name": "b"}]
    several.write_text(yaml.safe_dump({"upstreams": upstreams}))
    with mock.patch.dict(os.environ, {}, clear=True):
        assert cli.main(["check-config", str(shorthand)]) == 0
        assert cli.main(["check-config", str(several)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "listen 127.0.0.1:8443 (https)," in lines[0]
    assert [line.split()[:3] for line in lines[2:]] == [
        ["name", "listen", "scheme"],
        ["a", "127.0.0.1:8443", "https"],
        ["b", "127.0.0.1:0", "http"],
    ]
