"""Tests for ``upstreams``: several origins in one process, and the one-origin shorthand."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxy import cli
from proxy.config import Address, ConfigError, Settings, Upstream, parse_settings
from proxy.upstreams import MAX_UPSTREAMS

TWO = [
    {
        "name": "defender",
        "origin": "https://api.security.microsoft.com",
        "listen": "127.0.0.1:8080",
        "catalogue": "defender",
    },
    {"name": "graph", "origin": "https://graph.microsoft.com", "listen": "127.0.0.1:8081"},
]


def problems_of(data: object, environ: dict[str, str] | None = None) -> list[str]:
    """The problems ``parse_settings`` reports for ``data`` (fails if it accepts it)."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, "contoso.yaml", environ or {})
    return caught.value.problems


def test_the_documented_example_gives_two_listeners() -> None:
    """The issue's example: two upstreams, each with its origin, listener and catalogue."""
    settings = parse_settings({"upstreams": TWO}, "contoso.yaml", {})
    assert settings.listeners == (
        Upstream(
            "defender", "https://api.security.microsoft.com", Address("127.0.0.1", 8080), "defender"
        ),
        Upstream("graph", "https://graph.microsoft.com", Address("127.0.0.1", 8081), "graph"),
    )


def test_the_shorthand_is_one_upstream_named_default() -> None:
    """upstream + listen are one upstream named default, its catalogue chosen from the host."""
    settings = parse_settings(
        {"upstream": "https://graph.microsoft.com", "listen": "127.0.0.1:9000"}, "c.yaml", {}
    )
    assert settings.upstreams == ()
    assert settings.listeners == (
        Upstream("default", "https://graph.microsoft.com", Address("127.0.0.1", 9000), "graph"),
    )
    assert Settings().listeners[0].catalogue == "defender"


def test_an_origin_is_normalised_like_upstream() -> None:
    """An entry's origin is parsed as upstream is: scheme and host lower-cased, default port gone."""
    entry = {
        "name": "eu",
        "origin": "HTTPS://EU.API.Security.Microsoft.com:443",
        "listen": "[::1]:0",
    }
    (upstream,) = parse_settings({"upstreams": [entry]}, "c.yaml", {}).listeners
    assert upstream.origin == "https://eu.api.security.microsoft.com"
    assert upstream.listen == Address("::1", 0)
    assert upstream.catalogue == "defender"


def test_every_problem_in_the_list_is_reported_with_its_path() -> None:
    """Bad values, missing and unknown keys are all reported at once, each under upstreams[i]."""
    problems = problems_of(
        {
            "upstreams": [
                {"name": "a b", "origin": "ftp://x", "listen": "nowhere", "catalogue": "mde"},
                {"origin": "https://x.example", "extra": 1},
                "graph",
            ]
        }
    )
    assert problems == [
        "contoso.yaml: upstreams[0].name: expected 1-64 characters of A-Z a-z 0-9 _ . -, got 'a b'",
        "contoso.yaml: upstreams[0].origin: expected an http:// or https:// URL, got 'ftp://x'",
        "contoso.yaml: upstreams[0].listen: expected host:port, got 'nowhere'",
        "contoso.yaml: upstreams[0].catalogue: expected one of defender, graph, all, got 'mde'",
        "contoso.yaml: upstreams[1].extra: unknown key (known: name, origin, listen, catalogue, listen_tls, credentials)",
        "contoso.yaml: upstreams[1].name: required: every upstream needs name",
        "contoso.yaml: upstreams[1].listen: required: every upstream needs listen",
        "contoso.yaml: upstreams[2]: expected a mapping, got a str",
    ]


def test_names_and_listen_ports_are_unique() -> None:
    """A second entry with a name or a listen port already taken is a problem naming the first."""
    again = {"name": "defender", "origin": "https://eu.api.security.microsoft.com"}
    problems = problems_of({"upstreams": [*TWO, {**again, "listen": "0.0.0.0:8081"}]})
    assert problems == [
        "contoso.yaml: upstreams[2].name: 'defender' is already upstreams[0].name",
        "contoso.yaml: upstreams[2].listen: 0.0.0.0:8081 shares port 8081 with upstreams[1].listen",
    ]


