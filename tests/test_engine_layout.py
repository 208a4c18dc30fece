"""How the engine lays the model out over ranks, and the train step's own reductions."""

from __future__ import annotations

import pytest
import torch
from engine_support import run_probe

from hpcllm.config.training import ParallelConfig
from hpcllm.engine.parallelize import data_parallelism, describe_layout
from hpcllm.engine.step_reductions import token_weight_sum


class Mesh:
    """The one thing ``data_parallelism`` asks of a device mesh: how many ranks it spans."""

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks

    def size(self) -> int:
        return self.ranks


@pytest.mark.parametrize(
    ("sharding", "offload", "ranks", "expected"),
    [
        ("FULL_SHARD", False, 2, "fsdp"),
        ("HYBRID_SHARD", False, 4, "fsdp"),
        ("NO_SHARD", False, 2, "ddp"),
        ("NO_SHARD", True, 2, "fsdp"),  # CPU offload is FSDP2's
        ("FULL_SHARD", False, 1, "none"),
        ("FULL_SHARD", True, 1, "fsdp"),
    ],
)
def test_data_parallelism(sharding: str, offload: bool, ranks: int, expected: str) -> None:
    cfg = ParallelConfig(sharding=sharding, cpu_offload=offload)
    assert data_parallelism(cfg, Mesh(ranks)) == expected  # type: ignore[arg-type]


def test_layout_is_described_in_the_start_line_words() -> None:
    assert describe_layout(ParallelConfig(sharding="NO_SHARD"), Mesh(2)) == "DDP (NO_SHARD)"  # type: ignore[arg-type]
    assert describe_layout(ParallelConfig(sharding="FULL_SHARD"), Mesh(2)) == "FSDP2 FULL_SHARD"  # type: ignore[arg-type]
    assert describe_layout(ParallelConfig(), Mesh(1)) == "unsharded"  # type: ignore[arg-type]


def test_token_count_without_weights_needs_no_other_rank() -> None:
    """No process group exists here: a collective would leave the local count, not dp x local."""
    batches = [{"labels": torch.zeros(2, 8, dtype=torch.long), "loss_mask": None} for _ in range(3)]
    assert token_weight_sum(batches, dp_size=4, device=torch.device("cpu")) == 4 * 3 * 2 * 8


def test_token_weights_are_summed() -> None:
    mask = torch.tensor([[1.0, 0.5, 0.0, 0.0]])
    batches = [{"labels": torch.zeros(1, 4, dtype=torch.long), "loss_mask": mask} for _ in range(2)]
    assert token_weight_sum(batches, dp_size=1, device=torch.device("cpu")).item() == 3.0


@pytest.mark.integration
def test_no_shard_is_ddp_and_full_shard_follows_the_recipe_on_two_ranks() -> None:
    proc = run_probe("engine_layout_probe.py", timeout=300)
    assert proc.returncode == 0 and "probe ok" in proc.stdout, proc.stdout + proc.stderr
