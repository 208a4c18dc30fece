"""What each attempt ran on: versions, hosts, CPUs of every rank, into runtime.jsonl and `hpcllm status`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from engine_support import REPO, engine_cmd, make_store, write_run
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.engine.entry import run
from hpcllm.launch.manifest import Manifest, RunState, save_manifest
from hpcllm.rundir import RunDir

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in RunDir(run_dir).runtime.read_text().splitlines()]


def test_each_attempt_appends_what_it_ran_on(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    cfg = write_run(tmp_path / "r", store, train={"steps": 2}, checkpoint={"every_steps": 1})
    assert run(cfg) == 0
    monkeypatch.setenv("HPCLLM_RESTART_COUNT", "1")
    assert run(cfg) == 0  # resumed at its last step: a second attempt, a second line
    first, second = records(tmp_path / "r")
    assert (first["restart"], second["restart"]) == (0, 1)
    assert first["software"]["torch"] == torch.__version__ and first["software"]["cuda"] == torch.version.cuda
    assert first["hosts"] == [socket.gethostname()] and first["world_size"] == 1
    assert first["env"]["NCCL_DEBUG"] == "WARN" and first["env"]["OMP_NUM_THREADS"] == os.environ["OMP_NUM_THREADS"]
    (rank,) = first["ranks"]
    assert rank["cpus"] == sorted(os.sched_getaffinity(0)) and rank["torch_threads"] == torch.get_num_threads()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_every_rank_reports_the_cpus_it_was_bound_to(tmp_path: Path, store: Path) -> None:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    cfg = write_run(tmp_path / "r", store, train={"steps": 1})
    proc = subprocess.run(
        [
            "taskset",
            "-c",
            str(cpu),
            *engine_cmd(cfg, 2),
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = records(tmp_path / "r")
    assert sorted(r["rank"] for r in record["ranks"]) == [0, 1]
    assert [r["cpus"] for r in record["ranks"]] == [[cpu], [cpu]]  # what taskset gave them, not the machine's


def test_status_shows_what_the_last_attempt_ran_with(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "exp" / "cl" / "run-1")
    run_dir.path.mkdir(parents=True)
    run_dir.config.write_text("run_id: run-1\n")
    save_manifest(
        run_dir,
        Manifest(run_id="run-1", experiment="exp", cluster="cl", backend="slurm", state=RunState.COMPLETED, job_id="7"),
    )
    attempt = {
        "software": {"torch": "2.5.1+cu124", "cuda": "12.4", "nccl": "2.21.5"},
        "nodes": ["n1", "n2"],
        "ranks": [{"rank": 0, "driver": "550.54.15"}],
    }
    run_dir.runtime.write_text(
        json.dumps({**attempt, "software": {"torch": "2.4.0"}}) + "\n" + json.dumps(attempt) + "\n"
    )
    result = runner.invoke(app, ["status", "-r", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "torch 2.5.1+cu124 cuda 12.4 nccl 2.21.5 driver 550.54.15, 2 nodes" in result.output
