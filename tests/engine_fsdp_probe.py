"""Run under ``torchrun --nproc-per-node=2`` by test_engine_fsdp.py: FSDP2 checks that need >1 rank.

Asserts, on every rank: parameters are sharded DTensors; the sharded init equals a plain model's
init (so 1 and N ranks start from the same weights); under BF_16 (FP_16) the block weights are
bf16 (fp16) inside forward while master weights and gradients stay fp32 (FP_32: fp32 throughout).
FP_16: an inf in one rank's gradient shard makes *every* rank skip the step and lower its scale.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import OptimConfig, ParallelConfig, ScheduleConfig
from hpcllm.engine.distributed import init_distributed, shutdown_distributed
from hpcllm.engine.loss_scale import build_loss_scaler
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.optim import Scheduler, build_optimizer
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.engine.state import TrainState
from hpcllm.engine.train import train_step


def check(precision: str, expected: torch.dtype) -> None:
    env = init_distributed("cpu")
    cfg = ModelConfig.from_name("tiny", seq_len=32)
    pcfg = ParallelConfig(precision=precision)
    model = build_parallel_model(cfg, pcfg, build_mesh(pcfg, env), env.device, seed=3)
    plain = GPT(cfg)
    init_weights(plain, 3)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert p.to_local().numel() < q.numel(), f"{name} is not sharded"
        assert torch.equal(p.full_tensor(), q), f"{name}: sharded init differs from plain init"
    seen: list[torch.dtype] = []
    model.blocks[0].attn.qkv.register_forward_pre_hook(lambda mod, args: seen.append(mod.weight.dtype))
    model(torch.randint(0, 512, (2, 32))).float().sum().backward()
    assert seen == [expected], seen
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert model.blocks[0].attn.qkv.weight.grad.dtype == torch.float32


def check_overflow_on_one_rank_skips_everywhere() -> None:
    """The real train step on FSDP2 FP_16; rank 1 alone finds an inf in its gradient shard."""
    env = init_distributed("cpu")
    cfg = ModelConfig.from_name("tiny", seq_len=32)
    pcfg = ParallelConfig(precision="FP_16")
    model = build_parallel_model(cfg, pcfg, build_mesh(pcfg, env), env.device, seed=3)
    opt = build_optimizer(model, OptimConfig(), lr=1e-2)
    torch.manual_seed(env.rank)
    batches = [
        {"input_ids": idx[:, :-1], "labels": idx[:, 1:], "loss_mask": None} for idx in torch.randint(0, 512, (2, 2, 33))
    ]
    scaler = build_loss_scaler(pcfg)
    state = TrainState(
        model,
        opt,
        Scheduler(opt, base_lr=1e-2, total_steps=2, cfg=ScheduleConfig(name="constant")),
        iter(batches),
        loss_scaler=scaler,
    )  # type: ignore[arg-type]
    unscale = scaler.unscale_

    def poison_rank_1(params: list[torch.nn.Parameter]) -> None:
        unscale(params)
        if env.rank == 1:
            params[3].grad.to_local().view(-1)[0] = float("inf")

    scaler.unscale_ = poison_rank_1  # type: ignore[method-assign]
    before = [p.full_tensor().clone() for p in model.parameters()]
    result = train_step(state, grad_accum=1, dp_size=2, grad_clip=1.0, device=env.device)
    assert result.skipped and not math.isfinite(result.grad_norm), result
    assert scaler.scale == 2.0**15
    assert all(torch.equal(p.full_tensor(), b) for p, b in zip(model.parameters(), before, strict=True)), (
        "weights moved"
    )
    scaler.unscale_ = unscale  # type: ignore[method-assign]
    result = train_step(state, grad_accum=1, dp_size=2, grad_clip=1.0, device=env.device)
    assert not result.skipped and math.isfinite(result.grad_norm), result
    assert not all(torch.equal(p.full_tensor(), b) for p, b in zip(model.parameters(), before, strict=True))


if __name__ == "__main__":
    check("BF_16", torch.bfloat16)
    check("FP_16", torch.float16)
    check("FP_32", torch.float32)
    check_overflow_on_one_rank_skips_everywhere()
    if dist.get_rank() == 0:
        print("probe ok")
    shutdown_distributed()
