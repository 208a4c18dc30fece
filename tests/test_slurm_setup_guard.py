"""A failing ``setup:`` line stops a real job on the local SLURM with an ``[hpcllm] error:`` line, so
``status`` shows the reason; and on a login node of the profile's SLURM, ``submit`` refuses a point
whose token store is missing before anything reaches the queue.

Run: ``eval "$(scripts/local-slurm.sh env)" && pytest -m slurm tests/test_slurm_setup_guard.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_slurm_cluster import experiment, finished, manifest_of, only_run, wait_for
from test_slurm_site import profile
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.launch.orchestrate import submit_experiment

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


def test_a_setup_line_that_fails_stops_the_job_and_status_says_why(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "no-such-venv"
    line = f'source "{venv}/bin/activate"  # the venv was never made'
    name = profile(tmp_path, monkeypatch, "novenv", setup=[line])
    run = only_run(submit_experiment(experiment(tmp_path, demo_data, "novenv", steps=3), name, env))
    assert wait_for(lambda: finished(env, [run]), 120, "the job to fail") == {run.run_id: "failed"}
    reason = manifest_of(run).reason or ""
    assert reason.startswith(f"setup line failed: {line}"), reason
    log = next(run.path.glob("slurm-*.out")).read_text()
    assert f"[hpcllm] error: setup line failed: {line}" in log
    assert not run.metrics.exists()  # nothing was launched
    status = CliRunner().invoke(app, ["status", "-r", str(env), "--format", "json"])
    (row,) = json.loads(status.stdout)
    assert row["state"] == "failed" and row["reason"].startswith(f"setup line failed: {line}")


def test_a_missing_store_is_refused_on_the_login_node(env: Path, demo_data: Path, tmp_path: Path) -> None:
    exp = experiment(tmp_path, tmp_path / "no-store", "nostore", steps=3)
    result = CliRunner().invoke(app, ["submit", str(exp), "-c", "localslurm", "-r", str(env)])
    assert result.exit_code == 4, result.output
    assert f"data.sources[0].path: {tmp_path / 'no-store'} does not exist" in result.output
    assert not (env / "nostore").exists()  # nothing rendered, nothing queued
