"""The login-node side at scale: `submit --dry-run` of a 1,000-point grid, `status` and `collect` of
10,000 runs, each as a user runs it (a fresh `hpcllm` process, output to a pipe).

    python benchmarks/cli_scale.py [--points 1000 --runs 10000 --repeats 3 --workdir DIR]

Prints one table: the median wall time of `--repeats` runs of each command, and its target
(docs/performance.md). Not a test: wall times depend on the machine and its load.

The 1,000 points: the 2.7b scaling experiment on the `leonardo` profile, over nodes (5) x sharding
(2) x micro-batch (5) x activation checkpointing (2) x learning rate (10). The 10,000 runs are
written directly (not trained): each has the run.yaml, job.sbatch and manifest.json that `submit`
renders, and, like finished runs, a summary.json and a 60-line metrics.jsonl; 90 % completed (10 %
of them after a restart), 8 % failed, 2 % cancelled. No run is pending or running, so no scheduler
is asked anything and the figures measure hpcllm alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TARGETS_S = {"submit --dry-run": 2.0, "status": 2.0, "collect": 1.0}


def grid_experiment(path: Path, points: int) -> Path:
    """The 2.7b scaling experiment with a grid of ``points`` points (a multiple of 100)."""
    doc = yaml.safe_load((ROOT / "experiments" / "scaling_2.7b.yaml").read_text())
    doc["name"] = "cli_scale"
    for key in ("where", "zip", "expected"):  # no references: an older hpcllm (--hpcllm) reads this file too
        doc.pop(key, None)
    lrs = [round(1e-4 * (i + 1), 6) for i in range(points // 100)]
    doc["grid"] = {
        "resources.nodes": [1, 2, 4, 8, 16],
        "parallel.sharding": ["FULL_SHARD", "HYBRID_SHARD"],
        "train.micro_batch_size": [1, 2, 4, 8, 16],
        "parallel.activation_checkpointing": ["none", "full"],
        "optim.lr": lrs,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_runs(root: Path, n: int, template: Path) -> None:
    """``n`` finished run directories under ``root``, cloned from one rendered run ``template``."""
    from hpcllm.launch.manifest import Manifest, Restart, RunState

    run_yaml = (template / "run.yaml").read_text()
    script = (template / "job.sbatch").read_text()
    base = json.loads((template / "manifest.json").read_text())
    summary = {
        "status": "completed",
        "run_id": "",
        "model": "2.7b",
        "n_params": 2666498560,
        "n_params_flops": 2666493440,
        "n_layers": 32,
        "d_model": 2560,
        "seq_len": 4096,
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
        "samples_per_s": 18.7,
        "tokens_per_s": 76595.2,
        "tokens_per_s_per_gpu": 9574.4,
        "mfu": 0.587,
        "mfu_with_head": 0.614,
        "hfu": 0.614,
        "step_time_s": 0.856,
        "mem_peak_gib": 41.2,
        "steps_measured": 50,
        "summary_warmup_steps": 10,
        "steps_completed": 60,
        "final_loss": 6.1,
        "elapsed_s": 80.0,
        "wall_time_s": 80.0,
    }
    metrics = "".join(
        json.dumps(
            {
                "step": s,
                "loss": 10 - s / 10,
                "lr": 3e-4,
                "grad_norm": 1.0,
                "tokens_per_s": 76595.2,
                "samples_per_s": 18.7,
                "mfu": 0.587,
                "step_time_s": 0.856,
                "mem_peak_gib": 41.2,
                "restart": 0,
                "rerun": False,
                "elapsed_s": 20 + s * 0.856,
            }
        )
        + "\n"
        for s in range(1, 61)
    )
    for i in range(n):
        run_id = f"2.7b-n{1 << (i % 5)}x4-mbs2-ga1-fs-acnone-seq4096-{i:08x}"
        run = root / "cli_scale" / "leonardo" / run_id
        run.mkdir(parents=True)
        (run / "run.yaml").write_text(run_yaml)
        (run / "job.sbatch").write_text(script)
        state = RunState.COMPLETED if i % 50 < 45 else RunState.FAILED if i % 50 < 49 else RunState.CANCELLED
        manifest = Manifest.model_validate({**base, "run_id": run_id, "state": state.value, "job_id": str(100000 + i)})
        if i % 10 == 0:
            manifest.restarts.append(Restart(time=manifest.created_at, reason="node failure", last_step=30))
        if state == RunState.FAILED:
            manifest.reason = "engine exited with code 1"
        (run / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json"), indent=2))
        (run / "metrics.jsonl").write_text(metrics)
        if state != RunState.CANCELLED:
            status = "completed" if state == RunState.COMPLETED else "failed"
            (run / "summary.json").write_text(
                json.dumps({**summary, "run_id": run_id, "status": status, "world_size": 4 << (i % 5)}, indent=2)
            )


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of ``cmd``, stdout to a pipe as in a script or a log.

    CPU = user + system time of the process: on a machine shared with other jobs it is the figure
    that transfers to an idle one (wall time then includes waiting for a core).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_of(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1000, help="grid points to render (multiple of 100)")
    parser.add_argument("--runs", type=int, default=10000, help="run directories for status and collect")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated files here")
    parser.add_argument(
        "--hpcllm",
        default=str(Path(sys.executable).with_name("hpcllm")),
        help="the hpcllm to time (e.g. another checkout's .venv/bin/hpcllm)",
    )
    parser.add_argument("--cwd", type=Path, default=ROOT, help="the project folder it runs in (clusters/ there)")
    args = parser.parse_args()
    console = Console()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hpcllm-cli-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    hpcllm = [args.hpcllm]
    try:
        exp = grid_experiment(work / "grid.yaml", args.points)

        def submit(rendered: Path) -> list[str]:
            return [*hpcllm, "submit", str(exp), "--cluster", "leonardo", "--account", "bench", "--dry-run",
                    "--results", str(rendered)]  # fmt: skip

        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in TARGETS_S}
        template = None
        runs = work / "runs"
        for _ in range(args.repeats):  # interleaved, so that all three see the same load
            # Each dry run renders into a new folder, as a user's first one does, and the rendered
            # folders are deleted after the last repeat, not between: this VM's file system
            # (ext4 with online discard) is busy for seconds after a deletion, and deleting the
            # last dry run's 630 folders right before rendering again had charged that to the
            # dry run (sys time 0.1 s quiet, up to 1.4 s right after deleting 6,000 folders).
            rendered = Path(tempfile.mkdtemp(prefix="rendered-", dir=work))
            os.sync()
            samples["submit --dry-run"].append(timed(submit(rendered), args.cwd))
            if template is None:
                template = next((rendered / "cli_scale" / "leonardo").iterdir())
            os.sync()
            if not runs.exists():
                with console.status(f"writing {args.runs} run directories"):
                    write_runs(runs, args.runs, template)
            samples["status"].append(timed([*hpcllm, "status", str(runs)], args.cwd))
            samples["collect"].append(timed([*hpcllm, "collect", str(runs), "--format", "csv"], args.cwd))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            for folder in work.glob("rendered-*"):
                shutil.rmtree(folder, ignore_errors=True)
    sizes = {"submit --dry-run": f"{args.points} points", "status": f"{args.runs} runs", "collect": f"{args.runs} runs"}
    load = os.getloadavg()[0]
    table = Table(
        title=f"{args.hpcllm} on the login node (median of {args.repeats}, fresh process each; "
        f"load average {load:.1f} on {os.cpu_count()} cores)"
    )
    for col in ("command", "size", "wall s", "CPU s", "target s", "wall < target"):
        table.add_column(col)
    for name, runs_of in samples.items():
        wall, cpu = median_of(runs_of)
        ok = wall < TARGETS_S[name]
        table.add_row(
            name,
            sizes[name],
            f"{wall:.2f}",
            f"{cpu:.2f}",
            f"< {TARGETS_S[name]:g}",
            "[green]yes[/]" if ok else "[red]no[/]",
        )
    console.print(table)


if __name__ == "__main__":
    main()
