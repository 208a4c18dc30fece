"""The columns a scaling table can show: an id (for ``--columns``, ``--sort`` and ``--where``), the
header it prints under (the seed's names for the seed's columns), and how its value is read from a
run record and written in a text cell.

Columns are data: ``summary.<key>`` reads any key of ``summary.json`` (what another part of the
engine adds shows up without a change here), a dotted grid key (``optim.lr``) reads the value the
run's grid point swept, and optional columns (evaluation loss) join the default table only when
some run has a value for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hpcllm.collect.records import RunRecord
from hpcllm.rundir import describe_stragglers


@dataclass(frozen=True)
class Column:
    id: str
    header: str
    get: Callable[[RunRecord], Any]
    text: Callable[[Any], str] = str  # the cell in markdown and LaTeX (None is always empty)
    help: str = ""
    optional: bool = False  # in the default table only when some run has a value other than ``usual``
    usual: Any = None  # an optional column's everyday value (TP 1), which alone does not show it
    numeric: bool = False  # right-aligned in LaTeX
    prose: bool = False  # a sentence (a note): wraps in the HTML report, where ids and numbers never do

    def cell(self, value: Any) -> str:
        return "" if value is None else self.text(value)


def _summary(key: str, digits: int | None = None, *, required: bool = False) -> Callable[[RunRecord], Any]:
    """A summary.json value, rounded; ``required``: a completed run without it is broken (KeyError).

    One closure per case, without the others' checks: a table of 10,000 runs calls these ~10^5 times.
    """
    if digits is None:
        if required:
            return lambda record: (record.summary or {})[key]
        return lambda record: (record.summary or {}).get(key)

    def rounded(record: RunRecord) -> Any:
        summary = record.summary or {}
        value = summary[key] if required else summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if digits > 0:
                return round(float(value), digits)
            return round(value) if math.isfinite(value) else value  # round(nan) raises; a cell shows "nan"
        return value

    return rounded


def params_billions(n_params: float) -> float:
    """Billions with 2 significant digits, as the seed prints them: 2.7, 6.7, 28, 0.00013."""
    return float(f"{n_params / 1e9:.2g}")


def ac_label(activation_checkpointing: str | None, ac_every: Any = None) -> str:
    """The seed's AC column: False / True (full), and selective/<k> for ours."""
    if activation_checkpointing in (None, "none"):
        return "False"
    if activation_checkpointing == "full":
        return "True"
    return f"selective/{ac_every}"


def _params(record: RunRecord) -> float:
    return params_billions(float((record.summary or {})["n_params"]))


def _ac(record: RunRecord) -> str:
    s = record.summary or {}
    return ac_label(s.get("activation_checkpointing", "none"), s.get("ac_every"))


def _restarts(record: RunRecord) -> int:
    return len(record.manifest.get("restarts") or [])


def _tokens(record: RunRecord) -> float:
    """Tokens the run trained on (every step once)."""
    s = record.summary or {}
    return float(s.get("steps_completed") or 0) * float(s.get("global_batch_size") or 0) * float(s.get("seq_len") or 0)


def _tokens_per_joule(record: RunRecord) -> float | None:
    """NVML's GPU figure (the final attempt's steps), else the job's accounted energy over every attempt."""
    value = (record.summary or {}).get("tokens_per_joule")
    if value is None:
        joules = record.manifest.get("consumed_energy_j")
        value = _tokens(record) / joules if joules and _tokens(record) else None
    return round(float(value), 2) if value is not None else None


def _kwh_per_billion_tokens(record: RunRecord) -> float | None:
    per_joule = _tokens_per_joule(record)
    return round(1e9 / per_joule / 3.6e6, 4) if per_joule else None


def _energy_note(record: RunRecord) -> str:
    """Where the energy figures come from, or why they are empty (engine's NVML note; the job's sacct note)."""
    notes = [(record.summary or {}).get("energy_note"), record.manifest.get("energy_note")]
    return "; ".join(n for n in notes if n) or "no energy recorded by this run"


def _stragglers(record: RunRecord) -> str | None:
    """The ranks the watchdog flagged as consistently slower than the median rank (summary.json)."""
    ranks = (record.summary or {}).get("stragglers")
    return describe_stragglers(ranks) if ranks else None


