"""The probes' own table: per probe, every micro-batch size tried with its throughput and memory.

Probes (``hpcllm explore-batch``) are runs whose ``summary.json`` has ``kind: probe``; the scaling
table leaves them out, and this table shows what they measured, from their ``probe.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpcllm import runfiles
from hpcllm.rundir import RunDir

COLUMNS = [
    "Probe",
    "Model",
    "#GPUs",
    "Sharding",
    "AC",
    "Seq",
    "MBS",
    "Status",
    "Samples/s/GPU",
    "Peak GiB",
    "Estimate GiB",
    "Best",
]


def collect_probes(run_dirs: Iterable[RunDir], problems: list[str] | None = None) -> list[dict[str, Any]]:
    """One row (COLUMNS -> value) per (probe, micro-batch size tried) of ``run_dirs``, in the order tried.

    Takes the run directories the collector has already found (one walk of the results folder), and
    imports pydantic only when a probe is there: ``collect`` over 10,000 runs stays fast.
    """
    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        try:
            data = runfiles.read_json_object(run_dir.probe)
            from hpcllm.config.probe import ProbeReport

            report = ProbeReport.model_validate(data)
        except runfiles.MissingFile:
            continue
        except runfiles.RunFileProblem as exc:
            if problems is not None:
                problems.append(str(exc))
            continue
        except ValueError as exc:  # not a report (pydantic's ValidationError is a ValueError)
            if problems is not None:
                problems.append(f"{run_dir.probe}: not a probe report ({str(exc).splitlines()[0]})")
            continue
        ac = report.activation_checkpointing
        for trial in report.trials:
            rows.append(
                {
                    "Probe": report.run_id,
                    "Model": report.model,
                    "#GPUs": report.world_size,
                    "Sharding": report.sharding,
                    "AC": ac if ac != "selective" else f"selective/{report.ac_every}",
                    "Seq": report.seq_len,
                    "MBS": trial.mbs,
                    "Status": trial.status,
                    "Samples/s/GPU": None
                    if trial.samples_per_s_per_gpu is None
                    else round(trial.samples_per_s_per_gpu, 3),
                    "Peak GiB": None if trial.memory_gib is None else round(trial.memory_gib, 2),
                    "Estimate GiB": None if trial.estimate_gib is None else round(trial.estimate_gib, 2),
                    "Best": "*" if trial.mbs == report.best_mbs else "",
                }
            )
        if report.trying is not None:
            rows.append(
                {
                    "Probe": report.run_id,
                    "Model": report.model,
                    "#GPUs": report.world_size,
                    "Sharding": report.sharding,
                    "AC": ac,
                    "Seq": report.seq_len,
                    "MBS": report.trying,
                    "Status": "running" if report.status == "running" else "crashed",
                    "Best": "",
                }
            )
    return [{column: row.get(column) for column in COLUMNS} for row in rows]
