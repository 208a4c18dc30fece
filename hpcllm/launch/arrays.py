"""SLURM job arrays for grids: grid points that ask for the same resources go in one ``sbatch --array``.

Why a thin wrapper and not a second template: each run keeps its own rendered ``job.sbatch`` (the
trap, hooks, requeue and budget work per run exactly as for a single job); task ``i`` of the array
just ``exec``s the ``job.sbatch`` of run ``i``. ``exec`` keeps the batch shell's process, so
SLURM's ``--signal=B:USR1`` reaches that script's trap, and ``scontrol requeue $SLURM_JOB_ID``
requeues only that task. The task's output goes to the run's own ``slurm-<array>_<task>.out``
(``RunDir.log_file`` of the task's job id), so ``hpcllm logs`` works the same.
"""

from __future__ import annotations

import hashlib
import shlex

from hpcllm.launch.manifest import Manifest
from hpcllm.rundir import RunDir

# #SBATCH options that differ per run and are set by the array itself.
_PER_RUN_OPTIONS = ("#SBATCH --job-name=", "#SBATCH --output=")


def resource_lines(run_dir: RunDir) -> tuple[str, ...]:
    """The run's ``#SBATCH`` lines except name and output: what the scheduler allocates."""
    lines = run_dir.job_script.read_text().splitlines()
    return tuple(ln for ln in lines if ln.startswith("#SBATCH ") and not ln.startswith(_PER_RUN_OPTIONS))


def array_key(run_dir: RunDir, manifest: Manifest, exclude: list[str]) -> tuple[object, ...]:
    """Runs with equal keys can share one job array (same resources, excludes and dependencies)."""
    return resource_lines(run_dir), tuple(exclude), tuple(manifest.depends_on)


def array_name(manifest: Manifest, run_dirs: list[RunDir]) -> str:
    """A job name for the array, unique to its runs (a reused job id is told apart by it)."""
    digest = hashlib.sha256("\n".join(rd.run_id for rd in run_dirs).encode()).hexdigest()[:8]
    return f"hpcllm-{manifest.experiment}-array-{digest}"[:120]


def array_script(run_dirs: list[RunDir], name: str) -> str:
    """The array's batch script: the runs' shared resources, then task i execs run i's job.sbatch."""
    log = run_dirs[0].path.absolute().parent / ".slurm-array-%A_%a.out"  # SLURM's own messages only
    runs = "\n".join(f"  {shlex.quote(str(rd.path.absolute()))}" for rd in run_dirs)
    return "\n".join(
        [
            "#!/bin/bash",
            f"# Job array written by hpcllm: task i runs the job.sbatch of run i below ({len(run_dirs)} runs).",
            f"#SBATCH --job-name={shlex.quote(name)}",
            *resource_lines(run_dirs[0]),
            f"#SBATCH --output={shlex.quote(str(log))}",
            "RUNS=(",
            runs,
            ")",
            "RUN=${RUNS[$SLURM_ARRAY_TASK_ID]}",
            "# exec: the same process, so --signal=B:USR1 reaches the trap in job.sbatch.",
            'exec bash "$RUN/job.sbatch" >>"$RUN/slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out" 2>&1',
            "",
        ]
    )
