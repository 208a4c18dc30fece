"""The estimate's activation term against what autograd really saves (saved_tensors_hooks).

The engine runs a model three ways (hpcllm/engine/parallelize.py), each with its own dtypes: fp32;
BF_16 on one device (autocast over fp32 weights); BF_16 under FSDP2 (bf16 parameters, so a bf16
residual stream). Activations do not depend on how parameters are sharded, so the FSDP2 case is
built (``memory_audit.audit_model``) on a world of one with the engine's mixed-precision policy: the
same forward a rank of a multi-rank run executes. The issue asks for 15%; on torch 2.13 the estimate
is exact to a few bytes (the loss's scalar), so drift shows early: the tolerance is 2%.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.losses import cross_entropy_sum
from hpcllm.engine.memory_audit import AUDIT_MODES, audit_model, saved_activation_bytes
from hpcllm.plan.memory.activations import Numerics, activation_bytes

MODES = list(AUDIT_MODES)
AC = ["none", "full", "selective"]


@pytest.fixture(scope="module")
def world_of_one() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def measure(cfg: ModelConfig, mode: str, ac: str, mbs: int) -> tuple[int, int]:
    """(measured, estimated) saved-activation bytes of one forward + loss on CPU."""
    torch.manual_seed(0)
    pcfg = ParallelConfig(precision="FP_32" if mode == "fp32" else "BF_16", activation_checkpointing=ac, ac_every=2)
    model = audit_model(cfg, mode, pcfg)
    ids = torch.randint(0, cfg.vocab_size, (mbs, cfg.seq_len))
    labels = torch.randint(0, cfg.vocab_size, (mbs, cfg.seq_len))
    # The forward binds the model as it is now: the closure must not reach for the name deleted below.
    measured = saved_activation_bytes(lambda m=model: cross_entropy_sum(m(ids), labels, None), model)
    del model
    gc.collect()  # FSDP2's modules hold reference cycles: free this model before the next is built
    num = Numerics.of(pcfg.precision, mode == "bf16-fsdp2", "cpu")
    estimated = activation_bytes(
        cfg, micro_batch_size=mbs, seq_len=cfg.seq_len, num=num, checkpointing=ac, ac_every=pcfg.ac_every
    ).total
    return measured, estimated


@pytest.mark.parametrize("attention", ["sdpa", "math"])
@pytest.mark.parametrize("ac", AC)
@pytest.mark.parametrize("mode", MODES)
def test_tiny(world_of_one: None, mode: str, ac: str, attention: str) -> None:
    measured, estimated = measure(ModelConfig.from_name("tiny", seq_len=64, attention=attention), mode, ac, mbs=3)
    assert estimated == pytest.approx(measured, rel=0.02)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(activation="gelu", norm="layernorm", bias=True, pos_emb="learned", tie_embeddings=False),
        dict(n_kv_heads=None, tie_embeddings=False),
    ],
    ids=["gelu-layernorm-bias-learned", "mha-untied"],
)
@pytest.mark.parametrize("mode", MODES)
def test_tiny_variants(world_of_one: None, mode: str, overrides: dict) -> None:
    measured, estimated = measure(ModelConfig.from_name("tiny", seq_len=64, **overrides), mode, "none", mbs=2)
    assert estimated == pytest.approx(measured, rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("ac", ["none", "full"])
@pytest.mark.parametrize("mode", ["fp32", "bf16-fsdp2"])
def test_125m(world_of_one: None, mode: str, ac: str) -> None:
    """The 125m preset's shapes (12 layers, d 768, vocab 50304) at seq 256 to keep CPU time small
    (every term is linear in the sequence length with flash-style attention; benchmarks/memory_cpu.py
    checks seq 2048 and the autocast mode too, docs/memory.md)."""
    measured, estimated = measure(ModelConfig.from_name("125m", seq_len=256), mode, ac, mbs=1)
    assert estimated == pytest.approx(measured, rel=0.02)
