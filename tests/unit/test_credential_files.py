"""Credential files that are not what they should be: each read is a ``CredentialFileError``
naming the file and never its contents, without blocking, and without a descriptor left open."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.credentials import (
    MAX_FILE,
    CredentialFileError,
    parse_credentials,
    read_certificate,
    read_secret,
)
from proxy.throttle_config import NestedValueError
from tests.credkit import link_dev_zero, make_directory, make_fifo

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "0ba0c3a5-1111-4b2d-9c1e-0000000000a1"
CONTENT = b"s3cret-in-the-file"


def _over_the_limit(path: Path) -> None:
    path.write_bytes(CONTENT + b"s" * MAX_FILE)


def _ten_megabytes(path: Path) -> None:
    path.write_bytes(CONTENT + b"s" * (10 << 20))


def _missing(path: Path) -> None:
    del path


def _symlink_loop(path: Path) -> None:
    path.symlink_to(path)


def _two_lines(path: Path) -> None:
    path.write_bytes(CONTENT + b"\n" + CONTENT + b"\n")


def _not_utf8(path: Path) -> None:
    path.write_bytes(b"\xff\xfe" + CONTENT)


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "a FIFO": (make_fifo, "is not a regular file"),
    "a directory": (make_directory, "is not a regular file"),
    "a symlink to /dev/zero": (link_dev_zero, "is not a regular file"),
    "one byte over the limit": (_over_the_limit, "is over the limit of 64 KiB"),
    "10 MB": (_ten_megabytes, "is over the limit of 64 KiB"),
    "missing": (_missing, "No such file or directory"),
    "a symlink to itself": (_symlink_loop, "symbolic links"),
    "two lines": (_two_lines, "holds more than one line"),
    "not UTF-8": (_not_utf8, "is not UTF-8 text"),
}


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_secret_file_is_refused_by_name_and_leaves_no_descriptor(
    tmp_path: Path, case: str
) -> None:
    """Read 50 times (a mint's worth of retries), the file is refused each time with a reason
    naming it and not its contents, and no descriptor stays open."""
    make, reason = HOSTILE[case]
    path = tmp_path / "client-secret"
    make(path)
    before = _open_descriptors()
    for _ in range(50):
        with pytest.raises(CredentialFileError) as caught:
            read_secret(str(path))
        assert str(path) in str(caught.value)
        assert reason in str(caught.value)
        assert CONTENT.decode() not in str(caught.value)
    assert _open_descriptors() == before


@pytest.mark.parametrize("case", ["a FIFO", "a directory", "a symlink to /dev/zero"])
def test_a_certificate_file_that_is_no_file_is_refused(tmp_path: Path, case: str) -> None:
    """A certificate file that is a FIFO, a directory or a device is refused as not a file."""
    make, reason = HOSTILE[case]
    path = tmp_path / "cert.pem"
    make(path)
    with pytest.raises(CredentialFileError, match=reason):
        read_certificate(str(path))


@pytest.mark.parametrize("key", ["client_secret_file", "federated_token_file", "certificate_file"])
def test_a_credential_file_that_is_amake_directory_is_a_config_problem(
    tmp_path: Path, key: str
) -> None:
    """A directory where a credential file should be is reported as a problem of its key, as
    every other unreadable file is, not an error that ends the load."""
    section = {"tenant_id": TENANT, "client_id": APP, key: str(tmp_path)}
    with pytest.raises(NestedValueError) as caught:
        parse_credentials(section)
    assert caught.value.problems == [(f".{key}", f"'{tmp_path}' is not a regular file")]
