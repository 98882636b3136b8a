"""Which keys a reload applies and which need a restart: the comparison of two settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trustme
import yaml

from proxy.config import Settings, parse_settings
from proxy.reload import RESTART_ONLY, Changes, applicable, diff
from tests.idpkit import APP, TENANT
from tests.tlsfiles import SecretDir, issue

README = Path(__file__).resolve().parents[2] / "README.md"
OTHER_APP = "0ba0c3a5-1111-4b2d-9c1e-0000000000a2"

LIVE = [
    ("log_level: debug", "log_level"),
    ("timeouts: {connect: 2s}", "timeouts.connect"),
    ("timeouts: {read: 10s}", "timeouts.read"),
    ("timeouts: {pool: 1s}", "timeouts.pool"),
    ("timeouts: {caller: 5s}", "timeouts.caller"),
    ("limits: {max_body: 1MiB}", "limits.max_body"),
    ("limits: {error_body_cap: 64KiB}", "limits.error_body_cap"),
    ("limits: {request_buffer: 1KiB}", "limits.request_buffer"),
    ("limits: {batch_body: 2MiB}", "limits.batch_body"),
    ("limits: {caller_connections: 50}", "limits.caller_connections"),
    ("limits: {recent_errors: 0}", "limits.recent_errors"),
    ("allow_from: [10.0.0.0/8]", "allow_from"),
    ("rewrite_links: false", "rewrite_links"),
    ("throttle: {mode: shadow}", "throttle.mode"),
    ("throttle: {max_wait: 5s}", "throttle.max_wait"),
    ("throttle: {max_pause: 1m}", "throttle.max_pause"),
    ("throttle: {bulk_reserve: 0.5}", "throttle.bulk_reserve"),
    ("throttle: {routes: [{name: machines.get, limits: [50/1m]}]}", "throttle.routes"),
    ("throttle: {routes: [{name: machines.get, per: tenant}]}", "throttle.routes"),
    ("throttle: {routes: [{name: machines.get, priority: bulk}]}", "throttle.routes"),
    ("throttle: {identities: {max: 10}}", "throttle.identities.max"),
    (
        "throttle: {identities: {names: {contoso: 72f988bf-86f1-41af-91ab-2d7cd011db47}}}",
        "throttle.identities.names",
    ),
]
RESTART = [
    ("upstream: http://127.0.0.1:9", "upstream"),
    ("listen: 127.0.0.1:9999", "listen"),
    (
        "upstreams: [{name: a, origin: 'http://127.0.0.1:9', listen: '127.0.0.1:9998'}]",
        "upstreams",
    ),
    ("admin_listen: 127.0.0.1:9997", "admin_listen"),
    ("log_format: console", "log_format"),
    ("shutdown_grace: 1s", "shutdown_grace"),
    ("tls: {verify: false}", "tls.verify"),
    ("pool: {max_connections: 5}", "pool.max_connections"),
    ("pool: {keepalive: 1s}", "pool.keepalive"),
    ("timeouts: {caller_keepalive: 5s}", "timeouts.caller_keepalive"),
    ("limits: {max_header_size: 32KiB}", "limits.max_header_size"),
    ("throttle: {store: 'redis://127.0.0.1:6379/0'}", "throttle.store"),
    ("throttle: {namespace: other}", "throttle.namespace"),
    ("throttle: {store_timeout: 1s}", "throttle.store_timeout"),
    ("throttle: {margin: 1s}", "throttle.margin"),
    ("throttle: {fallback: {cooldown: 1s}}", "throttle.fallback.cooldown"),
    ("throttle: {fallback: {expected_replicas: 5}}", "throttle.fallback.expected_replicas"),
]
DEFAULTS = parse_settings(None, environ={})


def settings(text: str) -> Settings:
    return parse_settings(yaml.safe_load(text), environ={})


@pytest.mark.parametrize(("text", "key"), LIVE, ids=[key for _, key in LIVE])
def test_a_key_that_changes_live_is_applied(text: str, key: str) -> None:
    """Each of these keys differs as one that a reload applies, and the settings applied hold it."""
    loaded = settings(text)
    assert diff(DEFAULTS, loaded) == Changes((key,), ())
    assert applicable(DEFAULTS, loaded) == loaded


@pytest.mark.parametrize(("text", "key"), RESTART, ids=[key for _, key in RESTART])
def test_a_key_that_needs_a_restart_is_named_and_kept(text: str, key: str) -> None:
    """Each of these keys is named as needing a restart, and the settings applied keep the
    running value."""
    loaded = settings(text)
    assert diff(DEFAULTS, loaded) == Changes((), (key,))
    assert applicable(DEFAULTS, loaded) == DEFAULTS


def test_both_kinds_at_once_apply_only_the_live_ones() -> None:
    """A file changing a live key and two restart-only ones: the live one applies, the running
    listen address and store stay, and both are named."""
    loaded = settings(
        "listen: 127.0.0.1:9999\nlog_level: warning\n"
        "throttle: {store: 'redis://127.0.0.1:6379/0', max_wait: 2s}\n"
    )
    assert diff(DEFAULTS, loaded) == Changes(
        ("log_level", "throttle.max_wait"), ("listen", "throttle.store")
    )
    kept = applicable(DEFAULTS, loaded)
    assert (kept.listen, kept.throttle.store) == (DEFAULTS.listen, "memory")
    assert (kept.log_level, kept.throttle.max_wait) == ("warning", 2.0)


def test_the_same_settings_differ_in_nothing() -> None:
    """A file read again unchanged: nothing to apply, nothing to name."""
    text = "log_level: warning\nthrottle: {routes: [{name: machines.get, limits: [5/1s]}]}\n"
    assert diff(settings(text), settings(text)) == Changes((), ())


def test_the_readme_names_every_key_that_needs_a_restart() -> None:
    """The README's reload section lists exactly the keys that need a restart."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Reload without restart", 1)[1].split("\n## ", 1)[0]
    listed = re.search(r"Needs a restart[^:]*:(.*?)\n\n", section, re.S)
    assert listed is not None, "no 'Needs a restart' paragraph"
    named = re.findall(r"`([a-z_.]+)`", listed.group(1))
    assert sorted(named) == sorted(RESTART_ONLY)


