"""FSDP2: world-size independence of the loss, HSDP, mixed precision, CPU offload, compile."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from engine_support import make_store, run_engine, run_probe, write_run
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.fsdp_gloo import OWN_COLLECTIVES_ENV
from hpcllm.engine.model import GPT
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.errors import ConfigError

CPU = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))


@pytest.fixture
def world_of_one() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


def sharded(pcfg: ParallelConfig, **model: object) -> GPT:
    return build_parallel_model(
        ModelConfig.from_name("tiny", seq_len=32, **model), pcfg, build_mesh(pcfg, CPU), CPU.device, seed=3
    )


def test_one_rank_without_offload_is_a_plain_module(world_of_one: None) -> None:
    """FSDP only where it does something; on one rank BF_16 is autocast over fp32 weights."""
    model = sharded(ParallelConfig(precision="BF_16"))
    assert not isinstance(model, FSDPModule)
    assert not any(isinstance(p, DTensor) for p in model.parameters())
    assert model.head.weight is model.tok_emb.weight  # still tied after materialising from meta
    assert sum(p.numel() for p in model.parameters()) == model.cfg.n_params()
    out: list[torch.dtype] = []
    model.blocks[0].attn.qkv.register_forward_hook(lambda mod, args, y: out.append(y.dtype))
    model(torch.randint(0, 512, (2, 32))).float().sum().backward()
    assert out == [torch.bfloat16]
    assert model.blocks[0].attn.qkv.weight.grad.dtype == torch.float32
    fp32 = sharded(ParallelConfig(precision="FP_32"))
    assert fp32.autocast_dtype is None
    fp16 = sharded(ParallelConfig(precision="FP_16"))
    out.clear()
    fp16.blocks[0].attn.qkv.register_forward_hook(lambda mod, args, y: out.append(y.dtype))
    fp16(torch.randint(0, 512, (2, 32))).float().sum().backward()
    assert out == [torch.float16] and fp16.blocks[0].attn.qkv.weight.grad.dtype == torch.float32


@pytest.mark.integration
def test_fsdp_sharded_init_half_precision_policies_and_fp16_skips_on_two_ranks() -> None:
    proc = run_probe("engine_fsdp_probe.py", timeout=240)
    assert proc.returncode == 0 and "probe ok" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("offload", [True, False])
def test_cpu_offload_keeps_sharded_params_on_cpu(world_of_one: None, offload: bool) -> None:
    model = sharded(ParallelConfig(precision="FP_32", cpu_offload=offload))
    if offload:  # offload needs FSDP2 even on one rank
        for module in (model, model.blocks[0]):
            group = module._get_fsdp_state()._fsdp_param_group  # FSDP2 internals: the offload decision
            assert all(fp.offload_to_cpu for fp in group.fsdp_params)
    else:
        assert not isinstance(model, FSDPModule)
    local = [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]
    assert all(t.device.type == "cpu" for t in local)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 512, (2, 32))).sum().backward()
    opt.step()  # the optimizer runs on the offloaded shards
    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in model.parameters()]
    assert all(g.device.type == "cpu" for g in grads)


def test_hsdp_shard_size_must_divide_world() -> None:
    env = DistEnv(rank=0, world_size=4, local_rank=0, local_world_size=4, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="hsdp_shard_size: 3 does not divide the world size 4"):
        build_mesh(ParallelConfig(sharding="HYBRID_SHARD", hsdp_shard_size=3), env)


@pytest.mark.slow
def test_compiled_blocks_give_the_same_loss(world_of_one: None) -> None:
    idx = torch.randint(0, 512, (2, 32))
    eager = sharded(ParallelConfig(precision="FP_32"))
    compiled = sharded(ParallelConfig(precision="FP_32", compile=True))
    assert compiled.blocks[0].compute is not compiled.blocks[0]._compute
    out_c, out_e = compiled(idx), eager(idx)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-4)
    out_c.sum().backward()
    out_e.sum().backward()
    torch.testing.assert_close(
        compiled.blocks[0].attn.qkv.weight.grad, eager.blocks[0].attn.qkv.weight.grad, rtol=1e-3, atol=1e-4
    )


# --- multi-rank: the same global batch gives the same losses on 1, 2 and 4 ranks -----------------


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def grad_norms(run_dir: Path) -> list[float]:
    return [json.loads(line)["grad_norm"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_ranks(
    tmp_path: Path, store: Path, name: str, nproc: int, mbs: int, env: dict[str, str] | None = None, **parallel: object
) -> list[float]:
    cfg = write_run(
        tmp_path / name, store, train={"steps": 4, "micro_batch_size": mbs}, parallel={"precision": "FP_32", **parallel}
    )
    proc = run_engine(cfg, nproc, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["world_size"] == nproc and summary["global_batch_size"] == 4
    return losses(tmp_path / name)


@pytest.mark.integration
def test_fsdp_ranks_match_one_rank_on_the_same_global_batch(tmp_path: Path, store: Path) -> None:
    one = run_ranks(tmp_path, store, "one", 1, 4)
    full = run_ranks(tmp_path, store, "full", 2, 2, sharding="FULL_SHARD")
    no_shard = run_ranks(tmp_path, store, "noshard", 2, 2, sharding="NO_SHARD")
    hybrid = run_ranks(tmp_path, store, "hybrid", 4, 1, sharding="HYBRID_SHARD", hsdp_shard_size=2)
    assert full == pytest.approx(one, rel=1e-4)
    assert no_shard == pytest.approx(one, rel=1e-4)
    assert hybrid == pytest.approx(one, rel=1e-4)
    assert one[-1] != pytest.approx(one[0], rel=1e-3)  # training moved the loss
    # The global gradient norm, whichever ranks hold which part of the gradient (replicas counted once).
    reference = grad_norms(tmp_path / "one")
    for name in ("full", "noshard", "hybrid"):
        assert grad_norms(tmp_path / name) == pytest.approx(reference, rel=1e-4), name


@pytest.mark.integration
def test_fsdp2_own_collectives_match_one_rank(tmp_path: Path, store: Path) -> None:
    """As above with FSDP2's own collectives (the GPU code path), not engine/fsdp_gloo.py's."""
    own = {OWN_COLLECTIVES_ENV: "1"}
    one = run_ranks(tmp_path, store, "one", 1, 4)
    full = run_ranks(tmp_path, store, "full", 2, 2, env=own, sharding="FULL_SHARD")
    hybrid = run_ranks(tmp_path, store, "hybrid", 4, 1, env=own, sharding="HYBRID_SHARD", hsdp_shard_size=2)
    assert full == pytest.approx(one, rel=1e-4)
    assert hybrid == pytest.approx(one, rel=1e-4)
    reference = grad_norms(tmp_path / "one")
    for name in ("full", "hybrid"):
        assert grad_norms(tmp_path / name) == pytest.approx(reference, rel=1e-4), name


@pytest.mark.integration
def test_two_ranks_bf16_with_activation_checkpointing_and_accumulation(tmp_path: Path, store: Path) -> None:
    cfg = write_run(
        tmp_path / "r",
        store,
        train={"steps": 4, "micro_batch_size": 1, "grad_accum": 2},
        parallel={"precision": "BF_16", "activation_checkpointing": "selective", "cpu_offload": True},
    )
    proc = run_engine(cfg, 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_batch_size"] == 4
    assert summary["precision"] == "BF_16" and summary["activation_checkpointing"] == "selective"
    # The same training as plain fp32 on the same global batch (no AC, no offload, no accumulation):
    # bf16 compute moves the losses by < 1e-4 relative here; a NaN, a wrong recompute or a
    # mis-scaled accumulation would not pass.
    mixed = losses(tmp_path / "r")
    reference = run_ranks(tmp_path, store, "fp32", 2, 2)
    assert all(math.isfinite(x) for x in mixed), mixed
    assert mixed == pytest.approx(reference, rel=5e-4)
    assert mixed[-1] < mixed[0] - 0.1  # it trained


@pytest.mark.slow
@pytest.mark.integration
def test_two_ranks_compiled_with_ac_and_bf16_match_eager_fp32(tmp_path: Path, store: Path) -> None:
    eager = run_ranks(tmp_path, store, "eager", 2, 2)
    compiled = run_ranks(
        tmp_path, store, "compiled", 2, 2, compile=True, activation_checkpointing="selective", precision="BF_16"
    )
    assert compiled == pytest.approx(eager, rel=5e-3)  # bf16 compute vs fp32
