"""Scaling fits: step time against GPU count per setup, efficiency, predictions, and runs far below.

A *setup* is everything but the GPU count: cluster, experiment, model (exact parameter count),
sharding, micro-batch, gradient accumulation, sequence length, precision and activation
checkpointing. Within a setup each GPU does the same work per step (``mbs · grad_accum`` samples),
so the runs form a weak-scaling series and the step time is

    t(n) = a + b · log2(n)

- ``a``: the compute of one GPU's micro-batches plus the bandwidth part of FSDP's collectives. A ring
  all-gather / reduce-scatter moves ``2·(n-1)/n`` of the shard bytes per GPU: nearly constant in n.
- ``b · log2(n)``: what grows with the allocation: collective latency (tree and ring-of-rings
  algorithms take O(log n) hops) and the extra switch levels of a fat tree as a job spans more nodes.

Two parameters because the series are short (the seed's have 4-8 sizes): an Amdahl-style model
``t = s + p/n`` is for strong scaling and does not apply to a fixed per-GPU batch, and a model with a
linear-in-n term overfits the one or two largest runs, which are exactly the ones to judge.

Runs far below the fit (a suspect node, a bad placement, a congested network) are found in order of
size: each run is compared with the fit of the *unflagged smaller* runs of its setup (at least two
sizes), so one slow large run cannot drag the fit down and hide itself, and is flagged when its
throughput is more than ``tolerance`` below that prediction and outside its uncertainty. The final
fit (predictions for the next sizes) uses the unflagged runs only.

Uncertainty: the ordinary-least-squares prediction interval (two standard errors) of the step time,
with the residual scatter floored at ``NOISE_FLOOR`` of the mean step time: two sizes fit exactly
and would otherwise claim no uncertainty at all; the seed's configurations published twice differ by
0.2-1 % (e.g. MareNostrum 5 28B at 512 GPUs: 87.36 vs 87.56 samples/s).

Plain Python, not even numpy: two-parameter least squares needs none, and ``collect`` of 10,000
runs must answer in well under a second (importing numpy alone takes ~0.1 s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hpcllm.collect.records import RunRecord

NOISE_FLOOR = 0.01  # relative scatter assumed at least (see the module's doc)
DEFAULT_TOLERANCE = 0.15  # "far below": throughput more than 15 % under the fit's prediction
PREDICT_DOUBLINGS = 2  # predictions for 2·n_max and 4·n_max


class SetupKey(NamedTuple):
    """The values that make runs one weak-scaling series (all but the GPU count)."""

    cluster: str
    experiment: str
    model: str  # label: preset name, or parameter count
    n_params: int
    sharding: str
    mbs: int
    grad_accum: int
    seq_len: int
    precision: str
    ac: str

    def label(self) -> str:
        exp = f"{self.experiment} " if self.experiment else ""
        return (
            f"{exp}{self.cluster} {self.model} {self.sharding} MBS {self.mbs} GA {self.grad_accum} "
            f"seq {self.seq_len} {self.precision} AC {self.ac}"
        )


@dataclass(frozen=True)
class Point:
    """One run (or seed row) of a setup."""

    gpus: int
    samples_per_s: float
    name: str  # run id or "seed leonardo row 10"

    def step_s(self, samples_per_gpu_step: int) -> float:
        return self.gpus * samples_per_gpu_step / self.samples_per_s


@dataclass(frozen=True)
class Line:
    """``t(n) = a + b·log2(n)`` fitted to ``k`` runs, with what its prediction interval needs."""

    a: float
    b: float
    k: int
    x_mean: float
    sxx: float
    sigma: float  # residual standard error (floored)

    def step_s(self, gpus: float) -> float:
        return self.a + self.b * math.log2(gpus)

    def step_se(self, gpus: float) -> float:
        """Standard error of one new run's step time at ``gpus``."""
        x = math.log2(gpus)
        spread = (x - self.x_mean) ** 2 / self.sxx if self.sxx > 0 else 0.0
        return self.sigma * math.sqrt(1.0 + 1.0 / self.k + spread)


