"""``hpcllm collect --compare seed``: our completed runs beside the seed's published rows.

Every seed row is listed, in the seed's order: with each of our runs of the same configuration
(``hpcllm.plan.seed``) and the ratio of our samples/s to the seed's, or marked ``not run``. Our
runs that match no seed row follow, marked ``not in seed``. MFU is computed the seed's way on both
sides (``hpcllm.perf``), so for the same GPU type the MFU ratio equals the samples/s ratio. ``Seed vs
fit`` judges each seed row against the scaling fit of the seed's smaller rows of its setup
(``hpcllm.collect.fits``): the seed's own runs that fell far below their series.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpcllm.collect import columns as cols
from hpcllm.collect.fits import fit_seed, verdicts_by_name
from hpcllm.collect.records import RunRecord
from hpcllm.collect.table import Table
from hpcllm.config import grid as gridlib
from hpcllm.plan.seed import SeedRow, key_of_summary, rows_by_key, seed_rows

STATUS_OK, STATUS_NOT_RUN, STATUS_OURS_ONLY = "ok", "not run", "not in seed"


def _col(id_: str, header: str, numeric: bool = False, text: Callable[[Any], str] = str) -> cols.Column:
    return cols.Column(id_, header, lambda r: None, text, numeric=numeric)


COMPARE_COLUMNS = [
    _col("status", "Status"),
    _col("cluster", "Cluster"),
    _col("params", "# Params (B)", True, cols.number_text),
    _col("gpus", "#GPUs", True),
    _col("mbs", "MBS", True),
    _col("gbs", "GBS", True),
    _col("seq_len", "Sequence Length", True),
    _col("sharding", "Sharding"),
    _col("ac", "AC"),
    _col("seed_samples_per_s", "Samples/s (seed)", True),
    _col("samples_per_s", "Samples/s (ours)", True),
    _col("ratio", "ours/seed", True, lambda v: f"{v:.3f}"),
    _col("seed_mfu", "MFU (seed)", True),
    _col("mfu", "MFU (ours)", True),
    _col("seed_fit", "Seed vs fit"),
    _col("grad_accum", "GradAccm", True),
    _col("precision", "Precision"),
    _col("run", "Run"),
]


@dataclass
class Comparison:
    table: Table

    def counts(self) -> dict[str, int]:
        out = {STATUS_OK: 0, STATUS_NOT_RUN: 0, STATUS_OURS_ONLY: 0}
        for row in self.table.rows:
            out[row["status"]] += 1
        return out

    def median_ratio(self) -> float | None:
        ratios = [r["ratio"] for r in self.table.rows if r["ratio"] is not None]
        return statistics.median(ratios) if ratios else None

    def summary_line(self) -> str:
        c, ratio = self.counts(), self.median_ratio()
        text = (
            f"seed rows matched by our runs: {c[STATUS_OK]}, seed rows not run: {c[STATUS_NOT_RUN]}, "
            f"our runs not in the seed: {c[STATUS_OURS_ONLY]}"
        )
        return text + (f"; median ours/seed samples/s: {ratio:.3f}" if ratio is not None else "")


def _config_cells(row: SeedRow) -> dict[str, Any]:
    return {
        "cluster": row.key.cluster,
        "params": float(row.label),
        "gpus": row.key.gpus,
        "grad_accum": row.key.grad_accum,
        "mbs": row.key.mbs,
        "gbs": row.key.gbs,
        "seq_len": row.key.seq_len,
        "precision": row.key.precision,
        "sharding": row.key.sharding,
        "ac": cols.ac_label(row.key.ac),
    }


def _ours(record: RunRecord) -> dict[str, Any]:
    s = record.summary or {}
    sps, mfu = s.get("samples_per_s"), s.get("mfu")
    return {
        "samples_per_s": None if sps is None else round(float(sps), 2),
        "mfu": None if mfu is None else round(float(mfu), 4),
        "run": record.run_id,
    }


def compare_with_seed(records: list[RunRecord], where: str | None = None) -> Comparison:
    """The comparison table of these (completed) runs; ``where`` filters its rows by column id."""
    ours_by_key: dict[Any, list[RunRecord]] = {}
    unmatched: list[RunRecord] = []
    seed_keys = rows_by_key()
    for record in records:
        key = key_of_summary(record.cluster, record.summary or {})
        if key is not None and key in seed_keys:
            ours_by_key.setdefault(key, []).append(record)
        else:
            unmatched.append(record)
    rows: list[dict[str, Any]] = []
    seed_verdicts = verdicts_by_name(fit_seed())
    for seed in seed_rows():
        verdict = seed_verdicts.get(seed.source)
        base = {
            **_config_cells(seed),
            "seed_samples_per_s": seed.samples_per_s,
            "seed_mfu": seed.mfu,
            "seed_fit": (verdict.note() or None) if verdict else None,
        }
        matches = ours_by_key.get(seed.key, [])
        if not matches:
            rows.append(
                {**base, "samples_per_s": None, "mfu": None, "ratio": None, "status": STATUS_NOT_RUN, "run": None}
            )
        for record in matches:
            ours = _ours(record)
            ratio = (ours["samples_per_s"] / seed.samples_per_s) if ours["samples_per_s"] is not None else None
            rows.append({**base, **ours, "ratio": None if ratio is None else round(ratio, 3), "status": STATUS_OK})
    for record in sorted(
        unmatched,
        key=lambda r: (
            r.cluster,
            (r.summary or {}).get("n_params", 0),
            (r.summary or {}).get("world_size", 0),
            r.run_id,
        ),
    ):
        s = record.summary or {}
        rows.append(
            {
                "cluster": record.cluster,
                "params": cols.params_billions(float(s.get("n_params", 0))),
                "gpus": s.get("world_size"),
                "grad_accum": s.get("grad_accum"),
                "mbs": s.get("micro_batch_size"),
                "gbs": s.get("global_batch_size"),
                "seq_len": s.get("seq_len"),
                "precision": s.get("precision"),
                "sharding": s.get("sharding"),
                "ac": cols.ac_label(s.get("activation_checkpointing"), s.get("ac_every")),
                "seed_samples_per_s": None,
                "seed_mfu": None,
                "seed_fit": None,
                "ratio": None,
                "status": STATUS_OURS_ONLY,
                **_ours(record),
            }
        )
    if where:
        names = gridlib.where_names(where)
        known = {c.id for c in COMPARE_COLUMNS}
        for name in names:
            if name not in known:
                raise ValueError(f"--where: {name!r} is not a column of the comparison; use {', '.join(sorted(known))}")
        predicate = gridlib.compile_where(where)
        rows = [r for r in rows if predicate(r)]
    return Comparison(Table(list(COMPARE_COLUMNS), rows))