def _pair(root: Path, name: str) -> SecretDir:
    secret = SecretDir(root / name)
    secret.put(issue(trustme.CA(), name))
    return secret


def _tls(secret: SecretDir) -> str:
    return f"listen_tls: {{cert: '{secret.files.cert}', key: '{secret.files.key}'}}\n"


def test_new_listen_tls_files_apply_live_and_a_scheme_switch_needs_a_restart(
    tmp_path: Path,
) -> None:
    """Other files for a listener's pair apply live; adding or dropping listen_tls would switch
    its scheme, so it is named as needing a restart and the running pair stays."""
    first, second = _pair(tmp_path, "first"), _pair(tmp_path, "second")
    running = settings(_tls(first))
    loaded = settings(_tls(second))
    assert diff(running, loaded) == Changes(("listen_tls",), ())
    assert applicable(running, loaded).listeners[0].listen_tls == second.files
    assert diff(running, DEFAULTS) == Changes((), ("listen_tls",))
    assert applicable(running, DEFAULTS).listeners[0].listen_tls == first.files
    assert diff(DEFAULTS, running) == Changes((), ("listen_tls",))
    assert applicable(DEFAULTS, running).listeners[0].listen_tls is None


def test_an_upstream_entry_takes_its_new_pair_while_the_listeners_stay(tmp_path: Path) -> None:
    """With upstreams, an entry's new pair (its own or the top-level one it inherits) applies
    live; the entries are otherwise the same, so upstreams needs no restart."""
    first, second = _pair(tmp_path, "first"), _pair(tmp_path, "second")
    entries = (
        "upstreams:\n"
        "  - {name: a, origin: 'http://127.0.0.1:9', listen: '127.0.0.1:9001'}\n"
        "  - {name: b, origin: 'http://127.0.0.1:9', listen: '127.0.0.1:9002'}\n"
    )
    running = settings(entries + _tls(first))
    loaded = settings(entries + _tls(second))
    assert diff(running, loaded) == Changes(("listen_tls",), ())
    assert [u.listen_tls for u in applicable(running, loaded).listeners] == [second.files] * 2
    moved = settings(entries.replace("9002", "9003") + _tls(second))
    assert diff(running, moved) == Changes(("listen_tls",), ("upstreams",))
    kept = applicable(running, moved)
    assert [str(u.listen) for u in kept.listeners] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert [u.listen_tls for u in kept.listeners] == [second.files] * 2


def _secret(root: Path, name: str) -> Path:
    path = root / name
    path.write_text(f"{name}-value\n", encoding="utf-8")
    return path


def _credentials(secret: Path, client: str = APP) -> str:
    return f"{{tenant_id: {TENANT}, client_id: {client}, client_secret_file: '{secret}'}}"


def test_new_credentials_need_a_restart_and_the_running_ones_stay(tmp_path: Path) -> None:
    """Credentials added, changed or dropped are named as needing a restart (the token sources
    are made at start), and the listener keeps what it holds; a live key beside them applies."""
    first, second = _secret(tmp_path, "first"), _secret(tmp_path, "second")
    running = settings(f"credentials: {_credentials(first)}\n")
    loaded = settings(f"credentials: {_credentials(second)}\nlog_level: debug\n")
    assert diff(running, loaded) == Changes(("log_level",), ("credentials",))
    kept = applicable(running, loaded)
    assert (kept.log_level, kept.listeners[0].credentials) == ("debug", running.credentials)
    assert diff(DEFAULTS, running) == Changes((), ("credentials",))
    assert applicable(DEFAULTS, running).listeners[0].credentials is None
    assert diff(running, DEFAULTS) == Changes((), ("credentials",))
    assert applicable(running, DEFAULTS).listeners[0].credentials == running.credentials


@pytest.mark.parametrize("own", [False, True], ids=["top-level", "entry"])
def test_credentials_of_an_upstream_entry_are_named_as_credentials(
    tmp_path: Path, own: bool
) -> None:
    """With upstreams, other credentials for an entry, whether the top-level section it
    inherits or its own, are named as credentials, not as upstreams (the listeners stay)."""
    secret = _secret(tmp_path, "secret")
    entry = "{name: a, origin: 'https://graph.microsoft.com', listen: '127.0.0.1:9001'"

    def text(client: str) -> str:
        if own:
            return f"upstreams:\n  - {entry}, credentials: {_credentials(secret, client)}}}\n"
        return f"upstreams:\n  - {entry}}}\ncredentials: {_credentials(secret, client)}\n"

    running, loaded = settings(text(APP)), settings(text(OTHER_APP))
    assert diff(running, loaded) == Changes((), ("credentials",))
    kept = applicable(running, loaded)
    assert [u.credentials for u in kept.listeners] == [u.credentials for u in running.listeners]
    assert kept.listeners[0].credentials is not None
    assert kept.listeners[0].credentials.client_id == APP
