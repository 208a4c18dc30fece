"""Weights, gradients and optimizer state per rank: the estimate against live FSDP2 shards (2 ranks)."""

from __future__ import annotations

import pytest
from engine_support import run_probe


@pytest.mark.integration
def test_sharded_state_bytes_equal_the_estimate_on_two_ranks() -> None:
    """FULL_SHARD, HYBRID_SHARD (groups of 2 and of 1) and NO_SHARD; see memory_state_probe.py."""
    proc = run_probe("memory_state_probe.py", timeout=300)
    assert proc.returncode == 0 and "memory state ok" in proc.stdout, proc.stdout + proc.stderr
