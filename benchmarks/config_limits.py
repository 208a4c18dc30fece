"""What the hostile-input checks cost on good files, and what the grid limit bounds, on a login node.

    python benchmarks/config_limits.py [--repeats 5] [--points 1000 10000]

Part 1 reads every shipped experiment and profile with ``hpcllm.config.loader.read_yaml`` (repeated
keys, encoding, depth, alias expansion, non-finite numbers) and with a bare ``yaml.safe_load``,
best of ``--repeats``. Part 2 times ``expand_experiment`` (expansion, a ``where`` filter, validation
against the ``local`` profile) of grids of ``--points`` points, and counting a 10**20-point grid,
which is what a submit does before refusing it: ``hpcllm.config.grid.MAX_POINTS`` is where the
expansion time stops being "seconds". Times are CPU seconds of this process (``process_time``):
on a shared login node the wall time is that divided by the share of a core it gets.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from hpcllm.config import grid as gridlib
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import Experiment
from hpcllm.config.loader import read_yaml
from hpcllm.plan.expand import expand_experiment

ROOT = Path(__file__).resolve().parents[1]


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--points", type=int, nargs="+", default=[1000, 10_000])
    args = parser.parse_args()
    console = Console()

    files = sorted((ROOT / "experiments").glob("*.yaml")) + sorted((ROOT / "clusters").glob("*.yaml"))
    table = Table(title=f"Reading the {len(files)} shipped configs (CPU ms, best of {args.repeats})")
    for col in ("file", "bytes", "read_yaml (ms)", "yaml.safe_load (ms)"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for path in files:
        checked = best_of(args.repeats, lambda path=path: read_yaml(path))
        bare = best_of(args.repeats, lambda path=path: yaml.safe_load(path.read_text()))
        table.add_row(
            str(path.relative_to(ROOT)), str(path.stat().st_size), f"{checked * 1e3:.2f}", f"{bare * 1e3:.2f}"
        )
    console.print(table)

    cluster = load_cluster(str(ROOT / "clusters" / "local.yaml"))
    table = Table(title="Grid size: expanding and validating vs counting (CPU s)")
    for col in ("points", "what", "seconds"):
        table.add_column(col, justify="right")
    for n in args.points:
        exp = Experiment.model_validate(
            {
                "name": "bench",
                "training": {"model": {"preset": "tiny"}, "data": {"path": "data/demo"}},
                "grid": {"seed": list(range(n // 10)), "train.steps": list(range(1, 11))},
                "where": ["seed >= 0"],
            }
        )
        t0 = time.process_time()
        specs = expand_experiment(exp, cluster, "bench")
        table.add_row(f"{len(specs):,}", "expand + where + validate", f"{time.process_time() - t0:.2f}")
    huge = {f"train.a{i}": list(range(10)) for i in range(20)}
    t0 = time.process_time()
    with contextlib.suppress(ValueError):
        gridlib.check_size(huge, [])
    table.add_row("10^20", "count and refuse", f"{time.process_time() - t0:.6f}")
    console.print(table)


if __name__ == "__main__":
    main()
