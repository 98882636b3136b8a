"""Credentials refuse an upstream that would carry the minted tokens unencrypted across a network."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, parse_settings
from tests.idpkit import APP, DEFENDER, TENANT


def _config(upstream: str, secret: Path) -> dict[str, object]:
    section = {"tenant_id": TENANT, "client_id": APP, "client_secret_file": str(secret)}
    return {"upstream": upstream, "credentials": {**section, "scope": DEFENDER}}


@pytest.mark.parametrize("upstream", ["http://10.0.0.5:8000", "http://api.example.com"])
def test_plain_http_beyond_this_host_is_refused(upstream: str, tmp_path: Path) -> None:
    """An http:// upstream on another host with credentials is a problem naming the origin."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        parse_settings(_config(upstream, secret), "c.yaml", environ={})
    assert "plain HTTP beyond this host" in str(caught.value)
    assert "s3cret-value" not in str(caught.value)


@pytest.mark.parametrize(
    "upstream", ["http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9"]
)
def test_plain_http_on_loopback_is_accepted(upstream: str, tmp_path: Path) -> None:
    """A loopback http:// upstream (the simulator, a local relay) may hold credentials."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value", encoding="utf-8")
    settings = parse_settings(_config(upstream, secret), "c.yaml", environ={})
    assert settings.listeners[0].credentials is not None
