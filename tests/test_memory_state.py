"""Weights, gradients and optimizer state per rank: the estimate against live FSDP2 shards (2 ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.integration
def test_sharded_state_bytes_equal_the_estimate_on_two_ranks() -> None:
    """FULL_SHARD, HYBRID_SHARD (groups of 2 and of 1) and NO_SHARD; see memory_state_probe.py."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(Path(__file__).with_name("memory_state_probe.py")),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "memory state ok" in proc.stdout, proc.stdout + proc.stderr
