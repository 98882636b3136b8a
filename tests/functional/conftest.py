"""Fixtures of the functional tests of the credential the proxy holds: the identity provider's
files, and the proxy holding a secret in front of a recording upstream (``tests.credkit``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import LogCapture
from tests.credkit import Front, holding
from tests.idpkit import Files, write_files


@pytest.fixture
def files(tmp_path: Path) -> Files:
    """The provider's TLS pair and the app's certificates."""
    return write_files(tmp_path)


@pytest.fixture
async def front(files: Files, tmp_path: Path, captured_logs: LogCapture) -> AsyncIterator[Front]:
    """The proxy holding a secret, in front of the recording upstream; nothing minted yet."""
    async with holding(files, tmp_path, captured_logs) as held:
        yield held
