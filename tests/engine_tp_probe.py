"""Run under ``torchrun --nproc-per-node=4`` by test_engine_tensor_parallel.py: tensor parallelism.

``argv[1]``: a folder of run directories prepared by the test. In one process group, on every
rank, the engine's ``train`` runs:
- ``tp2-<precision>`` and ``tp4-<precision>`` (FP_32 and BF_16): 20 steps each;
- ``ckpt``: TP 2 x DP 2 for 4 steps, saving a checkpoint at the end; rank 0 then copies it into
  ``resume-dp4`` (FSDP over 4 ranks) and ``resume-tp4`` (TP 4), which resume it for a fifth step
  (DCP reshards the weights and AdamW's state to the new layout).
The test compares the losses each run writes to metrics.jsonl. Before them, the memory estimate's
activations under TP 2 and TP 4 (fp32 and bf16, with and without checkpointing) are checked
against what autograd saves on each rank (``saved_activation_bytes``), within 2 %.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from hpcllm.config.loader import load_model
from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig, TrainingConfig
from hpcllm.engine.distributed import DistEnv, barrier, init_distributed, shutdown_distributed
from hpcllm.engine.losses import cross_entropy_sum
from hpcllm.engine.memory_audit import saved_activation_bytes
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.engine.trainer import train
from hpcllm.plan.memory import MemorySpec, estimate_memory
from hpcllm.rundir import RunDir


def check_activation_estimate(env: DistEnv) -> None:
    """The estimate's activations of one TP rank against the bytes autograd saves there."""
    cfg = ModelConfig.from_name("tiny", seq_len=256, n_kv_heads=None, d_model=128, vocab_size=256)
    ids, labels = torch.randint(0, 256, (2, 2, 256))  # the same on every rank (default seed)
    for tp in (2, 4):
        for precision in ("FP_32", "BF_16"):
            for ac in ("none", "full"):
                par = ParallelConfig.model_validate(
                    {"precision": precision, "tensor_parallel": tp, "activation_checkpointing": ac}
                )
                model = build_parallel_model(cfg, par, build_mesh(par, env), env.device, 0)
                measured = saved_activation_bytes(lambda m=model: cross_entropy_sum(m(ids), labels, None), model)
                spec = MemorySpec(cfg, par, 2, world_size=env.world_size, ranks_per_node=4, device="cpu")
                estimated = estimate_memory(spec).activations.total
                assert abs(estimated / measured - 1) < 0.02, (tp, precision, ac, estimated, measured)


def run(folder: Path, env: object) -> None:
    cfg = load_model(TrainingConfig, folder / "run.yaml")
    code = train(cfg, RunDir(folder), env, resume=True, summary={})  # type: ignore[arg-type]
    assert code == 0, f"{folder.name}: exit {code}"
    barrier()


def main() -> None:
    root = Path(sys.argv[1])
    env = init_distributed("cpu")
    try:
        check_activation_estimate(env)
        for name in ("tp2-FP_32", "tp4-FP_32", "tp2-BF_16", "tp4-BF_16", "ckpt"):
            run(root / name, env)
        for name in ("resume-dp4", "resume-tp4"):
            if env.rank == 0:
                shutil.copytree(root / "ckpt" / "checkpoints", root / name / "checkpoints")
            barrier()
            run(root / name, env)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
