"""Run directories as the engine and the orchestrator leave them, for the collector's tests.

Written through the real models where there is one (``Manifest``), with the keys the engine writes
(docs/run-contract.md), so a test reads exactly what a finished run leaves on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpcllm.config.model import ModelConfig
from hpcllm.launch.manifest import Manifest, Restart, RunState
from hpcllm.rundir import RunDir


def engine_summary(preset: str = "2.7b", **overrides: Any) -> dict[str, Any]:
    """A completed run's summary.json for ``preset`` (numbers of a Leonardo 8-GPU run)."""
    m = ModelConfig.from_name(preset)
    summary = {
        "status": "completed",
        "run_id": "x",
        "model": preset,
        "n_params": m.n_params(),
        "n_params_flops": m.n_params_flops(),
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "seq_len": m.seq_len,
        "world_size": 8,
        "dp_size": 8,
        "micro_batch_size": 2,
        "grad_accum": 1,
        "global_batch_size": 16,
        "precision": "BF_16",
        "sharding": "FULL_SHARD",
        "activation_checkpointing": "none",
        "ac_every": 2,
        "compile": False,
        "gpu_type": "A100",
        "device": "cuda",
        "samples_per_s": 18.634,
        "tokens_per_s": 76324.9,
        "tokens_per_s_per_gpu": 9540.6,
        "mfu": 0.58483,
        "mfu_with_head": 0.6123,
        "hfu": 0.6123,
        "step_time_s": 0.8586,
        "mem_peak_gib": 41.27,
        "steps_measured": 50,
        "summary_warmup_steps": 10,
        "steps_completed": 60,
        "final_loss": 6.04321,
        "elapsed_s": 93.2,
        "wall_time_s": 3725.4,
    }
    summary.update(overrides)
    return summary


def table_summary(**overrides: Any) -> dict[str, Any]:
    """A completed run's summary.json with the scaling table's keys only (a 2.7B run on 8 A100s): the
    small hand-written summary the CLI and boundary tests damage or vary one key at a time."""
    summary: dict[str, Any] = {
        "status": "completed",
        "n_params": 2.7952768e9,
        "world_size": 8,
        "samples_per_s": 18.634,
        "grad_accum": 1,
        "micro_batch_size": 2,
        "global_batch_size": 16,
        "seq_len": 4096,
        "precision": "BF_16",
        "sharding": "FULL_SHARD",
        "activation_checkpointing": "none",
        "gpu_type": "A100",
        "mfu": 0.58471,
    }
    summary.update(overrides)
    return summary


def write_run(
    root: Path,
    run_id: str,
    *,
    experiment: str = "exp",
    cluster: str = "leonardo",
    summary: dict[str, Any] | None = None,
    state: RunState = RunState.COMPLETED,
    point: dict[str, Any] | None = None,
    restarts: int = 0,
    reason: str | None = None,
    metrics: list[dict[str, Any]] | None = None,
    log: str | None = None,
) -> RunDir:
    run = RunDir.of(root, experiment, cluster, run_id)
    run.path.mkdir(parents=True)
    run.config.write_text(f"run_id: {run_id}\n")
    manifest = Manifest(
        run_id=run_id,
        experiment=experiment,
        cluster=cluster,
        backend="slurm",
        state=state,
        job_id="4242",
        point=point or {},
        reason=reason,
    )
    manifest.restarts = [
        Restart(time="2025-01-01T00:00:00+00:00", reason="node failure", last_step=10 * (i + 1))
        for i in range(restarts)
    ]
    run.manifest.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2))
    if summary is not None:
        run.summary.write_text(json.dumps({**summary, "run_id": run_id}, indent=2))
    if metrics is not None:
        run.metrics.write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if log is not None:
        run.log_file("4242").write_text(log)
    return run


def loss_curve(steps: int, restart_at: int | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl lines; with ``restart_at``, a second attempt re-runs from that step."""
    lines = [{"step": s, "loss": 8.0 / (1 + s / 10), "restart": 0, "rerun": False} for s in range(1, steps + 1)]
    if restart_at is not None:
        lines = lines[: restart_at + 2]
        lines += [
            {"step": s, "loss": 8.0 / (1 + s / 10), "restart": 1, "rerun": s <= restart_at + 2}
            for s in range(restart_at + 1, steps + 1)
        ]
    return lines
