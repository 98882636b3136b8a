"""The configs the benchmarks start the proxy with are valid under the config's bounds."""

from __future__ import annotations

import pytest
import yaml

from bench.batch import CONFIG as BATCH
from bench.quota_identities import config as identities_config
from bench.reload import config as reload_config
from bench.services import BENCH_THROTTLE
from bench.stalled import CONFIG as STALLED
from proxy.config import parse_settings


@pytest.mark.parametrize(
    "text",
    [
        BENCH_THROTTLE,
        STALLED,
        identities_config(6379, "bench"),
        BATCH,
        reload_config(999, "100/1m"),
        reload_config(0, "6/2s"),
    ],
    ids=["common", "stalled", "identities", "batch", "reload-most", "reload"],
)
def test_bench_config_is_valid(text: str) -> None:
    """A benchmark's proxy config passes the same checks as check-config."""
    parse_settings(yaml.safe_load(text), "bench", environ={})