def fit_line(gpus: Sequence[int], step_s: Sequence[float]) -> Line | None:
    """Least squares of step time on log2(GPUs); None below two distinct sizes."""
    if len(set(gpus)) < 2:
        return None
    xs = [math.log2(g) for g in gpus]
    k = len(xs)
    x_mean, y_mean = sum(xs) / k, sum(step_s) / k
    sxx = sum((x - x_mean) ** 2 for x in xs)
    b = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, step_s, strict=True)) / sxx
    a = y_mean - b * x_mean
    rss = sum((y - a - b * x) ** 2 for x, y in zip(xs, step_s, strict=True))
    scatter = math.sqrt(rss / (k - 2)) if k > 2 else 0.0
    return Line(a, b, k, x_mean, sxx, max(scatter, NOISE_FLOOR * y_mean))


@dataclass(frozen=True)
class Verdict:
    """One point judged against the fit of its smaller runs (None where there were too few)."""

    point: Point
    efficiency: float  # per-GPU throughput over the smallest run's
    predicted: float | None = None  # samples/s
    shortfall: float | None = None  # 1 - measured/predicted (positive: below the fit)
    flagged: bool = False

    def note(self) -> str:
        if self.shortfall is None:
            return ""
        if self.flagged:
            return f"{self.shortfall:.0%} below fit"
        return "ok" if self.shortfall < 0.05 else f"{self.shortfall:.0%} below fit (within tolerance)"


@dataclass(frozen=True)
class Prediction:
    gpus: int
    samples_per_s: float
    low: float  # two standard errors
    high: float
    efficiency: float


@dataclass
class SetupFit:
    key: SetupKey
    samples_per_gpu_step: int
    verdicts: list[Verdict] = field(default_factory=list)
    line: Line | None = None  # the unflagged runs: the trend, and what a healthy allocation would do
    line_all: Line | None = None  # every run, the flagged too: what a budget should expect
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def flagged(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.flagged]

    def predict(self, gpus: int) -> Prediction | None:
        """Samples/s at ``gpus`` with a two-standard-error band; None without a fit."""
        if self.line is None:
            return None
        step = self.line.step_s(gpus)
        if step <= 0:
            return None
        se = self.line.step_se(gpus)
        samples = gpus * self.samples_per_gpu_step
        smallest = min(self.verdicts, key=lambda v: v.point.gpus).point
        per_gpu0 = smallest.samples_per_s / smallest.gpus
        high = samples / max(step - 2 * se, step / 10)
        return Prediction(gpus, samples / step, samples / (step + 2 * se), high, samples / step / gpus / per_gpu0)


def fit_setup(
    key: SetupKey, samples_per_gpu_step: int, points: Iterable[Point], tolerance: float = DEFAULT_TOLERANCE
) -> SetupFit:
    """Judge the points of one setup in order of size and fit the unflagged ones."""
    ordered = sorted(points, key=lambda p: (p.gpus, p.name))
    result = SetupFit(key, samples_per_gpu_step)
    if not ordered:
        return result
    per_gpu0 = ordered[0].samples_per_s / ordered[0].gpus
    kept: list[Point] = []
    for point in ordered:
        efficiency = point.samples_per_s / point.gpus / per_gpu0
        smaller = [p for p in kept if p.gpus < point.gpus]
        line = fit_line([p.gpus for p in smaller], [p.step_s(samples_per_gpu_step) for p in smaller])
        if line is None:
            result.verdicts.append(Verdict(point, efficiency))
            kept.append(point)
            continue
        step = line.step_s(point.gpus)
        predicted = point.gpus * samples_per_gpu_step / step
        shortfall = 1.0 - point.samples_per_s / predicted
        slow_bound = point.gpus * samples_per_gpu_step / (step + 2 * line.step_se(point.gpus))
        flagged = shortfall > tolerance and point.samples_per_s < slow_bound
        result.verdicts.append(Verdict(point, efficiency, predicted, shortfall, flagged))
        if not flagged:
            kept.append(point)
    result.line = fit_line([p.gpus for p in kept], [p.step_s(samples_per_gpu_step) for p in kept])
    result.line_all = fit_line([p.gpus for p in ordered], [p.step_s(samples_per_gpu_step) for p in ordered])
    if result.line is not None:
        largest = max(p.gpus for p in ordered)
        for doubling in range(1, PREDICT_DOUBLINGS + 1):
            prediction = result.predict(largest * 2**doubling)
            if prediction is not None:
                result.predictions.append(prediction)
    return result


