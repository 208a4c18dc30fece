"""What keeps an interrupted SLURM submit from leaving a held job (issue 21), without a scheduler: Ctrl-C
is deferred over sbatch → manifest → release, and a held job is the grid's only when every fact says
so (the real cancel is tests/test_slurm_orphans.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hpcllm.launch import sigint
from hpcllm.launch.backends.orphans import _owner
from hpcllm.rundir import RunDir


def test_ctrl_c_waits_for_the_end_of_the_step() -> None:
    # Python's own Ctrl-C handler, as in a terminal (a job started in the background of a shell
    # inherits SIGINT ignored, and the deferral rightly gives back what it found).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt), sigint.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("recorded")  # not cut here
        assert done == ["recorded"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with sigint.deferred():  # nothing caught: nothing raised
            pass
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_held_job_is_the_grids_only_when_every_fact_says_so(tmp_path: Path) -> None:
    grid = tmp_path / "results" / "exp" / "localslurm"
    run = RunDir(grid / "tiny-abc")
    run.path.mkdir(parents=True)
    run.job_script.write_text("#!/bin/bash\n#SBATCH --job-name=hpcllm-exp-tiny-abc\n")
    job = {
        "JobName": "hpcllm-exp-tiny-abc",
        "UserId": f"me({os.getuid()})",
        "JobState": "PENDING",
        "Reason": "JobHeldUser",
        "Command": str(run.job_script),
        "StdOut": str(run.path / "slurm-7.out"),
    }
    assert _owner(job, grid) == "tiny-abc"
    array = grid / ".hpcllm-exp-array-0123abcd.sbatch"
    array_job = {**job, "JobName": "hpcllm-exp-array-0123abcd", "Command": str(array), "StdOut": str(grid / ".o")}
    assert _owner(array_job, grid) == "job array"
    for key, value in {
        "JobName": "hpcllm-exp-tiny-abd",  # another run's name
        "UserId": f"other({os.getuid() + 1})",  # another user's
        "Reason": "Priority",  # not held by sbatch
        "JobState": "RUNNING",
        "Command": str(tmp_path / "elsewhere" / "tiny-abc" / "job.sbatch"),  # another grid's run
        "StdOut": str(tmp_path / "slurm-7.out"),  # output outside the run's folder
    }.items():
        assert _owner({**job, key: value}, grid) is None, key
    assert _owner({**array_job, "StdOut": str(tmp_path / ".o")}, grid) is None
    assert _owner({**array_job, "JobName": "hpcllm-exp-array-ffff0000"}, grid) is None  # not its script
