"""The seed's published scaling rows (``seed_scaling.csv``, shipped in the package) and how a run of
ours is matched to one of them.

One data file feeds both ``hpcllm collect --compare seed`` and the per-point references of the
scaling experiments (``expected: {cluster: {seed: …}}``), so the two can never disagree. A run
matches a seed row when every value that defines the configuration is equal: cluster, model (its
exact parameter count, i.e. the same architecture as the seed row's preset), #GPUs, gradient
accumulation, MBS, GBS, sequence length, precision, sharding and activation checkpointing.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any, NamedTuple

from hpcllm.config.model import ModelConfig

SEED_FILE = "seed_scaling.csv"


class SeedKey(NamedTuple):
    """The values that make two runs the same configuration."""

    cluster: str
    n_params: int
    gpus: int
    grad_accum: int
    mbs: int
    gbs: int
    seq_len: int
    precision: str
    sharding: str
    ac: str  # none | full | selective

    def label(self) -> str:
        return (
            f"{self.cluster} {self.gpus} GPUs MBS {self.mbs} GBS {self.gbs} seq {self.seq_len} "
            f"{self.sharding} AC {self.ac}"
        )


@dataclass(frozen=True)
class SeedRow:
    """One row of the seed's README tables: its configuration (``key``) and what it measured; ``row``
    numbers it within its cluster's table (from 1)."""

    key: SeedKey
    row: int
    label: str  # the seed's "# Params (B)" as printed: "2.7", "6.7", "28"
    model: str  # our preset of that model (the key holds its parameter count)
    samples_per_s: float
    gpu_type: str
    mfu: float

    @property
    def source(self) -> str:
        return f"seed {self.key.cluster} row {self.row}"


_INT_FIELDS = ("row", "gpus", "grad_accum", "mbs", "gbs", "seq_len")
_FLOAT_FIELDS = ("samples_per_s", "mfu")


@lru_cache(maxsize=1)
def seed_rows() -> tuple[SeedRow, ...]:
    """Every row of the shipped file, in the seed's order."""
    text = resources.files("hpcllm.plan").joinpath(SEED_FILE).read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    rows = []
    for record in csv.DictReader(io.StringIO("\n".join(lines))):
        values: dict[str, Any] = dict(record)
        for name in _INT_FIELDS:
            values[name] = int(values[name])
        for name in _FLOAT_FIELDS:
            values[name] = float(values[name])
        key = {name: values.pop(name) for name in SeedKey._fields if name != "n_params"}
        rows.append(SeedRow(SeedKey(**key, n_params=_preset_params(values["model"])), **values))
    return tuple(rows)


@cache
def _preset_params(name: str) -> int:
    return ModelConfig.from_name(name).n_params()


@lru_cache(maxsize=1)
def rows_by_key() -> dict[SeedKey, list[SeedRow]]:
    """The seed's rows grouped by configuration (it published some configurations twice); built
    once per process (``submit`` looks up every grid point). Callers must not modify it."""
    grouped: dict[SeedKey, list[SeedRow]] = {}
    for row in seed_rows():
        grouped.setdefault(row.key, []).append(row)
    return grouped


def best_row(key: SeedKey) -> SeedRow | None:
    """The seed's fastest row of this configuration, or None when it has none."""
    rows = rows_by_key().get(key)
    return max(rows, key=lambda r: r.samples_per_s) if rows else None


def key_of_summary(cluster: str, summary: dict[str, Any]) -> SeedKey | None:
    """The key of a finished run from its ``summary.json`` (None when a field is missing)."""
    try:
        return SeedKey(
            cluster,
            int(summary["n_params"]),
            int(summary["world_size"]),
            int(summary["grad_accum"]),
            int(summary["micro_batch_size"]),
            int(summary["global_batch_size"]),
            int(summary["seq_len"]),
            str(summary["precision"]),
            str(summary["sharding"]),
            str(summary.get("activation_checkpointing", "none")),
        )
    except (KeyError, TypeError, ValueError):
        return None
