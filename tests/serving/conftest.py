"""Shard processes on loopback, started once and reloaded by each test."""

from __future__ import annotations

import pytest

from meshemu.serving.launch import ShardProcesses, start_loopback

POOL = 6  # enough for tp 3 x pp 2


@pytest.fixture(scope="session")
def shard_pool():
    """Addresses of POOL shard processes on 127.0.0.1 (a plan uses the first n)."""
    with ShardProcesses() as procs:
        yield start_loopback(procs, POOL, step_timeout_s=5.0)
