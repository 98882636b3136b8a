"""The lock (requirements/*.txt, compiled by `make lock`): it satisfies pyproject.toml, its three
sets agree with each other, every pin is exact and hashed, and it is what this venv runs."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements"
_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?P<options>.*)$")


def _pins(name: str) -> dict[str, tuple[str, int]]:
    """Canonical package name -> (pinned version, number of sha256 hashes) in one lock file."""
    text = (LOCK / name).read_text(encoding="utf-8").replace("\\\n", " ")
    pins: dict[str, tuple[str, int]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        entry = _ENTRY.match(line)
        assert entry, f"requirements/{name}: not an exact pin: {line[:80]!r}"
        hashes = entry["options"].count("--hash=sha256:")
        pins[canonicalize_name(entry["name"])] = (entry["version"], hashes)
    return pins


def _pyproject() -> dict[str, list[str]]:
    """The requirement strings of each lock file's source in pyproject.toml."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    runtime: list[str] = data["project"]["dependencies"]
    dev: list[str] = data["project"]["optional-dependencies"]["dev"]
    build: list[str] = data["build-system"]["requires"]
    return {"runtime.txt": runtime, "dev.txt": runtime + dev, "build.txt": build}


@pytest.mark.parametrize("lock", ["runtime.txt", "dev.txt", "build.txt"])
def test_every_requirement_is_locked_within_its_range(lock: str) -> None:
    """Each requirement pyproject.toml states for Linux is pinned, at a version it allows."""
    pins = _pins(lock)
    for text in _pyproject()[lock]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{text} is not in requirements/{lock}: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {name}=={version}, outside {text}: run `make lock`"
        )


@pytest.mark.parametrize("lock", ["runtime.txt", "dev.txt", "build.txt"])
def test_every_pin_carries_its_hashes(lock: str) -> None:
    """Every locked package has at least one sha256, so `pip install --require-hashes` takes it."""
    pins = _pins(lock)
    assert pins
    assert [name for name, (_, hashes) in pins.items() if hashes == 0] == []


@pytest.mark.parametrize("lock", ["runtime.txt", "build.txt"])
def test_the_runtime_and_build_sets_keep_the_dev_pins(lock: str) -> None:
    """What the image ships and what builds it are pinned as the tests run them."""
    dev = {name: version for name, (version, _) in _pins("dev.txt").items()}
    pins = {name: version for name, (version, _) in _pins(lock).items()}
    shared = pins.keys() & dev.keys()
    assert {name: pins[name] for name in shared} == {name: dev[name] for name in shared}
    if lock == "runtime.txt":
        assert pins.keys() <= dev.keys()


def test_this_environment_runs_the_locked_versions() -> None:
    """Every package of the dev and build locks is installed here at exactly its pinned version."""
    wrong: dict[str, tuple[str, str | None]] = {}
    for lock in ("dev.txt", "build.txt"):
        for name, (version, _) in _pins(lock).items():
            try:
                installed: str | None = metadata.version(name)
            except metadata.PackageNotFoundError:
                installed = None
            if installed != version:
                wrong[name] = (version, installed)
    assert wrong == {}, "installed differently from the lock (locked, installed): run `make test`"