def _model(record: RunRecord) -> str | None:
    name = (record.summary or {}).get("model")
    return name or record.run_id.split("-n", 1)[0]


def _clock(seconds: float) -> str:
    """h:mm:ss (a run's wall time); a non-finite one (a damaged summary) as the number it is."""
    if not math.isfinite(seconds):
        return number_text(seconds)
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def number_text(value: Any) -> str:
    return f"{value:g}"


_COLUMNS = [
    # The seed's table, in its order.
    Column(
        "params", "# Params (B)", _params, number_text, "total parameters, billions, 2 significant digits", numeric=True
    ),
    Column("gpus", "#GPUs", _summary("world_size", required=True), help="ranks (GPUs) of the run", numeric=True),
    Column(
        "samples_per_s", "Samples/s", _summary("samples_per_s", 2), help="median over the measured steps", numeric=True
    ),
    Column("grad_accum", "GradAccm", _summary("grad_accum", required=True), numeric=True),
    Column("mbs", "MBS", _summary("micro_batch_size", required=True), help="micro-batch size per rank", numeric=True),
    Column("gbs", "GBS", _summary("global_batch_size", required=True), help="global batch size", numeric=True),
    Column("seq_len", "Sequence Length", _summary("seq_len", required=True), numeric=True),
    Column("precision", "Precision", _summary("precision", required=True)),
    Column("sharding", "Sharding", _summary("sharding", required=True)),
    Column("ac", "AC", _ac, help="activation checkpointing: False, True (full), selective/<k>"),
    Column("gpu_type", "GPU Type", lambda r: (r.summary or {}).get("gpu_type") or "cpu"),
    Column("mfu", "MFU", _summary("mfu", 4), help="the seed's MFU: 72·L·d² + 12·L·T·d FLOPs per token", numeric=True),
    # Ours.
    Column(
        "tp",
        "TP",
        lambda r: (r.summary or {}).get("tensor_parallel", 1),
        help="tensor-parallel ranks per model replica (1: FSDP alone); MFU stays per GPU",
        optional=True,
        usual=1,
        numeric=True,
    ),
    Column(
        "mfu_with_head",
        "MFU+head",
        _summary("mfu_with_head", 4),
        help="MFU counting every matmul parameter, the output projection included",
        numeric=True,
    ),
    Column("hfu", "HFU", _summary("hfu", 4), help="MFU+head plus activation-checkpointing recomputation", numeric=True),
    Column("tokens_per_s_per_gpu", "Tokens/s/GPU", _summary("tokens_per_s_per_gpu", 0), numeric=True),
    Column("step_time_s", "Step (s)", _summary("step_time_s", 3), numeric=True),
    Column("mem_peak_gib", "Mem (GiB)", _summary("mem_peak_gib", 2), help="peak memory, max over ranks", numeric=True),
    Column("loss", "Loss", _summary("final_loss", 4), help="training loss of the last step", numeric=True),
    Column(
        "eval_loss",
        "Eval Loss",
        _summary("eval_loss", 4),
        help="evaluation loss, when the run evaluated",
        optional=True,
        numeric=True,
    ),
    Column("eval_ppl", "Eval PPL", _summary("eval_ppl", 2), help="evaluation perplexity", optional=True, numeric=True),
    Column(
        "tokens_per_joule",
        "Tokens/J",
        _tokens_per_joule,
        help="tokens per joule: NVML GPU energy summed over ranks, else the job's sacct ConsumedEnergy",
        numeric=True,
    ),
    Column("kwh_per_btok", "kWh/B tokens", _kwh_per_billion_tokens, help="kWh per billion tokens", numeric=True),
    Column(
        "energy",
        "Energy source",
        _energy_note,
        help="where the energy figures come from, or why they are empty",
        prose=True,
    ),
    Column(
        "stragglers",
        "Stragglers",
        _stragglers,
        help="ranks whose GEMM probe was consistently below the median rank's (watchdog)",
        optional=True,
        prose=True,
    ),
    Column("restarts", "Restarts", _restarts, help="requeues and restarts (manifest)", numeric=True),
    Column(
        "wall_time",
        "Wall time",
        _summary("wall_time_s", 1),
        _clock,
        help="training wall time over all attempts (seconds in csv/json, h:mm:ss in text)",
        numeric=True,
    ),
    Column("steps", "Steps", _summary("steps_completed"), numeric=True),
    Column("model", "Model", _model, help="model preset"),
    Column("n_params", "Params", _summary("n_params"), help="exact parameter count", numeric=True),
    Column("experiment", "Experiment", lambda r: r.experiment),
    Column("cluster", "Cluster", lambda r: r.cluster),
    Column("run", "Run", lambda r: r.run_id, help="run id"),
    # Filled by build_table from all runs (hpcllm.collect.fits); in the default table when a run is flagged.
    Column("fit", "vs fit", lambda r: None, help="throughput against the scaling fit of the smaller runs of its setup"),
]
COLUMNS: dict[str, Column] = {c.id: c for c in _COLUMNS}

