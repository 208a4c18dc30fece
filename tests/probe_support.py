"""A batch-size probe's report as the engine writes it (``hpcllm.config.probe.ProbeReport``)."""

from __future__ import annotations

from typing import Any

from hpcllm.config.probe import ProbeReport, ProbeTrial

# The run set-up a report records: 2.7b on 8 A100s unless a test says otherwise.
SETUP: dict[str, Any] = {
    "model": "2.7b",
    "n_params": 1,
    "seq_len": 4096,
    "world_size": 8,
    "sharding": "FULL_SHARD",
    "precision": "BF_16",
    "activation_checkpointing": "none",
    "ac_every": 2,
    "cpu_offload": False,
    "compile": False,
    "grad_accum": 1,
    "device": "cuda",
    "gpu_type": "A100",
    "memory_budget_gib": 64.0,
    "min_gain": 0.05,
}


def probe_report(run_id: str, trials: list[ProbeTrial], **fields: Any) -> ProbeReport:
    """A report of ``trials``; ``fields`` override the set-up or the status."""
    return ProbeReport(run_id=run_id, trials=trials, **{**SETUP, **fields})
