"""``hpcllm explore-batch``: measure the micro-batch size each setup of a grid holds, then apply it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hpcllm.cli.common import console, err_console, fail, finite, int64, results_option
from hpcllm.cli.listing import print_listing
from hpcllm.errors import HpcllmError

if TYPE_CHECKING:
    from hpcllm.tune.explore import ApplyResult


def explore_batch(
    experiment: Path = typer.Argument(..., help="Experiment YAML whose grid to probe."),
    cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster profile name."),
    apply: bool = typer.Option(
        False, "--apply", help="Write the tuned experiment from finished probes (submits nothing)."
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="--apply: file to write (default: RESULTS/EXP/CLUSTER/EXP.CLUSTER.tuned.yaml, beside the probes).",
    ),
    margin: float = typer.Option(
        0.10, "--margin", callback=finite, help="--apply: keep this fraction of GPU memory free."
    ),
    # Not given: ProbeConfig's defaults (hpcllm.config.probe, their one home; read in tune/explore).
    max_mbs: int | None = typer.Option(
        None,
        "--max-mbs",
        min=1,
        callback=int64,
        help="Largest micro-batch size a probe tries (default: the probe config's).",
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, callback=int64, help="Timed steps per size (default: the probe config's)."
    ),
    warmup_steps: int | None = typer.Option(
        None,
        "--warmup-steps",
        min=0,
        callback=int64,
        help="Untimed steps per size, the first memory-guarded (default: the config's).",
    ),
    min_gain: float | None = typer.Option(
        None,
        "--min-gain",
        min=0.0,
        callback=finite,
        help="Stop growing when samples/s per GPU improves less than this (default: the probe config's).",
    ),
    memory_only: bool = typer.Option(
        False, "--memory-only", help="Grow until memory or --max-mbs stops it, ignoring throughput."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render the probe runs, submit nothing."),
    account: str | None = typer.Option(None, "--account", "-A", help="Project to charge (beats $HPCLLM_ACCOUNT)."),
    results: Path | None = results_option(
        None, "Results root folder (default: $HPCLLM_RESULTS, the profile's paths.results, ./results)."
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Resubmit failed and cancelled probes."),
) -> None:
    """Probe jobs that measure the micro-batch size each setup of a grid holds; --apply uses them.

    One short probe job per distinct (model, GPUs, sharding, AC, seq len) of the grid grows the
    micro-batch from the memory estimate's suggestion until memory or throughput stops it. --apply
    then writes an experiment with each point's best measured micro-batch size.
    """
    from hpcllm.tune.explore import ProbeSettings, apply_probes
    from hpcllm.tune.explore import explore_batch as submit_probes

    try:
        if apply:
            applied = apply_probes(experiment, cluster, results, output=output, margin=margin)
        else:
            given: dict[str, Any] = {
                "max_mbs": max_mbs,
                "steps": steps,
                "warmup_steps": warmup_steps,
                "min_gain": min_gain,
            }
            settings = ProbeSettings(**{k: v for k, v in given.items() if v is not None})
            if memory_only:
                settings = dataclasses.replace(settings, min_gain=None)
            explored = submit_probes(
                experiment,
                cluster,
                results,
                settings=settings,
                account=account,
                dry_run=dry_run,
                retry_failed=retry_failed,
            )
    except HpcllmError as exc:
        fail(exc)
    if apply:
        _print_applied(applied)
        return
    for warning in explored.submitted.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    actions = {r.spec.run_id: r for r in explored.submitted.runs}
    rows = []
    for plan in explored.plans:
        run = actions[plan.spec.run_id]
        probe = plan.spec.training.probe
        assert probe is not None, "an explore plan's runs are probes"
        start = f"{probe.start_mbs}" + ("" if plan.estimated_fit else " (estimate: none fits)")
        rows.append(
            [
                plan.spec.run_id,
                plan.label,
                str(len(plan.points)),
                start,
                f"{run.action} {run.detail}".strip(),
                run.job_id or "-",
            ]
        )
    print_listing(
        console,
        f"{experiment} on {cluster}: {len(explored.plans)} probes",
        ("probe", "setup", "points", "start MBS (estimate)", "action", "job"),
        rows,
        keep_whole=("probe", "action"),
        short={"start MBS (estimate)": "MBS₀", "points": "pts"},
        wrap=("setup", "action"),
    )
    root = explored.submitted.results_root
    console.print(
        f"then: hpcllm status {root}  ·  hpcllm collect {root}  ·  "
        f"hpcllm explore-batch {experiment} --cluster {cluster} --apply",
        soft_wrap=True,
        highlight=False,
    )


def _print_applied(applied: ApplyResult) -> None:
    for warning in applied.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    rows = []
    for c in applied.choices:
        t = c.trial
        mbs = "-" if t is None else str(t.mbs) + (f" (GA {c.grad_accum})" if c.grad_accum is not None else "")
        rows.append(
            [
                c.label,
                str(c.points),
                mbs,
                "-" if t is None else f"{t.samples_per_s_per_gpu:.4g}",
                "-" if t is None or t.memory_gib is None else f"{t.memory_gib:.2f}",
                c.probe_run,
            ]
        )
    print_listing(
        console,
        f"micro-batch sizes written to {applied.output}",
        ("setup", "points", "MBS", "samples/s per GPU", "peak GiB", "probe"),
        rows,
        keep_whole=("MBS", "probe"),
        short={"samples/s per GPU": "smp/s/GPU", "points": "pts"},
        wrap=("setup",),
    )
    console.print(f"submit it: hpcllm submit {applied.output} --cluster …", soft_wrap=True, highlight=False)
