"""The shared quota on a real three-master Redis Cluster, including a master going away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.quota.fallback import FallbackStore
from proxy.quota.redis_store import RedisStore
from proxy.quota.store import Quota, as_windows
from tests.support.ports import free_port
from tests.support.redis import command_line


def _free_ports(count: int) -> list[int]:
    # Cluster nodes also listen on port + 10000: pick ports whose bus port is free too.
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port < 55000 and port not in ports:
            ports.append(port)
    return ports


def _open_sockets() -> int:
    """Sockets this process holds open (other descriptors come and go with pytest's own doings)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


class Cluster:
    """Three redis-server processes in cluster mode, no replicas."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = _free_ports(3)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        assert shutil.which("redis-server"), (
            "redis-server is required (Debian package redis-server)"
        )
        assert cli, "redis-cli is required (Debian package redis-server)"
        for port in self.ports:
            node = self.directory / str(port)
            node.mkdir()
            self.procs[port] = subprocess.Popen(
                command_line(
                    port,
                    node,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node / "nodes.conf"),
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for port in self.ports:
            for _ in range(100):
                ping = subprocess.run(
                    [cli, "-p", str(port), "ping"], capture_output=True, text=True, check=False
                )
                if ping.stdout.strip() == "PONG":
                    break
                subprocess.run(["sleep", "0.05"], check=True)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
            timeout=30,
        )
        for _ in range(100):
            info = subprocess.run(
                [cli, "-p", str(self.ports[0]), "cluster", "info"],
                capture_output=True,
                text=True,
                check=False,
            )
            if "cluster_state:ok" in info.stdout:
                return
            subprocess.run(["sleep", "0.1"], check=True)
        raise AssertionError("the cluster did not become ready")

    def stop_node(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A fresh three-master cluster on free loopback ports."""
    started = Cluster(tmp_path)
    await asyncio.to_thread(started.start)
    try:
        yield started
    finally:
        started.stop()


async def test_admissions_on_a_cluster(cluster: Cluster) -> None:
    """All windows of a route live in one slot, so the one-script admission works on a cluster."""
    store = RedisStore(f"redis+cluster://127.0.0.1:{cluster.ports[0]}", timeout=2.0)
    quotas = [
        Quota(f"dp:{{test:route{i}}}", as_windows([(2, 60.0), (5, 3600.0)], 0.0)) for i in range(6)
    ]
    try:
        for quota in quotas:  # six routes spread over the three masters' slots
            decisions = [await store.admit(quota, f"m{i}", 0.0, 0.0, False) for i in range(3)]
            assert [d.admitted for d in decisions] == [True, True, False]
            assert decisions[1].remaining == (0, 3)
    finally:
        await store.close()


async def test_a_master_going_away_falls_back_to_the_local_share(cluster: Cluster) -> None:
    """With the master of a route's slot gone, admissions go on against the local share."""
    changes: list[bool] = []
    store = FallbackStore(
        RedisStore(f"redis+cluster://127.0.0.1:{cluster.ports[0]}", timeout=0.5),
        cooldown=30.0,
        expected_replicas=2,
        on_change=changes.append,
    )
    try:
        assert await store.warm()
        quota = Quota("dp:{test:lost}", as_windows([(4, 60.0)], 0.0))
        assert (await store.admit(quota, "before", 0.0, 0.0, False)).admitted
        owner = store.shared.client.get_node_from_key("dp:{test:lost}:w60000000")
        cluster.stop_node(owner.port)
        decisions = [await store.admit(quota, f"m{i}", 0.0, 0.0, False) for i in range(4)]
        # Local share 4 // 2 = 2; this replica already sent 1, and half of the 3 left is 2: one more.
        assert [d.admitted for d in decisions] == [True, False, False, False]
        assert changes == [True]
        assert store.in_fallback
    finally:
        await store.close()


async def test_closing_after_a_master_went_away_closes_every_connection(cluster: Cluster) -> None:
    """After redis-py gave up on a lost master, closing the store closes every node's connections."""
    before = _open_sockets()
    # A call budget longer than the client's own retries, so the admission ends in redis-py's
    # ConnectionError: the path after which the cluster client's aclose() alone closes nothing.
    store = FallbackStore(
        RedisStore(f"redis+cluster://127.0.0.1:{cluster.ports[0]}", timeout=0.5, deadline=10.0),
        cooldown=30.0,
        expected_replicas=2,
    )
    try:
        assert await store.warm()
        quota = Quota("dp:{test:closing}", as_windows([(4, 60.0)], 0.0))
        assert (await store.admit(quota, "before", 0.0, 0.0, False)).admitted
        assert _open_sockets() > before
        owner = store.shared.client.get_node_from_key("dp:{test:closing}:w60000000")
        cluster.stop_node(owner.port)
        assert (await store.admit(quota, "after", 0.0, 0.0, False)).admitted
        assert store.in_fallback
    finally:
        await store.close()
    assert _open_sockets() == before
