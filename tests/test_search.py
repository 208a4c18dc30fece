"""Hyper-parameter search: the search section, drawing trials, halving decisions, and a real search
on the local backend (tiny model): the diverging learning rate is dropped, the best is promoted by
resuming its checkpoint, and its curve continues the rung before it exactly."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.collect.searches import SearchState, Trial, TrialState, best_trial
from hpcllm.config.experiment import Experiment
from hpcllm.config.loader import validate
from hpcllm.config.search import HalvingConfig, SearchConfig
from hpcllm.errors import ConfigError
from hpcllm.rundir import RunDir
from hpcllm.tune.draw import draw_trials
from hpcllm.tune.halving import decide

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def search(**fields: Any) -> SearchConfig:
    return validate(SearchConfig, fields, "exp.yaml: search")


# --- the search section -------------------------------------------------------------------------


def test_parameter_domains_are_parsed_and_checked() -> None:
    s = search(
        method="random",
        trials=2,
        parameters={
            "optim.lr": {"log_uniform": [1e-4, 1e-2]},
            "optim.weight_decay": {"uniform": [0, 0.2]},
            "schedule.warmup_steps": {"int": [0, 10]},
            "model.n_layers": [1, 2],
        },
    )
    assert [d.kind for d in s.parameters.values()] == ["log_uniform", "uniform", "int", "choice"]
    bad = [
        (
            {"method": "grid", "parameters": {"optim.lr": {"uniform": [0, 1]}}},
            r"exp.yaml: search: parameters: Value error, method grid needs lists \(or int ranges\); optim.lr",
        ),
        ({"method": "random", "parameters": {"optim.lr": [1, 2]}}, "search: trials: Value error, method random needs"),
        (
            {"method": "halving", "trials": 2, "parameters": {"optim.lr": [1, 2]}},
            "search: halving: Value error, method halving needs",
        ),
        (
            {"method": "random", "trials": 3, "parameters": {"optim.lr": [1, 2]}},
            "search: trials: Value error, 3 distinct configurations asked, but the parameters allow only 2",
        ),
        (
            {"method": "random", "trials": 1, "parameters": {"optim.lr": {"log_uniform": [0, 1]}}},
            "log_uniform: low 0 must be positive",
        ),
        (
            {"method": "random", "trials": 1, "parameters": {"optim.lr": {"normal": [0, 1]}}},
            r"expected a list of values, or one of \{uniform: \[low, high\]\}",
        ),
        ({"method": "random", "trials": 1, "parameters": {"lr": [1]}}, "'lr' must start with one of: run_id, seed"),
        ({"method": "random", "trials": 1, "parameters": {"train.steps": [1, 2]}}, "set by the search itself"),
    ]
    for fields, message in bad:
        with pytest.raises(ConfigError, match=message):
            search(**fields)


def test_a_key_cannot_be_both_a_grid_axis_and_searched() -> None:
    doc = {
        "name": "x",
        "training": {},
        "grid": {"optim.lr": [1, 2]},
        "search": {"method": "grid", "parameters": {"optim.lr": [1, 2]}},
    }
    with pytest.raises(ConfigError, match=re.escape("search.parameters: optim.lr also in grid/zip")):
        validate(Experiment, doc, "x.yaml")


def test_halving_rungs_grow_by_eta_up_to_the_full_length() -> None:
    assert HalvingConfig(min_steps=4, eta=3).rungs(12) == [4, 12]
    assert HalvingConfig(min_steps=10, eta=3).rungs(100) == [10, 30, 90, 100]
    assert HalvingConfig(min_steps=5, eta=2).rungs(20) == [5, 10, 20]


# --- drawing trials ------------------------------------------------------------------------------


def test_random_trials_are_reproducible_from_their_seed_and_within_their_domains() -> None:
    fields = {
        "method": "random",
        "trials": 200,
        "seed": 7,
        "parameters": {
            "optim.lr": {"log_uniform": [1e-4, 1e-2]},
            "optim.weight_decay": {"uniform": [0.0, 0.2]},
            "schedule.warmup_steps": {"int": [0, 3]},
            "model.n_layers": [1, 2],
        },
    }
    a, b = draw_trials(search(**fields)), draw_trials(search(**fields))
    assert a == b
    assert a != draw_trials(search(**{**fields, "seed": 8}))
    lrs = np.array([t["optim.lr"] for t in a])
    assert (lrs >= 1e-4).all() and (lrs <= 1e-2).all()
    # log-uniform: as many draws below the geometric midpoint (1e-3) as above it (binomial, 5 sd)
    assert abs((lrs < 1e-3).sum() - 100) < 36
    assert {t["schedule.warmup_steps"] for t in a} == {0, 1, 2, 3}
    assert all(isinstance(t["schedule.warmup_steps"], int) for t in a)
    assert {t["model.n_layers"] for t in a} == {1, 2}
    assert all(0.0 <= t["optim.weight_decay"] <= 0.2 for t in a)
    assert len({json.dumps(t, sort_keys=True) for t in a}) == 200  # distinct


def test_grid_trials_are_every_combination() -> None:
    got = draw_trials(search(method="grid", parameters={"optim.lr": [1, 2], "schedule.warmup_steps": {"int": [0, 2]}}))
    assert got == [{"optim.lr": lr, "schedule.warmup_steps": w} for lr in (1, 2) for w in (0, 1, 2)]


# --- halving decisions (pure) --------------------------------------------------------------------


def _state(scores: list[float | None], rungs: list[int], states: list[TrialState] | None = None) -> SearchState:
    trials = [
        Trial(
            index=i,
            run_id=f"t{i}",
            params={"i": i},
            state=(states[i] if states else TrialState.FINISHED),
            scores={} if (states and states[i] != TrialState.FINISHED) else {str(rungs[0]): s},
        )
        for i, s in enumerate(scores)
    ]
    return SearchState(
        experiment="e",
        cluster="c",
        method="halving",
        metric="eval_loss",
        seed=0,
        rungs=rungs,
        definition="d",
        groups=[{"label": "(base)", "point": {}, "trials": trials}],
    )


def test_successive_halving_keeps_the_best_third_and_never_a_diverged_trial() -> None:
    state = _state([5.0, 3.0, None, 4.0, 2.0, 6.0, 7.0, 1.0, None], rungs=[4, 12, 36])
    decisions = decide(state, eta=3, asynchronous=False)
    promoted = sorted(t.index for t, d in decisions if d == "promoted")
    assert promoted == [1, 4, 7]  # scores 3.0, 2.0, 1.0: the best 9 // 3
    assert sorted(t.index for t, d in decisions if d == "stopped") == [0, 2, 3, 5, 6, 8]
    assert "diverged at step 4" in state.groups[0].trials[2].reason
    assert all(t.rung == 1 and t.state == TrialState.QUEUED for t in state.trials if t.index in promoted)
    assert decide(state, eta=3, asynchronous=False) == []  # decided once


def test_synchronous_halving_waits_for_the_whole_rung_and_asha_does_not() -> None:
    running = [TrialState.FINISHED] * 3 + [TrialState.RUNNING] * 6
    sync = _state([2.0, 1.0, 3.0] + [0.0] * 6, rungs=[4, 12], states=running)
    assert decide(sync, eta=3, asynchronous=False) == []
    asha = _state([2.0, 1.0, 3.0] + [0.0] * 6, rungs=[4, 12], states=running)
    assert [(t.index, d) for t, d in decide(asha, eta=3, asynchronous=True)] == [(1, "promoted")]  # top 3 // 3


def test_only_diverged_trials_means_nobody_is_promoted() -> None:
    state = _state([None, None, None], rungs=[4, 12])
    assert [d for _, d in decide(state, eta=3, asynchronous=False)] == ["stopped"] * 3
    assert state.complete and best_trial(state, state.groups[0]) is None


# --- commands ------------------------------------------------------------------------------------


def _experiment(tmp_path: Path, store: Path, search_section: dict[str, Any], steps: int = 6) -> Path:
    doc = {
        "name": "lrsearch",
        "resources": {"nodes": 1, "gpus_per_node": 1, "time": "00:10:00"},
        "training": {
            "model": {"preset": "tiny", "n_layers": 1, "seq_len": 64},
            "train": {"steps": steps, "micro_batch_size": 4, "summary_warmup_steps": 1},
            "schedule": {"name": "cosine", "warmup_steps": 2},
            "parallel": {"precision": "FP_32"},
            "data": {"path": str(store), "num_workers": 0, "holdout": {"fraction": 0.25}},
            "eval": {"samples": 8},
            "tracking": {"tensorboard": False},
        },
        "search": search_section,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine_support import make_store

    return make_store(tmp_path_factory.mktemp("data") / "store")


def test_dry_runs_render_the_same_trials_from_the_same_seed(tmp_path: Path, store: Path, in_project: Path) -> None:
    def rendered(seed: int, results: Path) -> list[str]:
        exp = _experiment(
            tmp_path,
            store,
            {"method": "random", "trials": 3, "seed": seed, "parameters": {"optim.lr": {"log_uniform": [1e-4, 1e-1]}}},
        )
        result = runner.invoke(app, ["search", "run", str(exp), "-c", "local", "--results", str(results), "--dry-run"])
        assert result.exit_code == 0, result.output
        return [p.read_text() for p in sorted(results.glob("lrsearch/local/t*/run.yaml"))]

    first = rendered(0, tmp_path / "a")
    assert len(first) == 3
    assert rendered(0, tmp_path / "b") == first
    assert rendered(1, tmp_path / "c") != first
    lrs = [yaml.safe_load(text)["optim"]["lr"] for text in first]
    assert lrs == [
        t["optim.lr"]
        for t in draw_trials(
            search(method="random", trials=3, seed=0, parameters={"optim.lr": {"log_uniform": [1e-4, 1e-1]}})
        )
    ]


def test_commands_refuse_what_does_not_fit(tmp_path: Path, store: Path, in_project: Path) -> None:
    exp = _experiment(tmp_path, store, {"method": "grid", "parameters": {"optim.lr": [1e-3, 1e-2]}})
    result = runner.invoke(app, ["submit", str(exp), "-c", "local", "--results", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "search: this experiment is a hyper-parameter search; run it with `hpcllm search run" in result.output
    result = runner.invoke(app, ["search", "status", str(exp), "-c", "local", "--results", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no search started yet" in result.output
    no_eval = yaml.safe_load(exp.read_text())
    del no_eval["training"]["eval"]
    exp.write_text(yaml.safe_dump(no_eval))
    result = runner.invoke(app, ["search", "run", str(exp), "-c", "local", "--results", str(tmp_path / "r")])
    assert result.exit_code == 2 and "search.metric: eval_loss needs an eval section" in result.output
    halving = _experiment(
        tmp_path,
        store,
        {"method": "halving", "trials": 2, "parameters": {"optim.lr": [1e-3, 1e-2]}, "halving": {"min_steps": 6}},
    )
    result = runner.invoke(app, ["search", "run", str(halving), "-c", "local", "--results", str(tmp_path / "r")])
    assert (
        result.exit_code == 2 and "search.halving.min_steps: 6 must be below training.train.steps (6)" in result.output
    )


# --- a real search on the local backend ----------------------------------------------------------


def _hpcllm(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as a user's shell would start it (and lose it)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "hpcllm"), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _wait_until_no_run_is_active(folder: Path) -> None:
    from hpcllm.launch.runstatus import collect_status

    for _ in range(600):
        if not any(s.manifest and s.manifest.state.active for s in collect_status(folder)):
            return
        time.sleep(1.0)
    raise AssertionError(f"runs under {folder} still active after 10 minutes")


@pytest.mark.integration
def test_halving_drops_the_diverging_lr_and_promotes_by_resuming(tmp_path: Path, store: Path, in_project: Path) -> None:
    from hpcllm.engine.entry import run

    exp = _experiment(
        tmp_path,
        store,
        {
            "method": "halving",
            "trials": 3,
            "seed": 0,
            "parameters": {"optim.lr": [3e-3, 1e-2, 30.0]},
            "halving": {"min_steps": 2, "eta": 3},
        },
        steps=6,
    )
    results = tmp_path / "results"
    folder = results / "lrsearch" / "local"
    # First call: plans and submits rung 0, then returns, as if the login shell went away.
    first = _hpcllm("search", "run", str(exp), "-c", "local", "--results", str(results))
    assert first.returncode == 0, first.stderr
    assert "submitted 3 trial(s)" in first.stdout
    _wait_until_no_run_is_active(folder)
    # A new process continues from search.json and the runs: promotes, waits, finishes.
    second = _hpcllm("search", "run", str(exp), "-c", "local", "--results", str(results), "--wait", "--poll", "1")
    assert second.returncode == 0, second.stderr

    trials = {json.loads(p.read_text())["point"]["optim.lr"]: p.parent for p in folder.glob("t*/manifest.json")}

    def evals(run_dir: Path) -> dict[int, float]:
        return {
            r["step"]: r["eval_loss"]
            for r in map(json.loads, RunDir(run_dir).metrics.read_text().splitlines())
            if "eval_loss" in r
        }

    at_rung0 = {lr: evals(d)[2] for lr, d in trials.items()}
    winner = min(at_rung0, key=lambda lr: at_rung0[lr])  # read independently from the runs' own logs
    assert winner != 30.0 and at_rung0[30.0] > max(v for lr, v in at_rung0.items() if lr != 30.0)
    state = json.loads((folder / "search.json").read_text())
    by_lr = {t["params"]["optim.lr"]: t for t in state["groups"][0]["trials"]}
    assert {lr: t["state"] for lr, t in by_lr.items()} == {
        lr: ("finished" if lr == winner else "stopped") for lr in trials
    }
    assert by_lr[winner]["rung"] == 1 and max(evals(trials[winner])) == 6
    for lr in trials:
        if lr != winner:
            assert max(evals(trials[lr])) == 2  # stopped after rung 0: never trained further

    # The promoted trial resumed its rung-0 checkpoint (no retraining: steps 1-2 logged once) and
    # its curve is that of one uninterrupted 6-step run of the same config.
    promoted = [json.loads(line) for line in RunDir(trials[winner]).metrics.read_text().splitlines()]
    steps = [r["step"] for r in promoted if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    ref = tmp_path / "reference"
    ref.mkdir()
    config = yaml.safe_load(RunDir(trials[winner]).config.read_text())
    config["device"] = "cpu"
    (ref / "run.yaml").write_text(yaml.safe_dump(config))
    assert config["train"]["steps"] == 6 and config["schedule"]["total_steps"] == 6
    assert run(ref / "run.yaml") == 0
    reference = [json.loads(line) for line in RunDir(ref).metrics.read_text().splitlines()]
    assert [(r["step"], r["loss"], r["lr"]) for r in promoted if "loss" in r] == [
        (r["step"], r["loss"], r["lr"]) for r in reference if "loss" in r
    ]

    status = _hpcllm("search", "status", str(exp), "-c", "local", "--results", str(results))
    assert status.returncode == 0, status.stderr
    assert "rungs 2/6 steps" in status.stdout and "best so far:" in status.stdout
    assert f"optim.lr={winner}" in status.stdout.split("best so far:")[1]
    best = runner.invoke(app, ["collect", "-r", str(results), "--best", "--format", "json"])
    assert best.exit_code == 0, best.output
    (row,) = json.loads(best.stdout)
    assert row["optim.lr"] == winner and row["Steps"] == 6
    assert row["eval_loss"] == pytest.approx(evals(trials[winner])[6], abs=1e-4)
    assert math.isfinite(row["Samples/s"])


@pytest.mark.integration
def test_random_search_on_local_runs_scores_and_reports_its_trials_once(
    tmp_path: Path, store: Path, in_project: Path
) -> None:
    section = {"method": "random", "trials": 2, "seed": 3, "parameters": {"optim.lr": {"log_uniform": [1e-3, 3e-2]}}}
    exp = _experiment(tmp_path, store, section, steps=3)
    results = tmp_path / "results"
    folder = results / "lrsearch" / "local"
    args = ("search", "run", str(exp), "-c", "local", "--results", str(results), "--wait", "--poll", "0.5")
    first = _hpcllm(*args)
    assert first.returncode == 0, first.stderr
    assert "submitted 2 trial(s) to local" in first.stdout

    # Every trial ran to the end; its score is the eval loss its own log holds at the last step.
    drawn = draw_trials(search(**section))
    runs = sorted(folder.glob("t*/"))
    assert len(runs) == 2
    final_eval = {}
    for trial, run in zip(drawn, runs, strict=True):
        lines = [json.loads(line) for line in RunDir(run).metrics.read_text().splitlines()]
        assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3]
        assert json.loads(RunDir(run).summary.read_text())["status"] == "completed"
        assert yaml.safe_load(RunDir(run).config.read_text())["optim"]["lr"] == trial["optim.lr"]
        final_eval[run.name] = next(r["eval_loss"] for r in reversed(lines) if "eval_loss" in r)
    state = json.loads((folder / "search.json").read_text())
    assert state["method"] == "random" and state["rungs"] == [3]
    trials = state["groups"][0]["trials"]
    assert sorted(t["run_id"] for t in trials) == [run.name for run in runs]
    for t in trials:
        assert t["state"] == "finished" and t["scores"]["3"] == pytest.approx(final_eval[t["run_id"]], abs=1e-6)
    best = min(final_eval, key=final_eval.__getitem__)
    best_lr = next(t["params"]["optim.lr"] for t in trials if t["run_id"] == best)

    status = _hpcllm("search", "status", str(exp), "-c", "local", "--results", str(results))
    assert status.returncode == 0, status.stderr
    assert f"best so far: {best} (optim.lr={best_lr})" in status.stdout
    table = runner.invoke(app, ["collect", "-r", str(results), "--best", "--format", "json"])
    assert table.exit_code == 0, table.output
    (row,) = json.loads(table.stdout)
    assert row["optim.lr"] == best_lr and row["Steps"] == 3
    assert row["eval_loss"] == pytest.approx(final_eval[best], abs=1e-4)

    # Run again: the finished trials are recorded as such, nothing is submitted or trained again.
    before = {run.name: (RunDir(run).metrics.read_bytes(), RunDir(run).manifest.read_bytes()) for run in runs}
    again = _hpcllm(*args)
    assert again.returncode == 0, again.stderr
    assert "submitted" not in again.stdout and f"best so far: {best} (optim.lr={best_lr})" in again.stdout
    assert {run.name: (RunDir(run).metrics.read_bytes(), RunDir(run).manifest.read_bytes()) for run in runs} == before
    assert json.loads((folder / "search.json").read_text())["groups"] == state["groups"]


def test_reconcile_reads_what_each_trial_run_did(tmp_path: Path) -> None:
    """Manifests and summaries as the backends and the engine leave them; no scheduler needed."""
    from hpcllm.fsutil import atomic_write_json
    from hpcllm.launch.manifest import Manifest, RunState, save_manifest
    from hpcllm.tune.halving import reconcile

    cases = {  # run id: (trial state before, manifest state, steps the run completed)
        "t0": (TrialState.RUNNING, RunState.FAILED, 2),  # its job failed -> failed
        "t1": (TrialState.QUEUED, RunState.FAILED, 2),  # --retry-failed: still to submit
        "t2": (TrialState.RUNNING, RunState.COMPLETED, 4),  # finished its rung -> score
        "t3": (TrialState.QUEUED, RunState.COMPLETED, 4),  # promoted to 12, not submitted yet
        "t4": (TrialState.QUEUED, RunState.PENDING, 4),  # submitted, state not saved -> running
    }
    trials = []
    for i, (run_id, (before, manifest_state, done)) in enumerate(cases.items()):
        rd = RunDir(tmp_path / run_id)
        rd.path.mkdir()
        rd.config.write_text("{}\n")
        save_manifest(
            rd,
            Manifest(
                run_id=run_id,
                experiment="e",
                cluster="local",
                backend="local",
                state=manifest_state,
                reason="exit code 1" if manifest_state.value == "failed" else None,
            ),
        )
        atomic_write_json(rd.summary, {"status": "completed", "steps_completed": done, "eval_loss": 3.25})
        rd.metrics.write_text(json.dumps({"step": done, "eval_loss": 3.25}) + "\n")
        rung = 1 if run_id == "t3" else 0
        trials.append(Trial(index=i, run_id=run_id, params={}, rung=rung, state=before))
    state = SearchState(
        experiment="e",
        cluster="local",
        method="halving",
        metric="eval_loss",
        seed=0,
        rungs=[4, 12],
        definition="d",
        groups=[{"label": "(base)", "point": {}, "trials": trials}],
    )
    reconcile(state, tmp_path)
    got = {t.run_id: (t.state.value, t.scores) for t in state.trials}
    assert got == {
        "t0": ("failed", {}),
        "t1": ("queued", {}),
        "t2": ("finished", {"4": 3.25}),
        "t3": ("queued", {}),
        "t4": ("running", {}),
    }
    assert state.trials[0].reason == "exit code 1"
