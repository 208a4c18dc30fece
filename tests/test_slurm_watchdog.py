"""The hang watchdog on the real local SLURM: one rank of a 2-node run stops, and the job names it,
dumps stacks, requeues itself without its node, and ends at the uninterrupted run's loss.

Nothing is mocked: sbatch, srun + torchrun (c10d rendezvous, gloo) on the logical nodes n1..n4;
the stop is ``HPCLLM_FAULT_STOP_RANK_AT`` (docs/run-contract.md, "Hangs"), which the engine reads on
the first attempt only. Run: ``pytest -m slurm tests/test_slurm_watchdog.py`` with the cluster up.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_support import losses_checking_reruns
from test_slurm_cluster import experiment, finished, manifest_of, metrics, only_run, scontrol_job, wait_for

from hpcllm.launch.orchestrate import submit_experiment
from hpcllm.launch.slurmcmd import hostnames

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

TIMEOUT_S = 20  # watchdog.timeout_s: small, so the test is quick; the default (600) suits GPUs


def test_a_stopped_rank_is_named_dumped_and_the_run_requeued_without_its_node(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps, every, stop_step = 30, 10, 17
    exp = experiment(tmp_path, demo_data, "hang", steps=steps, nodes=2, every=every, max_restarts=2)
    doc = yaml.safe_load(exp.read_text())
    doc["training"]["watchdog"] = {"timeout_s": TIMEOUT_S, "heartbeat_every_s": 1}
    exp.write_text(yaml.safe_dump(doc, sort_keys=False))

    reference = only_run(submit_experiment(exp, "localslurm", tmp_path / "reference"))
    monkeypatch.setenv("HPCLLM_FAULT_STOP_RANK_AT", f"1:{stop_step}")  # sbatch --export=ALL carries it
    monkeypatch.setenv("TORCH_FR_BUFFER_SIZE", "2000")  # PyTorch's flight recorder (gloo records too)
    run = only_run(submit_experiment(exp, "localslurm", env))

    states = wait_for(lambda: finished(env, [run]), 600, "the hung run to be requeued and finish")
    wait_for(lambda: finished(tmp_path / "reference", [reference]), 300, "the reference run to finish")
    manifest = manifest_of(run)
    assert states == {run.run_id: "completed"}, manifest.reason

    # The verdict names rank 1, its node and the step it never started, within T plus a poll or two.
    verdict = json.loads(run.watchdog_verdict.read_text())
    victim = verdict["nodes"][0]
    assert verdict["ranks"] == [1] and verdict["step"] == stop_step and verdict["restart"] == 0
    assert verdict["reported_ranks"] == [0, 1]  # both ranks' threads saw the stall and reported
    detection_s = verdict["detected_time"] - verdict["last_progress_time"]
    assert TIMEOUT_S <= detection_s <= TIMEOUT_S + 30, detection_s
    print(f"detected {detection_s:.1f} s after the last progress (timeout {TIMEOUT_S} s)")

    # Every rank's Python stacks: the stopped rank inside the fault, rank 0 waiting in a collective.
    stopped = (run.watchdog_dir / "stacks-rank1.txt").read_text()
    waiting = (run.watchdog_dir / "stacks-rank0.txt").read_text()
    assert "step_started" in stopped and f"on {victim}" in stopped
    assert "train_step" in waiting and "step_started" not in waiting
    # The flight recorder's dumps of both ranks (their last collectives; the hung exchange itself is
    # FSDP's pairwise send/recv on CPU, which gloo's recorder leaves out: on GPUs NCCL records it).
    for r in (0, 1):
        flight = pickle.loads((run.watchdog_dir / f"flight-rank{r}.pkl").read_bytes())
        assert flight["entries"] and flight["entries"][-1]["profiling_name"].startswith("gloo:")

    # The manifest (and so `status`) names rank, node and step; the node is out of the next attempt.
    restart = manifest.restarts[0]
    assert restart.failed_nodes == [victim] and f"rank 1 on {victim}" in restart.reason
    assert f"step {stop_step}" in restart.reason and victim in manifest.exclude_nodes
    assert victim in hostnames(restart.nodes or "") and victim not in hostnames(manifest.nodes or "")
    assert len(manifest.restarts) == 1
    assert scontrol_job(manifest.job_id or "").get("ExcNodeList") == victim  # set on the requeued job
    status = subprocess.run(
        [str(Path(sys.executable).parent / "hpcllm"), "status", str(env), "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (row,) = json.loads(status.stdout)
    assert f"rank 1 on {victim}" in row["reason"] and row["restarts"] == 1

    # Resumed from the step-10 checkpoint, every step once, the uninterrupted run's losses.
    records = metrics(run)
    assert [r["step"] for r in records if not r["rerun"]] == list(range(1, steps + 1))
    assert losses_checking_reruns(records) == losses_checking_reruns(metrics(reference))
    final = json.loads(run.summary.read_text())
    assert final["final_loss"] == json.loads(reference.summary.read_text())["final_loss"]
