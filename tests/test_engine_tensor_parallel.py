"""Tensor parallelism (parallel.tensor_parallel): equal losses to one rank, resharding resumes, and
the memory estimate's activations per TP rank (checked inside engine_tp_probe.py).

Every run trains the tiny model with MHA (TP splits whole query/key/value heads) on real text, a
global batch of 8 sequences of 32 tokens, gradient accumulation and full activation checkpointing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from engine_support import REPO, make_store, run_engine, torchrun, write_run

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig

MODEL = {"preset": "tiny", "seq_len": 32, "n_kv_heads": None}
STEPS = 20


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _write(
    root: Path, store: Path, name: str, *, precision: str, tp: int, grad_accum: int, hsdp: bool = False, **extra: Any
) -> Path:
    """A run of GBS 8 = MBS 2 x ``grad_accum`` x (ranks / tp); ``hsdp``: HYBRID_SHARD, shard groups of 1."""
    sharding = {"sharding": "HYBRID_SHARD", "hsdp_shard_size": 1} if hsdp else {}
    run_dir = root / name
    write_run(
        run_dir,
        store,
        model=MODEL,
        train={"steps": STEPS, "micro_batch_size": 2, "grad_accum": grad_accum, "summary_warmup_steps": 1},
        parallel={"precision": precision, "activation_checkpointing": "full", "tensor_parallel": tp, **sharding},
        **extra,
    )
    return run_dir


@pytest.mark.integration
def test_tensor_parallel_matches_one_rank_and_checkpoints_reshard(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    for precision in ("FP_32", "BF_16"):
        _write(tmp_path, store, f"one-{precision}", precision=precision, tp=1, grad_accum=4)
        # TP 2 x DP 2: FULL_SHARD in fp32, HSDP (2 replicas of shard groups of 1) in bf16.
        _write(tmp_path, store, f"tp2-{precision}", precision=precision, tp=2, grad_accum=2, hsdp=precision == "BF_16")
        _write(tmp_path, store, f"tp4-{precision}", precision=precision, tp=4, grad_accum=4)  # TP 4 x DP 1
    ckpt = {"at_end": True}
    _write(tmp_path, store, "ckpt", precision="FP_32", tp=2, grad_accum=2, checkpoint=ckpt)
    for name, tp, accum in (("resume-dp4", 1, 1), ("resume-tp4", 4, 4)):
        _write(tmp_path, store, name, precision="FP_32", tp=tp, grad_accum=accum, checkpoint=ckpt)
    for name, steps in (("ckpt", 4), ("resume-dp4", 5), ("resume-tp4", 5)):
        path = tmp_path / name / "run.yaml"
        path.write_text(path.read_text().replace(f"steps: {STEPS}", f"steps: {steps}"))

    for precision in ("FP_32", "BF_16"):
        proc = run_engine(tmp_path / f"one-{precision}" / "run.yaml", 1)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(
        [*torchrun(4), str(REPO / "tests" / "engine_tp_probe.py"), str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    for layout in ("FULL_SHARD, TP 2 x DP 2", "HYBRID_SHARD, TP 2 x DP 2", "FULL_SHARD, TP 4 x DP 1"):
        assert layout in proc.stdout  # the start line names the layout

    # fp32: the same sums in another order; bf16: one rank autocasts while FSDP2 casts the weights.
    for precision, rel in (("FP_32", 1e-5), ("BF_16", 2e-3)):  # bf16 differed by up to 3e-4
        one = _losses(tmp_path / f"one-{precision}")
        assert len(one) == STEPS and one[STEPS] < one[1] - 0.3  # it learns
        for tp in (2, 4):
            got = _losses(tmp_path / f"tp{tp}-{precision}")
            for step in range(1, STEPS + 1):
                assert math.isclose(got[step], one[step], rel_tol=rel), (precision, tp, step, got[step], one[step])

    # Saved under TP 2 x DP 2 at step 4, the fifth step under DP 4 and under TP 4 has the loss the
    # uninterrupted TP 2 x DP 2 run had at step 5: weights, AdamW moments and data position resharded.
    uninterrupted = _losses(tmp_path / "tp2-FP_32")[5]
    for name in ("resume-dp4", "resume-tp4"):
        resumed = _losses(tmp_path / name)
        assert set(resumed) == {5}, f"{name} did not resume at step 4: {sorted(resumed)}"
        assert math.isclose(resumed[5], uninterrupted, rel_tol=1e-5), (name, resumed[5], uninterrupted)
    summary = json.loads((tmp_path / "tp2-FP_32" / "summary.json").read_text())
    assert (summary["tensor_parallel"], summary["dp_size"], summary["world_size"]) == (2, 2, 4)


def test_tensor_parallel_is_refused_where_it_cannot_split() -> None:
    """TP splits whole heads and stays inside a node; NO_SHARD (DDP) takes no DTensor parameters."""
    mha = ModelConfig.from_name("tiny", n_kv_heads=None)
    assert ParallelConfig(tensor_parallel=2).tensor_parallel_problem(mha, 4) is None
    assert "GPUs per node" in (ParallelConfig(tensor_parallel=8).tensor_parallel_problem(mha, 4) or "")
    assert "heads" in (ParallelConfig(tensor_parallel=8).tensor_parallel_problem(mha, 8) or "")  # 4 heads
    assert "grouped K/V" in (ModelConfig.from_name("tiny").tensor_parallel_problem(2) or "")
    assert "52 heads" in (ModelConfig.from_name("28b").tensor_parallel_problem(8) or "")
    assert ModelConfig.from_name("28b").tensor_parallel_problem(4) is None
    with pytest.raises(ValueError, match="NO_SHARD"):
        ParallelConfig(tensor_parallel=2, sharding="NO_SHARD")
    with pytest.raises(ValueError, match="1, 2, 4 or 8"):
        ParallelConfig.model_validate({"tensor_parallel": 3})
    assert "tensor_parallel" not in ParallelConfig().model_dump()  # run ids of TP-1 runs unchanged
