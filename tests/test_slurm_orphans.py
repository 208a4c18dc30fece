"""A ``submit`` killed between ``sbatch --hold`` and saving the manifest leaves a held job that no
manifest names; the next ``submit`` of the grid cancels it and submits the run once (issue 21).

Run: ``eval "$(scripts/local-slurm.sh env)" && pytest -m slurm tests/test_slurm_orphans.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_slurm_cluster import experiment, finished, manifest_of, wait_for
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.launch.backends.slurmtext import submitted_job_name
from hpcllm.launch.manifest import load_manifest
from hpcllm.rundir import RunDir

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

# `hpcllm submit` that SIGKILLs itself where it would record the job in the manifest, i.e. after
# `sbatch --hold` queued it: no handler runs, nothing is cleaned up.
KILLED_SUBMIT = """
import os, signal, sys
from hpcllm.launch.backends.slurm import SlurmBackend
SlurmBackend._record_submission = staticmethod(lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL))
from hpcllm.cli import main
sys.argv = ["hpcllm", *sys.argv[1:]]
main()
"""


def jobs_named(name: str) -> dict[str, tuple[str, str]]:
    """job id -> (STATE, reason) of the jobs called ``name`` that SLURM still shows."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i|%T|%r"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {i: (state, reason) for i, state, reason in (line.strip().split("|") for line in out.splitlines())}


def test_a_held_job_left_by_a_killed_submit_is_cancelled_by_the_next(
    env: Path, demo_data: Path, tmp_path: Path
) -> None:
    args = ["submit", str(experiment(tmp_path, demo_data, "orphan", steps=3)), "-c", "localslurm", "-r", str(env)]
    killed = subprocess.run([sys.executable, "-c", KILLED_SUBMIT, *args], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    (run,) = [RunDir(p) for p in (env / "orphan" / "localslurm").iterdir() if p.is_dir()]
    name = submitted_job_name(run)
    assert name is not None
    try:
        earlier = {j for j, (state, _) in jobs_named(name).items() if state == "CANCELLED"}  # a rerun's, gone
        ((orphan, held),) = ((j, s) for j, s in jobs_named(name).items() if j not in earlier)
        assert held == ("PENDING", "JobHeldUser") and load_manifest(run) is None  # no run names the job

        rerun = CliRunner().invoke(app, args)
        assert rerun.exit_code == 0, rerun.output
        line = f"cancelled 1 held job(s) that an interrupted submit left: {orphan} ({run.run_id})"
        assert line in " ".join(rerun.output.split()), rerun.output
        job_id = manifest_of(run).job_id
        assert job_id is not None and job_id != orphan
        jobs = {j: s for j, s in jobs_named(name).items() if j not in earlier}
        assert jobs.get(orphan, ("CANCELLED",))[0] == "CANCELLED"
        assert [j for j, (state, _) in jobs.items() if state in ("PENDING", "RUNNING")] in ([job_id], [])
        assert jobs.get(job_id, ("", ""))[1] != "JobHeldUser"  # released: it runs once its turn comes
        assert wait_for(lambda: finished(env, [run]), 300, "the resubmitted run to end") == {run.run_id: "completed"}
    finally:  # never leave a held job on the shared cluster: only jobs of this run's name
        for job in jobs_named(name):
            subprocess.run(["scancel", job], capture_output=True)
