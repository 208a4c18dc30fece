"""``hpcllm search run|status``: hyper-parameter searches over ordinary runs (docs/search.md)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from hpcllm.cli.common import console, fail, finite, results_option
from hpcllm.errors import HpcllmError

if TYPE_CHECKING:
    from hpcllm.collect.searches import SearchState
    from hpcllm.tune.search import Step

search_app = typer.Typer(
    help="Hyper-parameter searches: grid, random, successive halving (ASHA).", no_args_is_help=True
)

_COLORS = {"finished": "green", "running": "cyan", "queued": "yellow", "failed": "red", "stopped": "magenta"}


@search_app.command("run")
def run(
    experiment: Path = typer.Argument(..., help="Experiment YAML with a search: section."),
    cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster profile name."),
    results: Path = results_option(),
    account: str | None = typer.Option(None, "--account", "-A", help="Project to charge (beats $HPCLLM_ACCOUNT)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render the first rung's trials, submit nothing."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Submit failed trials again (they resume)."),
    wait: bool = typer.Option(False, "--wait", help="Keep advancing until the search has finished."),
    poll: float = typer.Option(30.0, "--poll", min=0.1, callback=finite, help="Seconds between checks with --wait."),
) -> None:
    """Start or continue a search: record finished trials, promote or stop them, submit what is due.

    Safe to run again at any time (after a logout, a crash, or to check on it): the search's state
    is in search.json beside the trials, and the runs say what they did.
    """
    from hpcllm.tune.search import advance

    try:
        step = advance(experiment, cluster, results, account=account, dry_run=dry_run, retry_failed=retry_failed)
        _print_step(step)
        if dry_run:
            return
        with console.status("waiting for the trials") as spinner:
            while wait and not step.state.complete:
                running = sum(t.state.value == "running" for t in step.state.trials)
                spinner.update(f"waiting for {running} running trial(s) of {len(step.state.trials)}")
                time.sleep(poll)
                step = advance(experiment, cluster, results, account=account)
                _print_step(step, quiet=True)
    except HpcllmError as exc:
        fail(exc)
    _print_table(step.state)


@search_app.command("status")
def status(
    experiment: Path = typer.Argument(..., help="Experiment YAML with a search: section."),
    cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster profile name."),
    results: Path = results_option(),
) -> None:
    """Trials, rungs and the best so far (reads the runs; changes nothing)."""
    from hpcllm.tune.search import search_status

    try:
        state = search_status(experiment, cluster, results)
    except HpcllmError as exc:
        fail(exc)
    _print_table(state)
    waiting = [t for t in state.trials if t.state.value == "finished" and not state.done(t)]
    queued = [t for t in state.trials if t.state.value == "queued"]
    if waiting or queued:
        console.print(
            f"{len(waiting) + len(queued)} trial(s) wait for a decision or a submission: "
            f"hpcllm search run {experiment} --cluster {cluster}",
            soft_wrap=True,
            highlight=False,
        )


def _print_step(step: Step, quiet: bool = False) -> None:
    if step.rendered_only:
        console.print(
            f"rendered {len(step.state.trials)} trial(s) under {step.folder} (dry run, nothing submitted)",
            soft_wrap=True,
            highlight=False,
        )
        return
    for trial, decision in step.decisions:
        console.print(
            f"{decision}: {trial.run_id} ({_params(trial.params)})"
            + (f": {trial.reason}" if decision == "stopped" else f" -> rung {trial.rung}"),
            soft_wrap=True,
            highlight=False,
        )
    if step.submitted:
        console.print(f"submitted {len(step.submitted)} trial(s) to {step.state.cluster}", highlight=False)
    elif not quiet and not step.state.complete:
        console.print("nothing to submit now; trials are still running", highlight=False)


def _params(params: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _print_table(state: SearchState) -> None:
    from hpcllm.collect.searches import best_trial

    title = f"search {state.experiment} on {state.cluster}: {state.method}, minimise {state.metric}" + (
        f", rungs {'/'.join(map(str, state.rungs))} steps" if len(state.rungs) > 1 else ""
    )
    table = Table(title=title)
    keys = list(state.groups[0].trials[0].params) if state.groups and state.groups[0].trials else []
    multi = len(state.groups) > 1
    for col in (["group"] if multi else []) + ["trial", *keys, "state", *[f"@{s}" for s in state.rungs], "best"]:
        table.add_column(col)
    for group in state.groups:
        best = best_trial(state, group)
        for t in group.trials:
            state_text = "done" if state.done(t) and t.state.value == "finished" else t.state.value
            scores = []
            for steps in state.rungs:
                if str(steps) not in t.scores:
                    scores.append("")
                else:
                    value = t.scores[str(steps)]
                    scores.append("diverged" if value is None or not math.isfinite(value) else f"{value:.4f}")
            table.add_row(
                *([group.label] if multi else []),
                f"t{t.index:03d}",
                *[str(t.params[k]) for k in keys],
                f"[{_COLORS.get(t.state.value, 'white')}]{state_text}[/]",
                *scores,
                "*" if t is best else "",
            )
    console.print(table)
    for group in state.groups:
        best = best_trial(state, group)
        where = f" ({group.label})" if multi else ""
        if best is None:
            console.print(f"best so far{where}: none yet", highlight=False)
            continue
        steps = max(int(s) for s, v in best.scores.items() if v is not None)
        console.print(
            f"best so far{where}: {best.run_id} ({_params(best.params)}): {state.metric} "
            f"{best.scores[str(steps)]:.4f} at step {steps}",
            soft_wrap=True,
            highlight=False,
        )
