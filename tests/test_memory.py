"""The memory estimate: checkpoint size, parameter layout, terms, phases and the fit search.

The byte-exact comparisons with live tensors are in tests/test_memory_activations.py (saved
activations, one process) and tests/test_memory_state.py (weights, gradients, optimizer, 2 ranks).
"""

from __future__ import annotations

import math

import pytest
import torch

from hpcllm.config.model import ModelConfig, preset_names
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.model import GPT
from hpcllm.plan.memory import GIB, MemorySpec, checkpoint_bytes, estimate_memory, largest_fitting_mbs
from hpcllm.plan.memory.layout import padded_shard_numel, shard_rows

VARIANTS = {
    "gelu-layernorm-bias-learned": dict(
        activation="gelu", norm="layernorm", bias=True, pos_emb="learned", tie_embeddings=False
    ),
    "mqa": dict(n_kv_heads=1),
    "mha-untied": dict(n_kv_heads=None, tie_embeddings=False),
}


def spec(name: str = "2.7b", mbs: int = 2, world: int = 8, per_node: int = 4, **parallel: object) -> MemorySpec:
    return MemorySpec(ModelConfig.from_name(name), ParallelConfig(**parallel), mbs, world, per_node)


def test_125m_checkpoint_matches_the_measured_save() -> None:
    # docs/performance.md: a 125m DCP checkpoint on disk is 1857 MiB.
    size_mib = checkpoint_bytes(ModelConfig.from_name("125m")) / 2**20
    assert abs(size_mib - 1857) < 2


def test_2_7b_checkpoint_is_about_32_gb() -> None:
    # 2.67 B parameters (tied embeddings, as the seed's 2.7B) x 12 bytes
    assert 31e9 < checkpoint_bytes(ModelConfig.from_name("2.7b")) < 33e9


@pytest.mark.parametrize("name", preset_names(), ids=preset_names())
def test_parameter_shapes_are_the_built_modules(name: str) -> None:
    cfg = ModelConfig.from_name(name)
    with torch.device("meta"):
        built = {n: tuple(p.shape) for n, p in GPT(cfg).named_parameters()}
    assert cfg.parameter_shapes() == built
    assert sum(math.prod(s) for s in built.values()) == cfg.n_params()


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_parameter_shapes_of_variants(overrides: dict) -> None:
    cfg = ModelConfig.from_name("tiny", **overrides)
    with torch.device("meta"):
        built = {n: tuple(p.shape) for n, p in GPT(cfg).named_parameters()}
    assert list(cfg.parameter_shapes().items()) == list(built.items())


@pytest.mark.parametrize("rows,group", [(509, 2), (512, 2), (7, 4), (3, 8), (50304, 16)])
def test_shards_follow_torch_chunk(rows: int, group: int) -> None:
    pieces = [c.shape[0] for c in torch.arange(rows).chunk(group)]
    pieces += [0] * (group - len(pieces))  # chunk returns fewer pieces when rows < group
    assert [shard_rows(rows, group, r) for r in range(group)] == pieces
    assert padded_shard_numel((rows, 3), group) == 3 * max(pieces)


def test_sharded_state_is_12_bytes_per_parameter_over_the_shard_group() -> None:
    est = estimate_memory(spec(world=8, sharding="FULL_SHARD"))
    n = ModelConfig.from_name("2.7b").n_params()
    assert est.term("weights").bytes == pytest.approx(4 * n / 8, rel=1e-4)
    assert est.term("gradients").bytes == est.term("weights").bytes
    n_tensors = len(ModelConfig.from_name("2.7b").parameter_shapes())
    assert est.term("optimizer").bytes == 2 * est.term("weights").bytes + 4 * n_tensors


@pytest.mark.parametrize("sharding,group", [("FULL_SHARD", 16), ("HYBRID_SHARD", 4), ("NO_SHARD", 1)])
def test_shard_group_by_sharding(sharding: str, group: int) -> None:
    est = estimate_memory(spec(world=16, per_node=4, sharding=sharding))
    assert est.term("weights").bytes == pytest.approx(4 * ModelConfig.from_name("2.7b").n_params() / group, rel=1e-3)


def test_hsdp_shard_size_overrides_ranks_per_node() -> None:
    a = estimate_memory(spec(world=16, sharding="HYBRID_SHARD", hsdp_shard_size=8))
    b = estimate_memory(spec(world=16, sharding="FULL_SHARD", per_node=8))
    assert a.term("weights").bytes == estimate_memory(spec(world=8, sharding="FULL_SHARD")).term("weights").bytes
    assert b.term("weights").bytes < a.term("weights").bytes


