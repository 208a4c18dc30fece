"""A diverged run (inf/NaN loss, gradient norm or weights) stops with a clear failure, never
checkpoints non-finite weights, and is not requeued: engine, local backend, SLURM hooks, SLURM.

Divergence here is real, not injected: a learning rate of 1e30 makes the second step's gradient
norm NaN (the first update sends the weights to ~1e30) on every rank count.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from engine_support import make_store, run_engine, running_slurm_run, write_run
from test_ckpt_checkpointer import make_state, run_steps

from hpcllm.config.training import CheckpointConfig
from hpcllm.engine.checkpoint import Checkpointer, list_checkpoints, read_latest_pointer
from hpcllm.engine.guards import NonFiniteError, check_step
from hpcllm.launch.jobhooks import JobContext, on_end
from hpcllm.launch.manifest import RunState, load_manifest
from hpcllm.launch.orchestrate import submit_experiment
from hpcllm.launch.runstatus import collect_status
from hpcllm.rundir import RunDir, find_run_dirs

REPO = Path(__file__).resolve().parents[1]
DIVERGING = {"optim": {"lr": 1e30}}
SAVE_EVERY_STEP = {"every_steps": 1, "keep_last": 10, "at_end": True}


@pytest.mark.parametrize(
    ("loss", "grad_norm", "what"),
    [
        (math.nan, 1.0, "loss is nan"),
        (1.0, math.inf, "gradient norm is inf"),
        (-math.inf, math.nan, "loss is -inf and gradient norm is nan"),
    ],
)
def test_check_step_names_the_step_and_the_value(loss: float, grad_norm: float, what: str) -> None:
    with pytest.raises(NonFiniteError, match=f"^step 7: {what}: training diverged") as info:
        check_step(7, loss, grad_norm)
    assert info.value.step == 7
    check_step(7, 1e30, 0.0)  # large is not divergence


def test_no_checkpoint_of_non_finite_weights(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    state = make_state()
    ckpt = Checkpointer(run, CheckpointConfig(every_steps=2, keep_last=5))
    run_steps(state, ckpt, 2)
    saved = {k: v.clone() for k, v in state.model.state_dict().items()}
    with torch.no_grad():
        next(state.model.parameters())[0, 0] = math.nan
    state.step += 1
    for save in (lambda: ckpt.maybe_save(state, force=True), lambda: ckpt.save(state)):  # preemption, end
        with pytest.raises(NonFiniteError, match="step 3: the weights hold inf or NaN"):
            save()
    assert [c.step for c in list_checkpoints(run.checkpoints)] == [2]
    assert read_latest_pointer(run.checkpoints) == run.checkpoints / "step_2"
    assert not list(run.checkpoints.glob(".tmp_*"))
    fresh = make_state(seed=5)
    assert Checkpointer(run, CheckpointConfig()).load_latest(fresh)
    for name, value in fresh.model.state_dict().items():
        assert torch.equal(value, saved[name]), name


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


@pytest.mark.integration
@pytest.mark.parametrize("nproc", [1, 2], ids=["1rank", "2ranks-fsdp-async"])
def test_diverged_engine_fails_with_the_step_and_keeps_only_finite_checkpoints(
    tmp_path: Path, store: Path, nproc: int
) -> None:
    from hpcllm.engine.export import load_model_state

    run_dir = tmp_path / "run"
    checkpoint = {**SAVE_EVERY_STEP, "async_save": nproc > 1}
    config = write_run(run_dir, store, train={"steps": 6}, checkpoint=checkpoint, **DIVERGING)
    proc = run_engine(config, nproc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # One clear line from rank 0; no traceback through our code (torchrun adds its own on 2 ranks).
    assert proc.stderr.count("error: step 2: gradient norm is nan: training diverged") == 1, proc.stderr
    assert "hpcllm/engine/" not in proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["failed_step"], summary["steps_completed"]) == ("failed", 2, 2)
    assert summary["error"].startswith("step 2: gradient norm is nan: training diverged")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and math.isnan(rows[1]["grad_norm"])  # the evidence is logged
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [1]  # not 2, not a final one
    weights = load_model_state(run_dir / "checkpoints" / "step_1")
    assert all(torch.isfinite(t).all() for t in weights.values())


# --- not requeued: the local runner and the batch script's hooks -----------------------------------


def test_hooks_do_not_requeue_a_failed_attempt_and_say_why(tmp_path: Path) -> None:
    """Even with a USR1 (time limit near) arriving in the same step: failed beats preempted."""
    rd = running_slurm_run(tmp_path / "run", max_restarts=3)
    error = "step 9: loss is nan: training diverged, stopped without saving a checkpoint"
    rd.summary.write_text(json.dumps({"status": "failed", "error": error, "failed_step": 9}))
    ctx = JobContext(run_dir=rd, job_id="42", nodelist="n1", restart_count=0)
    assert on_end(ctx, 1, "USR1") == "exit 1"
    manifest = load_manifest(rd)
    assert manifest.state == RunState.FAILED and manifest.restarts == []
    assert error in manifest.reason


def diverging_experiment(tmp_path: Path, store: Path, name: str) -> Path:
    doc = {
        "name": name,
        "resources": {"nodes": 1, "time": "00:10:00", "max_restarts": 2, "gpus_per_node": 1},
        "training": {
            "device": "cpu",
            "model": {"preset": "tiny", "n_layers": 1, "seq_len": 64},
            "train": {"steps": 50},
            "parallel": {"precision": "FP_32"},
            "data": {"path": str(store), "num_workers": 0},
            "checkpoint": SAVE_EVERY_STEP,
            **DIVERGING,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def wait_finished(results: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        (status,) = collect_status(results)
        if status.state not in ("pending", "running"):
            return status.state
        time.sleep(0.5)
    pytest.fail(f"the run under {results} did not finish in {timeout_s:.0f} s")


def assert_failed_once_and_not_requeued(results: Path) -> None:
    (rd,) = find_run_dirs(results)
    manifest = load_manifest(rd)
    assert manifest.state == RunState.FAILED and manifest.restarts == [], manifest
    assert "step 2: gradient norm is nan: training diverged" in manifest.reason
    log = rd.log_file(manifest.job_id).read_text()
    assert log.count(f"[hpcllm] job {manifest.job_id} restart") == 1, log  # one attempt only
    assert [c.step for c in list_checkpoints(rd.checkpoints)] == [1]


@pytest.mark.integration
def test_local_backend_does_not_requeue_a_diverged_run(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(REPO / "clusters"))
    results = tmp_path / "results"
    submit_experiment(diverging_experiment(tmp_path, store, "diverge"), "local", results)
    assert wait_finished(results, 300) == "failed"
    assert_failed_once_and_not_requeued(results)


@pytest.mark.slurm
@pytest.mark.integration
def test_slurm_does_not_requeue_a_diverged_run(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slurm_gate import slurm_env

    monkeypatch.setenv("SLURM_CONF", slurm_env().get("SLURM_CONF", ""))
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(REPO / "clusters"))
    # The job inherits this environment (sbatch --export=ALL): this interpreter, this checkout.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    results = tmp_path / "results"
    submit_experiment(diverging_experiment(tmp_path, store, "divergeslurm"), "localslurm", results)
    assert wait_finished(results, 600) == "failed"
    assert_failed_once_and_not_requeued(results)
