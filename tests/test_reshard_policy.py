"""``parallel.reshard_after_forward``: the blocks FSDP2 leaves gathered after forward are the policy's.

A world of one (gloo) is enough: FSDP2 still swaps in unsharded parameters for a block's forward
and frees them after it unless told not to, which is what the estimate's gathered term counts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.parallelize import shard_model
from hpcllm.plan.memory.estimate import kept_gathered_blocks


@pytest.fixture(scope="module")
def world_of_one() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("policy", ["always", "never", 2])
def test_blocks_left_gathered_after_forward_follow_the_policy(world_of_one: None, policy: str | int) -> None:
    cfg = ModelConfig.from_name("tiny", seq_len=16, n_layers=5)
    pcfg = ParallelConfig(reshard_after_forward=policy)
    with torch.device("meta"):
        model = GPT(cfg)
    shard_model(model, pcfg, init_device_mesh("cpu", (1,)), torch.device("cpu"))
    model.to_empty(device="cpu")
    init_weights(model, 0)
    model.init_buffers(torch.device("cpu"))
    logits = model(torch.randint(0, cfg.vocab_size, (1, 16)))
    gathered = [all(not hasattr(p, "to_local") for p in block.parameters()) for block in model.blocks]
    # The last block always stays gathered (backward starts with it); the others as the policy says.
    assert gathered[-1] and sum(gathered[:-1]) == kept_gathered_blocks(pcfg, cfg.n_layers)
    assert gathered[:-1] == [not pcfg.reshards_after_forward(i, cfg.n_layers) for i in range(cfg.n_layers - 1)]
    assert sum(gathered[:-1]) == {"always": 0, "never": 4, 2: 2}[policy]
    logits.sum().backward()