def test_activations_grow_linearly_with_mbs_and_checkpointing_cuts_them() -> None:
    one, two, three = (estimate_memory(spec(mbs=m)).term("activations").bytes for m in (1, 2, 3))
    assert three - two == two - one > 0.95 * one  # only the RoPE tables do not grow with the batch
    full = estimate_memory(spec(activation_checkpointing="full"))
    every2 = estimate_memory(spec(activation_checkpointing="selective", ac_every=2))
    none = estimate_memory(spec())
    assert full.term("activations").bytes < every2.term("activations").bytes < none.term("activations").bytes
    assert full.term("backward").bytes - none.term("backward").bytes == none.activations.block_full


def test_math_attention_costs_the_t_squared_scores() -> None:
    cfg = ModelConfig.from_name("125m")
    sdpa = estimate_memory(MemorySpec(cfg, ParallelConfig(), 1, 8, 4)).term("activations").bytes
    math_ = estimate_memory(MemorySpec(cfg.model_copy(update={"attention": "math"}), ParallelConfig(), 1, 8, 4))
    scores = cfg.n_layers * cfg.n_heads * cfg.seq_len**2 * 4  # fp32 probabilities, one per block
    assert math_.term("activations").bytes - sdpa > scores * 0.9


def test_cpu_offload_moves_the_sharded_state_to_the_host() -> None:
    on = estimate_memory(spec(cpu_offload=True))
    off = estimate_memory(spec())
    for name in ("weights", "gradients", "optimizer"):
        assert on.term(name).location == "host" and off.term(name).location == "device"
    assert on.host_bytes == sum(off.term(n).bytes for n in ("weights", "gradients", "optimizer"))
    assert on.peak_bytes < off.peak_bytes


def test_gradient_accumulation_keeps_gradients_through_the_next_forward() -> None:
    a = estimate_memory(spec(sharding="NO_SHARD", world=8))
    b = estimate_memory(MemorySpec(a.spec.model, a.spec.parallel, 2, 8, 4, grad_accum=4))
    assert b.peak_bytes - a.peak_bytes == pytest.approx(1.1 * a.term("gradients").bytes, rel=0.01)


def test_peak_is_the_larger_phase() -> None:
    """Replicated 2.7b at MBS 1: all fp32 gradients outweigh the activations -> backward end."""
    est = estimate_memory(spec(name="2.7b", mbs=1, sharding="NO_SHARD", activation_checkpointing="full"))
    assert est.phase == "backward end"
    assert est.formula.endswith("gradients + one block's activations + backward + overhead")
    sharded = estimate_memory(spec(name="2.7b", mbs=2))
    assert sharded.phase == "backward start"
    t = {x.name: x.bytes for x in sharded.terms}
    tensors = t["weights"] + t["optimizer"] + t["gathered"] + t["activations"] + t["loss"]
    assert sharded.peak_bytes == tensors + t["overhead"]


def test_single_device_bf16_counts_autocasts_weight_copies() -> None:
    cfg = ModelConfig.from_name("125m")
    bf16 = estimate_memory(MemorySpec(cfg, ParallelConfig(precision="BF_16"), 1, 1, 1))
    fp32 = estimate_memory(MemorySpec(cfg, ParallelConfig(precision="FP_32"), 1, 1, 1))
    matmul_params = cfg.n_params() - cfg.vocab_size * cfg.d_model - (2 * cfg.n_layers + 1) * cfg.d_model
    assert bf16.term("gathered").bytes == 2 * matmul_params
    assert fp32.term("gathered").bytes == 0


def test_distillation_adds_the_teacher() -> None:
    base = spec(name="125m", world=8)
    with_teacher = MemorySpec(base.model, base.parallel, 2, 8, 4, teacher=ModelConfig.from_name("1b"))
    est = estimate_memory(with_teacher)
    assert est.term("teacher").bytes == pytest.approx(4 * ModelConfig.from_name("1b").n_params() / 8, rel=1e-3)
    assert est.term("loss").bytes > estimate_memory(base).term("loss").bytes


def test_cpu_device_uses_the_cpu_overhead_and_no_fragmentation() -> None:
    cpu = estimate_memory(MemorySpec(ModelConfig.from_name("tiny"), ParallelConfig(), 8, 1, 1, device="cpu"))
    assert cpu.term("overhead").bytes < 0.5 * GIB
    tensors = sum(t.bytes for t in cpu.terms if t.name not in ("overhead", "gradients", "backward", "loss"))
    assert cpu.peak_bytes > tensors


@pytest.mark.parametrize("capacity", [16.0, 40.0, 64.0, 80.0])
def test_largest_fitting_mbs_is_the_boundary(capacity: float) -> None:
    s = spec(name="1b", world=4)
    best = largest_fitting_mbs(s, capacity)
    assert best >= 1
    assert estimate_memory(s.with_mbs(best)).fits(capacity)
    assert not estimate_memory(s.with_mbs(best + 1)).fits(capacity)


def test_largest_fitting_mbs_is_zero_when_nothing_fits() -> None:
    assert largest_fitting_mbs(spec(name="28b", world=1, per_node=1), 64.0) == 0


def test_estimator_is_torch_free() -> None:
    import subprocess
    import sys

    code = "import sys, hpcllm.plan.memory; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
