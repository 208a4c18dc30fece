"""explore-batch through the SLURM backend: the probe is an sbatch job like any run (2 logical nodes).

Helpers (the experiment, polling) come from test_slurm_cluster.py, the fixtures (the local
cluster's environment, the demo data) from tests/slurm_fixtures.py.
Run: ``pytest -m slurm tests/test_slurm_explore.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_slurm_cluster import experiment, finished, wait_for
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.probe import ProbeReport
from hpcllm.rundir import RunDir
from hpcllm.tune.explore import ProbeSettings, explore_batch

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


def test_probe_runs_as_a_slurm_job_and_apply_feeds_submit(env: Path, demo_data: Path, tmp_path: Path) -> None:
    exp = experiment(tmp_path, demo_data, "probe_slurm", steps=4, nodes=2, grid={"train.micro_batch_size": [2, 8]})
    result = explore_batch(
        exp, "localslurm", env, settings=ProbeSettings(max_mbs=4, steps=1, warmup_steps=0, min_gain=None)
    )
    (plan,) = result.plans
    assert plan.spec.world_size == 2 and result.submitted.runs[0].action == "submitted"
    run_dir = RunDir.of(env, "probe_slurm", "localslurm", plan.spec.run_id)
    states = wait_for(lambda: finished(env, [run_dir]), 600, "the probe job")
    assert states == {plan.spec.run_id: "completed"}, run_dir.path / f"slurm-{result.submitted.runs[0].job_id}.out"
    report = ProbeReport.model_validate_json(run_dir.probe.read_text())
    # The localslurm budget (2 GiB per rank) holds the tiny model at the cap: one size, measured.
    assert report.world_size == 2 and report.largest_fit == 4 and report.stop_reason == "max_mbs"
    assert report.trials[0].samples_per_s_per_gpu > 0 and report.trials[0].mem_peak_gib < 2

    out = tmp_path / "tuned.yaml"
    runner = CliRunner()
    applied = runner.invoke(
        app,
        ["explore-batch", str(exp), "--cluster", "localslurm", "--apply", "--results", str(env), "--output", str(out)],
    )
    assert applied.exit_code == 0, applied.output
    assert yaml.safe_load(out.read_text())["zip"] == [{"train.micro_batch_size": [4]}]
    dry = runner.invoke(app, ["submit", str(out), "--cluster", "localslurm", "--dry-run", "--results", str(env)])
    assert dry.exit_code == 0, dry.output
