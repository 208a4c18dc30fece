"""Where a grid point's step time comes from, best first: this cluster's finished runs of the same
configuration, the seed's published row, the scaling fit of the setup, the FLOPs at a stated MFU.

``hpcllm plan`` and ``hpcllm submit`` price points with it (``hpcllm.plan.cost``). The first three
read results, so they live here; the last is pure arithmetic in ``hpcllm.plan.cost``. The MFU of the
last is the user's (``--mfu``), else the median MFU of the seed's rows on the same GPU type (the
only MFU figures with a source), else there is none and the point is priced at its time limit.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hpcllm.collect.fits import Point, SetupFit, SetupKey, fit_groups, fit_seed, group_records
from hpcllm.collect.records import RunRecord
from hpcllm.collect.table import completed_records
from hpcllm.config.cluster import ClusterProfile
from hpcllm.config.experiment import RunSpec
from hpcllm.plan.cost import SOURCE_FIT, SOURCE_MEASURED, SOURCE_SEED, StepTime, flops_step_time
from hpcllm.plan.references import seed_key_of_spec
from hpcllm.plan.seed import SeedKey, best_row, key_of_summary, seed_rows


def seed_mfu(gpu_type: str) -> float | None:
    """The median MFU of the seed's rows on ``gpu_type`` (None when the seed ran none)."""
    values = [r.mfu for r in seed_rows() if r.gpu_type.upper() == gpu_type.upper()]
    return statistics.median(values) if values else None


@dataclass
class StepTimes:
    """Step-time lookups for one cluster, built once from a results folder."""

    cluster: ClusterProfile
    measured: dict[SeedKey, list[RunRecord]]
    fits: dict[tuple[SetupKey, int], SetupFit]  # setup without experiment -> fit (ours first, then the seed's)
    mfu: float | None
    mfu_source: str
    completed: set[str]  # run ids already completed (submit skips them)

    @classmethod
    def build(cls, cluster: ClusterProfile, results_root: Path | None, mfu: float | None = None) -> StepTimes:
        records = completed_records(results_root) if results_root is not None and results_root.is_dir() else []
        ours = [r for r in records if r.cluster == cluster.name]
        measured: dict[SeedKey, list[RunRecord]] = {}
        for record in ours:
            key = key_of_summary(record.cluster, record.summary or {})
            if key is not None and isinstance((record.summary or {}).get("step_time_s"), (int, float)):
                measured.setdefault(key, []).append(record)
        fits: dict[tuple[SetupKey, int], SetupFit] = {}
        seed_fits = [f for f in fit_seed() if f.key.cluster == cluster.name]
        for fit in [*_fits_without_experiment(ours), *seed_fits]:
            fits.setdefault((_setup(fit.key), fit.samples_per_gpu_step), fit)
        if mfu is not None:
            source = "--mfu"
        else:
            mfu = seed_mfu(cluster.gpu_type)
            source = f"median of the seed's {cluster.gpu_type} rows"
        return cls(cluster, measured, fits, mfu, source, {r.run_id for r in ours})

    def lookup(self, spec: RunSpec) -> StepTime | None:
        """The best step time for ``spec`` (see the module's doc), or None when none is known."""
        key = seed_key_of_spec(spec)
        runs = self.measured.get(key)
        if runs:
            best = min(runs, key=lambda r: float((r.summary or {})["step_time_s"]))
            seconds = float((best.summary or {})["step_time_s"])
            return StepTime(seconds, SOURCE_MEASURED, f"run {best.run_id} ({len(runs)} of this configuration)")
        row = best_row(key)
        if row is not None:
            return StepTime(row.key.gbs / row.samples_per_s, SOURCE_SEED, f"{row.key.cluster} row {row.row}")
        t, p = spec.training.train, spec.training.parallel
        setup = SetupKey(
            spec.cluster,
            "",
            "",
            key.n_params,
            p.sharding,
            t.micro_batch_size,
            t.grad_accum,
            spec.training.model.seq_len,
            p.precision,
            p.activation_checkpointing,
        )
        fit = self.fits.get((setup, t.micro_batch_size * t.grad_accum))
        if fit is not None and fit.line_all is not None:
            # Every run of the setup, those far below the trend too: a budget must expect what runs did.
            line = fit.line_all
            seconds = line.step_s(spec.world_size)
            if seconds > 0:
                where = "of the seed's rows" if fit.verdicts[0].point.name.startswith("seed ") else "runs"
                sizes = sorted({v.point.gpus for v in fit.verdicts})
                slow = f", {len(fit.flagged)} far below the trend included" if fit.flagged else ""
                return StepTime(
                    seconds,
                    SOURCE_FIT,
                    f"t = a + b·log2 n fitted to {line.k} {where} at {sizes[0]}-{sizes[-1]} GPUs{slow}",
                    2 * line.step_se(spec.world_size),
                )
        if self.mfu is None:
            return None
        return flops_step_time(spec, self.cluster, self.mfu, self.mfu_source)


def _setup(key: SetupKey) -> SetupKey:
    """A setup with its experiment and model label left out: a plan matches on the architecture."""
    return key._replace(experiment="", model="")


def _fits_without_experiment(records: Iterable[RunRecord]) -> list[SetupFit]:
    groups = group_records(records)
    merged: dict[tuple[SetupKey, int], list[Point]] = {}
    for (key, per_gpu), points in groups.items():
        merged.setdefault((_setup(key), per_gpu), []).extend(points)
    return fit_groups(merged)