def fit_groups(groups: dict[tuple[SetupKey, int], list[Point]], tolerance: float = DEFAULT_TOLERANCE) -> list[SetupFit]:
    """One fit per setup with at least two distinct sizes, in the order of the keys."""
    fits = []
    for (key, per_gpu), points in groups.items():
        if len({p.gpus for p in points}) >= 2:
            fits.append(fit_setup(key, per_gpu, points, tolerance))
    return fits


def _summary_key(cluster: str, experiment: str, summary: dict[str, Any]) -> tuple[SetupKey, int] | None:
    try:
        mbs, grad_accum = int(summary["micro_batch_size"]), int(summary["grad_accum"])
        n_params = int(summary["n_params"])
        key = SetupKey(
            cluster,
            experiment,
            str(summary.get("model") or n_params),
            n_params,
            str(summary["sharding"]),
            mbs,
            grad_accum,
            int(summary["seq_len"]),
            str(summary["precision"]),
            str(summary.get("activation_checkpointing", "none")),
        )
    except (KeyError, TypeError, ValueError):
        return None
    return key, mbs * grad_accum


def group_records(records: Iterable[RunRecord]) -> dict[tuple[SetupKey, int], list[Point]]:
    """Completed runs by setup (their samples/s from ``summary.json``)."""
    groups: dict[tuple[SetupKey, int], list[Point]] = {}
    for record in records:
        summary = record.summary or {}
        sps, gpus = summary.get("samples_per_s"), summary.get("world_size")
        found = _summary_key(record.cluster, record.experiment, summary)
        if found is None or not isinstance(sps, (int, float)) or sps <= 0 or not isinstance(gpus, int):
            continue
        groups.setdefault(found, []).append(Point(gpus, float(sps), record.run_id))
    return groups


def fit_records(records: Iterable[RunRecord], tolerance: float = DEFAULT_TOLERANCE) -> list[SetupFit]:
    return fit_groups(group_records(records), tolerance)


def fit_seed(tolerance: float = DEFAULT_TOLERANCE) -> list[SetupFit]:
    """The fits of the seed's own published rows (experiment left empty)."""
    from hpcllm.plan.seed import seed_rows

    groups: dict[tuple[SetupKey, int], list[Point]] = {}
    for row in seed_rows():
        k = row.key
        key = SetupKey(
            k.cluster, "", row.model, k.n_params, k.sharding, k.mbs, k.grad_accum, k.seq_len, k.precision, k.ac
        )
        groups.setdefault((key, k.mbs * k.grad_accum), []).append(Point(k.gpus, row.samples_per_s, row.source))
    return fit_groups(groups, tolerance)


def verdicts_by_name(fits: Iterable[SetupFit]) -> dict[str, Verdict]:
    """Each fitted point's verdict under its name (run id or seed source)."""
    return {v.point.name: v for fit in fits for v in fit.verdicts}


FIT_HEADERS = (
    "setup",
    "GPUs",
    "efficiency",
    "vs fit",
    "t(n) = a + b·log2 n",
    "next sizes on the trend (samples/s, 2-SE band)",
)


def fit_rows(fits: Iterable[SetupFit]) -> list[list[str]]:
    """Rows for a listing (CLI, report): one per setup."""
    rows = []
    for fit in fits:
        ordered = sorted(fit.verdicts, key=lambda v: v.point.gpus)
        line = fit.line
        model = f"{line.a:.3g} + {line.b:.3g}·log2 n s" if line else ""
        nxt = ", ".join(f"{p.gpus}: {p.samples_per_s:.4g} [{p.low:.4g}, {p.high:.4g}]" for p in fit.predictions)
        rows.append(
            [
                fit.key.label(),
                " ".join(str(v.point.gpus) for v in ordered),
                " ".join(f"{v.efficiency:.2f}" for v in ordered),
                "; ".join(f"{v.point.gpus}: {v.note()}" for v in ordered if v.flagged) or "all within",
                model,
                nxt,
            ]
        )
    return rows
