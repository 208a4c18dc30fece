"""Run under ``torchrun --nproc-per-node=4`` by test_engine_tensor_parallel.py: tensor parallelism.

``argv[1]``: a folder of run directories prepared by the test. In one process group, on every
rank, the engine's ``train`` runs:
- ``tp2-<precision>`` and ``tp4-<precision>`` (FP_32 and BF_16): 20 steps each;
- ``ckpt``: TP 2 x DP 2 for 4 steps, saving a checkpoint at the end; rank 0 then copies it into
  ``resume-dp4`` (FSDP over 4 ranks) and ``resume-tp4`` (TP 4), which resume it for a fifth step
  (DCP reshards the weights and AdamW's state to the new layout).
The test compares the losses each run writes to metrics.jsonl.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from hpcllm.config.loader import load_model
from hpcllm.config.training import TrainingConfig
from hpcllm.engine.distributed import barrier, init_distributed, shutdown_distributed
from hpcllm.engine.train import train
from hpcllm.rundir import RunDir


def run(folder: Path, env: object) -> None:
    cfg = load_model(TrainingConfig, folder / "run.yaml")
    code = train(cfg, RunDir(folder), env, resume=True, summary={})  # type: ignore[arg-type]
    assert code == 0, f"{folder.name}: exit {code}"
    barrier()


def main() -> None:
    root = Path(sys.argv[1])
    env = init_distributed("cpu")
    try:
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
