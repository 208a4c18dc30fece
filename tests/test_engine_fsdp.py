"""FSDP2: world-size independence of the loss, HSDP, mixed precision, CPU offload, compile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from engine_support import make_store, run_engine, write_run
from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.model import GPT, init_weights
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
    return build_parallel_model(ModelConfig.from_name("tiny", seq_len=32, **model), pcfg,
                                build_mesh(pcfg, CPU), CPU.device, seed=3)


def test_sharded_init_equals_plain_init(world_of_one: None) -> None:
    plain = GPT(ModelConfig.from_name("tiny", seq_len=32))
    init_weights(plain, 3)
    model = sharded(ParallelConfig(precision="FP_32"))
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p.full_tensor(), q), name
    idx = torch.randint(0, 512, (2, 32))
    torch.testing.assert_close(model(idx), plain(idx))


@pytest.mark.parametrize("precision,dtype", [("BF_16", torch.bfloat16), ("FP_32", torch.float32)])
def test_mixed_precision_policy_casts_block_params_inside_forward(world_of_one: None, precision: str,
                                                                 dtype: torch.dtype) -> None:
    model = sharded(ParallelConfig(precision=precision))
    seen: list[torch.dtype] = []
    model.blocks[0].attn.qkv.register_forward_pre_hook(lambda mod, args: seen.append(mod.weight.dtype))
    logits = model(torch.randint(0, 512, (2, 32)))
    assert seen == [dtype]
    logits.float().sum().backward()
    # The sharded (master) parameters and their gradients stay fp32.
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert model.blocks[0].attn.qkv.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("offload", [True, False])
def test_cpu_offload_keeps_sharded_params_on_cpu(world_of_one: None, offload: bool) -> None:
    model = sharded(ParallelConfig(precision="FP_32", cpu_offload=offload))
    for module in (model, model.blocks[0]):
        group = module._get_fsdp_state()._fsdp_param_group  # FSDP2 internals: the offload decision
        assert all(fp.offload_to_cpu == offload for fp in group.fsdp_params)
    assert all(p.to_local().device.type == "cpu" for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 512, (2, 32))).sum().backward()
    opt.step()  # the optimizer runs on the offloaded shards
    assert all(p.grad.to_local().device.type == "cpu" for p in model.parameters())


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
    torch.testing.assert_close(compiled(idx), eager(idx), rtol=1e-4, atol=1e-4)


# --- multi-rank: the same global batch gives the same losses on 1, 2 and 4 ranks -----------------


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_ranks(tmp_path: Path, store: Path, name: str, nproc: int, mbs: int, **parallel: object) -> list[float]:
    cfg = write_run(tmp_path / name, store, train={"steps": 4, "micro_batch_size": mbs},
                    parallel={"precision": "FP_32", **parallel})
    proc = run_engine(cfg, nproc)
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


@pytest.mark.integration
def test_two_ranks_bf16_with_activation_checkpointing_and_accumulation(tmp_path: Path, store: Path) -> None:
    cfg = write_run(tmp_path / "r", store, train={"steps": 3, "micro_batch_size": 1, "grad_accum": 2},
                    parallel={"precision": "BF_16", "activation_checkpointing": "selective", "cpu_offload": True})
    proc = run_engine(cfg, 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_batch_size"] == 4
    assert summary["precision"] == "BF_16" and summary["activation_checkpointing"] == "selective"
