"""The local backend end to end: real submit -> runner -> bash job script -> torchrun -> engine.

Integration tests (a few engine runs of the tiny model on CPU). Each builds its own results folder
and, where it needs unusual limits, its own cluster profile (HPCLLM_CLUSTERS_DIR).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from engine_support import losses_checking_reruns, uninterrupted_losses
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.launch.manifest import load_manifest
from hpcllm.launch.runstatus import collect_status
from hpcllm.rundir import RunDir, find_run_dirs

pytestmark = pytest.mark.integration
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "demo"
    result = runner.invoke(app, ["data", "demo", "--output", str(out), "--no-debian-docs"])
    assert result.exit_code == 0, result.output
    return out


def _experiment(
    tmp_path: Path,
    store: Path,
    *,
    steps: int,
    grid: dict,
    time_limit: str = "00:10:00",
    every_steps: int | None = None,
    max_restarts: int | None = None,
) -> Path:
    doc = {
        "name": "t",
        "resources": {
            "nodes": 1,
            "time": time_limit,
            **({"max_restarts": max_restarts} if max_restarts is not None else {}),
        },
        "training": {
            "model": {"preset": "tiny", "n_layers": 1},
            "train": {"steps": steps, "micro_batch_size": 4, "summary_warmup_steps": 1},
            "optim": {"lr": 3e-3},
            "schedule": {"name": "constant"},
            "parallel": {"precision": "FP_32"},
            "data": {"path": str(store), "num_workers": 0},
            "checkpoint": {"every_steps": every_steps},
            "tracking": {"tensorboard": False},  # ~1 s of import per attempt; 15 s time limits below
        },
        "grid": grid,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _profile_dir(tmp_path: Path, **overrides) -> Path:
    profile = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
    profile.update(overrides)
    d = tmp_path / "clusters"
    d.mkdir()
    (d / "local.yaml").write_text(yaml.safe_dump(profile))
    return d


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _metrics(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in run.metrics.read_text().splitlines()]


def test_smoke_grid_one_and_two_ranks(in_project, tmp_path, demo_store):
    exp = _experiment(tmp_path, demo_store, steps=8, grid={"resources.gpus_per_node": [1, 2]})
    results = tmp_path / "results"
    out = runner.invoke(app, ["submit", str(exp), "--cluster", "local", "--results", str(results), "--wait"])
    assert out.exit_code == 0, out.output
    runs = find_run_dirs(results)
    assert len(runs) == 2
    for rd in runs:
        manifest = load_manifest(rd)
        assert manifest.state.value == "completed" and manifest.exit_code == 0
        summary = json.loads(rd.summary.read_text())
        assert summary["status"] == "completed" and summary["steps_completed"] == 8
        assert rd.log_file(manifest.job_id).exists()
    assert sorted(json.loads(r.summary.read_text())["world_size"] for r in runs) == [1, 2]

    table = runner.invoke(app, ["collect", "-r", str(results), "--format", "csv"])
    assert len(table.output.strip().splitlines()) == 3
    status = runner.invoke(app, ["status", "-r", str(results)], env={"COLUMNS": "250"})
    assert status.output.count("completed") == 3  # two rows and the closing count
    assert status.output.splitlines()[-1] == "2 runs: 2 completed"

    logs = runner.invoke(app, ["logs", runs[1].run_id, "--results", str(results), "-n", "200"])
    assert logs.exit_code == 0 and f"[hpcllm] job {load_manifest(runs[1]).job_id} restart 0" in logs.output
    assert "engine status 'completed'" in logs.output

    again = runner.invoke(
        app, ["submit", str(exp), "--cluster", "local", "--results", str(results)], env={"COLUMNS": "250"}
    )
    assert again.exit_code == 0 and again.output.count("skipped completed") == 2


def test_cancel_checkpoints_and_marks_cancelled(in_project, tmp_path, demo_store):
    exp = _experiment(tmp_path, demo_store, steps=100000, grid={"resources.gpus_per_node": [2]})
    results = tmp_path / "results"
    assert runner.invoke(app, ["submit", str(exp), "--cluster", "local", "--results", str(results)]).exit_code == 0
    (rd,) = find_run_dirs(results)
    _wait_until(lambda: rd.metrics.exists() and rd.metrics.stat().st_size > 0, 120, "the first step")
    out = runner.invoke(app, ["cancel", rd.run_id[:12], "--results", str(results)])
    assert out.exit_code == 0, out.output
    _wait_until(lambda: load_manifest(rd).state.value == "cancelled", 120, "the cancellation")
    summary = json.loads(rd.summary.read_text())
    assert summary["status"] == "preempted"  # the engine saved a checkpoint before it stopped
    assert (rd.checkpoints / "latest").exists()
    assert [s.state for s in collect_status(results)] == ["cancelled"]


def test_time_limit_requeues_resumes_and_respects_the_budget(in_project, tmp_path, demo_store, monkeypatch):
    """USR1 before the limit -> checkpoint -> requeue -> resume, until the restart budget is used.

    The run needs far more steps than fit, so the outcome does not depend on the machine's speed:
    three attempts (max_restarts 2), each resuming where the previous one checkpointed. USR1 comes
    10 s into an attempt and the limit 50 s later: time enough for a loaded machine to start the
    engine and reach the step boundary where it stops (with 9 s, an attempt was once killed first).
    """
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(_profile_dir(tmp_path, signal_before_end_s=50)))
    exp = _experiment(
        tmp_path,
        demo_store,
        steps=1_000_000,
        grid={"resources.gpus_per_node": [1]},
        time_limit="00:01:00",
        max_restarts=2,
    )
    results = tmp_path / "results"
    out = runner.invoke(app, ["submit", str(exp), "--cluster", "local", "--results", str(results), "--wait"])
    assert out.exit_code == 1
    (rd,) = find_run_dirs(results)
    manifest = load_manifest(rd)
    assert manifest.state.value == "failed"
    assert manifest.reason == "restart budget exhausted (2) after time limit"
    assert [r.reason for r in manifest.restarts] == ["time limit", "time limit"]
    lines = _metrics(rd)
    assert [m["step"] for m in lines if not m["rerun"]] == list(range(1, lines[-1]["step"] + 1))
    assert sorted({m["restart"] for m in lines}) == [0, 1, 2]
    for restart in (1, 2):  # each attempt starts right after the step its predecessor saved
        first = next(m for m in lines if m["restart"] == restart)
        assert first["step"] == manifest.restarts[restart - 1].last_step + 1
    assert json.loads(rd.summary.read_text())["status"] == "preempted"
    # The losses are those of one uninterrupted run, up to past the last resume (constant lr).
    got = losses_checking_reruns(lines)
    upto = min(manifest.restarts[-1].last_step + 10, max(got))
    assert {s: got[s] for s in range(1, upto + 1)} == uninterrupted_losses(rd.config, upto, tmp_path)


def test_cancel_before_the_runner_starts_is_kept(in_project, tmp_path, monkeypatch):
    """A run cancelled while its runner has not started yet never runs (no engine needed)."""
    import signal

    from hpcllm.config.cluster import load_cluster
    from hpcllm.launch.backends.local import LocalBackend, queue_lock_path
    from hpcllm.launch.local_runner import Runner
    from hpcllm.launch.manifest import Manifest, save_manifest

    rd = RunDir(tmp_path / "results" / "e" / "local" / "r1")
    rd.path.mkdir(parents=True)
    rd.job_script.write_text("#!/bin/bash\ntouch ran\n")
    save_manifest(
        rd, Manifest(run_id="r1", experiment="e", cluster="local", backend="local", state="pending", job_id="1")
    )
    LocalBackend(load_cluster("local")).cancel(rd, load_manifest(rd))
    assert load_manifest(rd).state.value == "cancelled"
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert Runner(rd, queue_lock_path(rd), 60).run() == 1
    finally:
        signal.signal(signal.SIGTERM, old)
    assert load_manifest(rd).state.value == "cancelled"
    assert not (rd.path / "ran").exists()
