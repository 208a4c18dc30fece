"""Run under ``torchrun --nproc-per-node=2`` by test_engine_fsdp.py: FSDP2 checks that need >1 rank.

Asserts, on every rank: parameters are sharded DTensors; the sharded init equals a plain model's
init (so 1 and N ranks start from the same weights); under BF_16 the block weights are bf16 inside
forward while master weights and gradients stay fp32 (FP_32: fp32 throughout).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.distributed import init_distributed, shutdown_distributed
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.parallelize import build_mesh, build_parallel_model


def check(precision: str, expected: torch.dtype) -> None:
    env = init_distributed("cpu")
    cfg = ModelConfig.from_name("tiny", seq_len=32)
    pcfg = ParallelConfig(precision=precision)
    model = build_parallel_model(cfg, pcfg, build_mesh(pcfg, env), env.device, seed=3)
    plain = GPT(cfg)
    init_weights(plain, 3)
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert p.to_local().numel() < q.numel(), f"{name} is not sharded"
        assert torch.equal(p.full_tensor(), q), f"{name}: sharded init differs from plain init"
    seen: list[torch.dtype] = []
    model.blocks[0].attn.qkv.register_forward_pre_hook(lambda mod, args: seen.append(mod.weight.dtype))
    model(torch.randint(0, 512, (2, 32))).float().sum().backward()
    assert seen == [expected], seen
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert model.blocks[0].attn.qkv.weight.grad.dtype == torch.float32


if __name__ == "__main__":
    check("BF_16", torch.bfloat16)
    check("FP_32", torch.float32)
    if dist.get_rank() == 0:
        print("probe ok")
    shutdown_distributed()
