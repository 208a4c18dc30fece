"""explore-batch end to end on the local backend, with a CPU memory budget that has a known answer.

The model is the tiny preset with a 32768-token vocabulary at seq 256: its loss buffers cost about
150 MB per sequence for little compute, so neighbouring micro-batch sizes differ in peak resident
memory far more than one process differs from the next (~2 MB). A reference process measures MBS
4 and 5 (two sizes of one probe, no budget, no search); the profile's budget is set between them,
so the largest size that fits is known to be 4. The probe must find it through the submit path,
survive the over-budget steps, find it again in a second, independent run, and --apply must give
a file that submit accepts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from engine_support import make_store, run_engine, write_run
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.probe import ProbeReport
from hpcllm.launch.manifest import RunState, load_manifest
from hpcllm.launch.runstatus import collect_status
from hpcllm.rundir import RunDir
from hpcllm.tune.explore import ProbeSettings, explore_batch

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
MODEL = {"preset": "tiny", "seq_len": 1024, "vocab_size": 32768}  # ~0.2 GiB per sample: MBS 4 and 5 far apart
SETTINGS = ProbeSettings(max_mbs=16, steps=1, warmup_steps=0, min_gain=None)  # memory decides, not timing


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


@pytest.fixture(scope="module")
def reference_peaks(tmp_path_factory: pytest.TempPathFactory, store: Path) -> dict[int, float]:
    """Peak resident GiB of one rank at MBS 4 and 5, measured without any budget or search."""
    run = tmp_path_factory.mktemp("reference") / "run"
    path = write_run(
        run, store, model=MODEL, probe={"start_mbs": 4, "max_mbs": 5, "steps": 1, "warmup_steps": 0, "min_gain": None}
    )
    proc = run_engine(path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = ProbeReport.model_validate_json((run / "probe.json").read_text())
    peaks = {t.mbs: t.mem_peak_gib for t in report.trials}
    assert set(peaks) == {4, 5} and all(t.fits for t in report.trials)
    assert peaks[5] - peaks[4] > 0.1, peaks  # far apart compared with process-to-process noise
    return peaks


def _setup(tmp_path: Path, store: Path, budget_gib: float) -> tuple[Path, Path]:
    """A profile like `local` (1 rank) with ``budget_gib`` per rank, and a two-point experiment."""
    profile = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
    profile.update(name="budgeted", gpus_per_node=1, gpu_memory_gib=round(budget_gib, 4))
    cluster = tmp_path / "budgeted.yaml"
    cluster.write_text(yaml.safe_dump(profile))
    experiment = {
        "name": "mbs",
        "resources": {"nodes": 1, "time": "00:15:00"},
        "training": {
            "model": MODEL,
            "train": {"steps": 4, "micro_batch_size": 1},
            "parallel": {"precision": "FP_32"},
            "data": {"path": str(store), "num_workers": 0},
        },
        "grid": {"train.micro_batch_size": [1, 2]},  # two points, one setup: one probe
    }
    exp = tmp_path / "mbs.yaml"
    exp.write_text(yaml.safe_dump(experiment))
    return exp, cluster


def _probe(results: Path, exp: Path, cluster: Path) -> ProbeReport:
    """Submit the experiment's probe through the local backend, wait for it, return its report."""
    result = explore_batch(exp, str(cluster), results, settings=SETTINGS)
    (plan,) = result.plans
    run_dir = RunDir.of(results, "mbs", "budgeted", plan.spec.run_id)
    deadline = time.monotonic() + 900  # a bound on a hang, not a timing assertion
    while any(s.state in ("pending", "running") for s in collect_status(results)):
        assert time.monotonic() < deadline, "the probe job did not finish"
        time.sleep(1.0)
    manifest = load_manifest(run_dir)
    assert manifest is not None and manifest.state == RunState.COMPLETED, (
        manifest,
        (run_dir.path / "local-runner.log").read_text() if run_dir.path.exists() else "",
    )
    return ProbeReport.model_validate_json(run_dir.probe.read_text())


def test_probe_finds_the_known_largest_mbs_twice_and_apply_feeds_submit(
    tmp_path: Path, store: Path, reference_peaks: dict[int, float]
) -> None:
    budget = (reference_peaks[4] + reference_peaks[5]) / 2
    exp, cluster = _setup(tmp_path, store, budget)

    first = _probe(tmp_path / "a", exp, cluster)
    assert first.largest_fit == 4, first.trials
    assert first.stop_reason == "memory" and first.memory_budget_gib == pytest.approx(budget, abs=1e-3)
    assert any(t.status == "over_budget" for t in first.trials)  # and the job still completed
    assert all(t.mem_peak_gib <= budget for t in first.trials if t.fits)

    second = _probe(tmp_path / "b", exp, cluster)
    assert second.largest_fit == 4
    assert [(t.mbs, t.fits) for t in second.trials] == [(t.mbs, t.fits) for t in first.trials]

    runner = CliRunner()
    out = tmp_path / "tuned.yaml"
    # The margin depends on the measured peaks (which vary by machine): MBS 4 keeps half of its headroom
    # free, so it clears the margin; a margin wider than every trial's headroom leaves nothing to write.
    margin = (budget - reference_peaks[4]) / budget / 2
    too_wide = 1 - min(t.mem_peak_gib for t in first.trials) / budget + 0.01
    apply = ["explore-batch", str(exp), "--cluster", str(cluster), "--apply", "--results", str(tmp_path / "a")]
    refused = runner.invoke(app, [*apply, "--output", str(out), "--margin", f"{too_wide:.4f}"])
    assert refused.exit_code == 2 and "fits" in refused.output and not out.exists(), refused.output
    applied = runner.invoke(app, [*apply, "--output", str(out), "--margin", f"{margin:.6f}"])
    assert applied.exit_code == 0, applied.output
    tuned = yaml.safe_load(out.read_text())
    (mbs,) = tuned["zip"][0]["train.micro_batch_size"]  # the two points collapse into one
    fitted_with_margin = {t.mbs for t in first.trials if t.fits and t.mem_peak_gib <= (1 - margin) * budget}
    assert mbs in fitted_with_margin and 4 in fitted_with_margin
    submitted = runner.invoke(
        app,
        ["submit", str(out), "--cluster", str(cluster), "--dry-run", "--results", str(tmp_path / "a")],
        env={"COLUMNS": "250"},
    )
    assert submitted.exit_code == 0, submitted.output
    assert "1 run" in submitted.output and "skipped" not in submitted.output

    collected = runner.invoke(app, ["collect", "-r", str(tmp_path / "a")], env={"COLUMNS": "250"})
    assert collected.exit_code == 0, collected.output
    assert "Batch-size probes" in collected.output and "over_budget" in collected.output
    assert "no completed runs" in collected.output  # the probe is not a row of the scaling table
