"""A ``submit`` killed between ``sbatch --hold`` and saving the manifest leaves a held job that no
manifest names; the next ``submit`` of the grid cancels it and submits the run once (issue 21).

Run: ``eval "$(scripts/local-slurm.sh env)" && pytest -m slurm tests/test_slurm_orphans.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_slurm_cluster import array_profile, experiment, finished, manifest_of, wait_for
from typer.testing import CliRunner

from hpcllm.cli import app
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


def jobs_named(prefix: str) -> dict[str, tuple[str, str]]:
    """job id (an array's: its id) -> (STATE, reason) of this user's jobs whose name starts with ``prefix``
    that SLURM still shows."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--user={os.getuid()}", "--format=%i|%j|%T|%r"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = (line.strip().split("|") for line in out.splitlines())
    return {i.split("_")[0]: (state, reason) for i, name, state, reason in rows if name.startswith(prefix)}


def kill_submit_then_rerun(args: list[str], prefix: str, grid: Path) -> None:
    """Kill a submit of ``args`` after its ``sbatch --hold``: it leaves a held job (named ``prefix``...)
    that no manifest in ``grid`` names. Submit again: that job is cancelled, in one line naming it and
    its run (an array: "job array"), and the grid is submitted once, released."""
    earlier = set(jobs_named(prefix))  # a rerun of this test's, gone (names hash the config, paths included)
    killed = subprocess.run([sys.executable, "-c", KILLED_SUBMIT, *args], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    try:
        ((orphan, held),) = ((j, s) for j, s in jobs_named(prefix).items() if j not in earlier)
        runs = sorted(p for p in grid.iterdir() if p.is_dir())
        assert held == ("PENDING", "JobHeldUser") and [load_manifest(RunDir(p)) for p in runs] == [None] * len(runs)
        rerun = CliRunner().invoke(app, args)
        assert rerun.exit_code == 0, rerun.output
        owner = runs[0].name if len(runs) == 1 else "job array"
        line = f"cancelled 1 held job(s) that an interrupted submit left: {orphan} ({owner})"
        assert line in " ".join(rerun.output.split()), rerun.output
        jobs = {j: s for j, s in jobs_named(prefix).items() if j not in earlier}
        assert jobs.pop(orphan, ("CANCELLED",))[0] == "CANCELLED"
        ((job_id, (_, reason)),) = jobs.items()  # submitted once, and released: it runs when its turn comes
        assert reason != "JobHeldUser" and {manifest_of(RunDir(p)).job_id.split("_")[0] for p in runs} == {job_id}
    finally:  # never leave a held job on the shared cluster (a failure above): only this test's, by name
        for job, (_, reason) in jobs_named(prefix).items():
            if job not in earlier and reason == "JobHeldUser":
                subprocess.run(["scancel", job], capture_output=True)


def test_a_held_job_left_by_a_killed_submit_is_cancelled_by_the_next(
    env: Path, demo_data: Path, tmp_path: Path
) -> None:
    args = ["submit", str(experiment(tmp_path, demo_data, "orphan", steps=3)), "-c", "localslurm", "-r", str(env)]
    kill_submit_then_rerun(args, "hpcllm-orphan-", env / "orphan" / "localslurm")
    (run,) = [RunDir(p) for p in (env / "orphan" / "localslurm").iterdir() if p.is_dir()]
    assert wait_for(lambda: finished(env, [run]), 300, "the resubmitted run to end") == {run.run_id: "completed"}


def test_a_held_job_array_left_by_a_killed_submit_is_cancelled_by_the_next(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    array_profile(tmp_path, monkeypatch)  # `arrayslurm`: the grid's two points go in one job array
    exp = experiment(tmp_path, demo_data, "orphanarr", steps=3, grid={"train.micro_batch_size": [4, 8]})
    grid = env / "orphanarr" / "arrayslurm"
    kill_submit_then_rerun(["submit", str(exp), "-c", "arrayslurm", "-r", str(env)], "hpcllm-orphanarr-array-", grid)
    runs = [RunDir(p) for p in grid.iterdir() if p.is_dir()]
    assert set(wait_for(lambda: finished(env, runs), 300, "the resubmitted array to end").values()) == {"completed"}


# The same, killed where it would release the job: the manifest names the job, which stays held.
KILLED_BEFORE_RELEASE = KILLED_SUBMIT.replace(
    "SlurmBackend._record_submission = staticmethod(",
    "import hpcllm.launch.backends.slurm as slurm\nslurm._release = (",
)


def test_a_job_left_held_after_its_manifest_says_how_it_starts(env: Path, demo_data: Path, tmp_path: Path) -> None:
    """Killed after the manifest names the job but before releasing it: not an orphan (the user may
    hold a job on purpose too), so it is not cancelled; `status` says it is held and how it starts."""
    args = ["submit", str(experiment(tmp_path, demo_data, "heldjob", steps=3)), "-c", "localslurm", "-r", str(env)]
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RELEASE, *args], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    (run,) = (p for p in (env / "heldjob" / "localslurm").iterdir() if p.is_dir())
    job_id = manifest_of(RunDir(run)).job_id
    try:
        status = CliRunner().invoke(app, ["status", "-r", str(env / "heldjob")], env={"COLUMNS": "400"})
        assert status.exit_code == 0, status.output
        assert f"JobHeldUser: held; `scontrol release {job_id}` lets it start" in status.output
        subprocess.run(["scontrol", "release", job_id], check=True)
        states = wait_for(lambda: finished(env, [RunDir(run)]), 120, "the released job to end")
        assert states == {run.name: "completed"}
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)  # a failure above leaves nothing held