def test_port_zero_may_repeat() -> None:
    """Listeners on port 0 each get a free port from the OS, so several may ask for one."""
    entries = [
        {"name": name, "origin": "http://127.0.0.1:1", "listen": "127.0.0.1:0"} for name in "ab"
    ]
    settings = parse_settings({"upstreams": entries}, "c.yaml", {})
    assert [u.name for u in settings.listeners] == ["a", "b"]


def test_no_listener_may_take_the_admin_port() -> None:
    """An entry listening on admin_listen's port is a problem at that entry's path."""
    problems = problems_of({"upstreams": TWO, "admin_listen": "0.0.0.0:8081"})
    assert problems == [
        "contoso.yaml: upstreams[1].listen: 127.0.0.1:8081 and admin_listen (0.0.0.0:8081) "
        "share a port"
    ]


def test_the_list_has_bounds() -> None:
    """An empty list, a list past MAX_UPSTREAMS and anything not a list are refused."""
    assert problems_of({"upstreams": []}) == [
        "contoso.yaml: upstreams: expected at least one upstream, got an empty list"
    ]
    many = [
        {"name": f"u{i}", "origin": "http://127.0.0.1:1", "listen": "127.0.0.1:0"}
        for i in range(MAX_UPSTREAMS + 1)
    ]
    assert problems_of({"upstreams": many}) == [
        f"contoso.yaml: upstreams: at most {MAX_UPSTREAMS} upstreams, got {MAX_UPSTREAMS + 1}"
    ]
    assert problems_of({"upstreams": {"name": "x"}}) == [
        "contoso.yaml: upstreams: expected a list of upstreams, got a dict"
    ]


def test_upstreams_with_the_shorthand_is_a_problem_naming_both_keys() -> None:
    """upstream or listen given beside upstreams is refused, each naming both keys."""
    problems = problems_of({"upstreams": TWO, "upstream": "https://x.example", "listen": "bad"})
    assert problems == [
        "contoso.yaml: listen: expected host:port, got 'bad'",
        "contoso.yaml: upstream: upstream and upstreams are given together: upstream is the "
        "shorthand for one upstream; with upstreams, give each entry its own origin",
        "contoso.yaml: listen: listen and upstreams are given together: listen is the "
        "shorthand for one upstream; with upstreams, give each entry its own listen",
    ]


def test_the_shorthand_environment_beside_upstreams_is_a_problem() -> None:
    """DEFENDER_PROXY_UPSTREAM / _LISTEN cannot quietly override or be overridden by upstreams."""
    environ = {"DEFENDER_PROXY_LISTEN": "0.0.0.0:8080", "DEFENDER_PROXY_ADMIN_LISTEN": "[::]:9"}
    problems = problems_of({"upstreams": TWO}, environ)
    assert problems == [
        "DEFENDER_PROXY_LISTEN: listen and upstreams are given together: listen is the "
        "shorthand for one upstream; with upstreams, give each entry its own listen"
    ]


def test_no_secret_in_an_origin_reaches_a_problem() -> None:
    """An origin with a password is refused without the password in the message."""
    entry = {"name": "a", "origin": "https://user:s3cret@x.example", "listen": "127.0.0.1:0"}
    problems = problems_of({"upstreams": [entry]})
    assert problems == [
        "contoso.yaml: upstreams[0].origin: must not carry credentials; the proxy never sends its own"
    ]
    assert "s3cret" not in "".join(problems)


def test_check_config_shows_every_upstream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config prints one row per upstream: name, listen, scheme, catalogue, origin."""
    for variable in (
        "DEFENDER_PROXY_UPSTREAM",
        "DEFENDER_PROXY_LISTEN",
        "DEFENDER_PROXY_ADMIN_LISTEN",
    ):
        monkeypatch.delenv(variable, raising=False)
    path = tmp_path / "contoso.yaml"
    path.write_text(yaml.safe_dump({"upstreams": TWO}), encoding="utf-8")
    assert cli.main(["check-config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}: ok (2 upstreams, admin 0.0.0.0:9464)"
    assert [line.split() for line in lines[1:]] == [
        ["name", "listen", "scheme", "catalogue", "origin"],
        ["defender", "127.0.0.1:8080", "http", "defender", "https://api.security.microsoft.com"],
        ["graph", "127.0.0.1:8081", "http", "graph", "https://graph.microsoft.com"],
    ]