SEED = [
    "params",
    "gpus",
    "samples_per_s",
    "grad_accum",
    "mbs",
    "gbs",
    "seq_len",
    "precision",
    "sharding",
    "ac",
    "gpu_type",
    "mfu",
]
# After the seed's columns and the swept values, by default:
# Experiment and cluster: runs of different experiments share setups (a tutorial's 1-GPU run and a
# fine-tune's), and a row must say which one it is.
DEFAULT_TAIL = [
    "tokens_per_joule",
    "kwh_per_btok",
    "energy",
    "loss",
    "eval_loss",
    "eval_ppl",
    "stragglers",
    "restarts",
    "wall_time",
    "experiment",
    "cluster",
]
GROUPS = {"seed": SEED, "default": [*SEED, "tp", "swept", *DEFAULT_TAIL], "all": [*COLUMNS, "swept"]}

# Grid keys the seed's columns already show (directly, or as #GPUs).
COVERED_BY_SEED = {
    "resources.nodes",
    "resources.gpus_per_node",
    "train.micro_batch_size",
    "train.grad_accum",
    "train.global_batch_size",
    "model.seq_len",
    "parallel.precision",
    "parallel.sharding",
    "parallel.tensor_parallel",
    "parallel.activation_checkpointing",
    "model.preset",
}


def swept_column(key: str) -> Column:
    """The value the run's grid point gave ``key`` (from its manifest)."""
    return Column(key, key, lambda r: (r.manifest.get("point") or {}).get(key), help="swept by the grid")


def summary_column(key: str) -> Column:
    return Column(f"summary.{key}", key, _summary(key), help=f"summary.json {key}")


def swept_keys(records: Iterable[RunRecord]) -> list[str]:
    """Grid keys of these runs whose values differ between runs, in first-seen order."""
    values: dict[str, set[str]] = {}
    for record in records:
        for key, value in (record.manifest.get("point") or {}).items():
            values.setdefault(key, set()).add(repr(value))
    return [key for key, seen in values.items() if len(seen) > 1]


def resolve(spec: str | None, records: list[RunRecord]) -> list[Column]:
    """The columns of ``--columns SPEC``: ids, groups (seed, default, all), ``swept``, grid keys and
    ``summary.<key>``, comma-separated. Unknown names raise ValueError listing the known ones."""
    names = [n.strip() for n in (spec or "default").split(",") if n.strip()]
    out: list[Column] = []
    for name in names:
        for item in GROUPS.get(name, [name]):
            if item == "swept":
                grid_keys = swept_keys(records)
                out += [swept_column(k) for k in grid_keys if name == "swept" or k not in COVERED_BY_SEED]
            elif item in COLUMNS:
                column = COLUMNS[item]
                if (
                    column.optional
                    and item not in names
                    and not any(column.get(r) not in (None, column.usual) for r in records)
                ):
                    continue  # an optional column the user did not name, and no run has a value
                out.append(column)
            elif item.startswith("summary.") and len(item) > len("summary."):
                out.append(summary_column(item[len("summary.") :]))
            elif "." in item:
                out.append(swept_column(item))
            else:
                raise ValueError(
                    f"--columns: unknown column {item!r}; use {', '.join(COLUMNS)}, a group ({', '.join(GROUPS)}), "
                    "swept, a grid key such as optim.lr, or summary.<key>"
                )
    return list({c.id: c for c in out}.values())  # each column once, where it first appeared
