"""The probes' own table: per probe, every micro-batch size tried with its throughput and memory.

Probes (``hpcllm explore-batch``) are runs whose ``summary.json`` has ``kind: probe``; the scaling
table leaves them out, and this table shows what they measured, from their ``probe.json``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from hpcllm.config.probe import ProbeReport
from hpcllm.fsutil import read_json
from hpcllm.rundir import find_run_dirs

COLUMNS = [
    "Probe", "Model", "#GPUs", "Sharding", "AC", "Seq", "MBS", "Status", "Samples/s/GPU", "Peak GiB",
    "Estimate GiB", "Best",
]


def collect_probes(root: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """One row per (probe, micro-batch size tried) under ``root``, in the order tried."""
    rows = []
    for run_dir in find_run_dirs(root):
        try:
            data = read_json(run_dir.probe)
            if data is None:
                continue
            report = ProbeReport.model_validate(data)
        except (ValueError, ValidationError) as exc:
            if problems is not None:
                problems.append(f"{run_dir.probe}: not a probe report ({str(exc).splitlines()[0]})")
            continue
        ac = report.activation_checkpointing
        for trial in report.trials:
            rows.append({
                "Probe": report.run_id, "Model": report.model, "#GPUs": report.world_size,
                "Sharding": report.sharding, "AC": ac if ac != "selective" else f"selective/{report.ac_every}",
                "Seq": report.seq_len, "MBS": trial.mbs, "Status": trial.status,
                "Samples/s/GPU": None if trial.samples_per_s_per_gpu is None else round(trial.samples_per_s_per_gpu, 3),
                "Peak GiB": None if trial.memory_gib is None else round(trial.memory_gib, 2),
                "Estimate GiB": None if trial.estimate_gib is None else round(trial.estimate_gib, 2),
                "Best": "*" if trial.mbs == report.best_mbs else "",
            })
        if report.trying is not None:
            rows.append({"Probe": report.run_id, "Model": report.model, "#GPUs": report.world_size,
                         "Sharding": report.sharding, "AC": ac, "Seq": report.seq_len, "MBS": report.trying,
                         "Status": "running" if report.status == "running" else "crashed", "Best": ""})
    return pd.DataFrame(rows, columns=COLUMNS)
