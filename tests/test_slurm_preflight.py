"""The pre-flight on the real local SLURM: one logical node made slow is named, left out of the
training (``--spare-nodes 1``: 3 nodes allocated, the best 2 train) and excluded from now on; and
the energy columns of the same run, empty on CPU with the reasons.

``HPCLLM_FAULT_SLOW_NODE=#1:30`` slows the pre-flight's second node (docs/run-contract.md, "Pre-flight");
nothing else is faked. Run: ``pytest -m slurm tests/test_slurm_preflight.py`` with the cluster up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_slurm_cluster import experiment, finished, manifest_of, only_run, wait_for

from hpcllm.collect.table import build_table, completed_records
from hpcllm.launch.orchestrate import submit_experiment

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


def test_a_slow_node_is_named_and_left_out_with_a_spare(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = experiment(tmp_path, demo_data, "preflight", steps=6, nodes=2, every=100)
    monkeypatch.setenv(
        "HPCLLM_FAULT_SLOW_NODE", "#1:30"
    )  # the logical nodes share 2 loaded cores  # sbatch --export=ALL carries it
    run = only_run(submit_experiment(exp, "localslurm", env, resources={"preflight": True, "spare_nodes": 1}))
    assert "#SBATCH --nodes=3" in run.job_script.read_text()

    states = wait_for(lambda: finished(env, [run]), 400, "the run to finish")
    manifest = manifest_of(run)
    assert states == {run.run_id: "completed"}, manifest.reason

    verdict = json.loads(run.preflight.read_text())
    slow = verdict["node_order"][1]
    assert len(verdict["nodes"]) == 3 and list(verdict["slow_nodes"]) == [slow]
    assert "gemm_tflops" in verdict["slow_nodes"][slow] and verdict["nodes"][slow]["gemm_tflops_ratio"] < 0.3
    assert verdict["inter_busbw_gbs"] > 0 and len(verdict["links"]) == 3  # every pair of 3 nodes measured once
    print(f"pre-flight: {verdict['elapsed_s']:.1f} s for 3 nodes ({verdict['elapsed_s_per_node']:.2f} s per node)")

    # Named in the manifest (and status), excluded from requeues and later submits, not trained on.
    assert slow in manifest.slow_nodes and slow in manifest.exclude_nodes
    trained = json.loads(run.runtime.read_text().splitlines()[-1])["nodes"]
    assert len(set(trained)) == 2 and slow not in trained
    log = run.log_file(manifest.job_id or "").read_text()
    assert f"left out {slow}" in log and "[hpcllm] pre-flight of 3 node(s)" in log
    status = subprocess.run(
        [str(Path(sys.executable).parent / "hpcllm"), "status", str(env), "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (row,) = json.loads(status.stdout)
    assert f"pre-flight: slow {slow}" in row["reason"]

    # Energy: no NVML on CPU, and this cluster's accounting counts no energy; the table's columns say so.
    summary = json.loads(run.summary.read_text())
    assert summary["tokens_per_joule"] is None and summary["energy_note"] == "no GPU energy counter on a cpu run"
    assert manifest.consumed_energy_j is None
    assert "the site accounts no energy (sacct ConsumedEnergy 0)" in (manifest.energy_note or "")
    (cells,) = build_table(completed_records(env), "tokens_per_joule,kwh_per_btok,energy").rows
    assert cells["tokens_per_joule"] is None and cells["kwh_per_btok"] is None
    assert "cpu run" in cells["energy"] and "the site accounts no energy" in cells["energy"]
