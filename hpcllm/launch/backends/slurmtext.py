"""What SLURM and a job's files say, parsed: job states, ``sbatch --parsable`` output, the batch
script's ``#SBATCH`` lines and job name, the jobcomp log, the script's own error line, durations.
Pure reading, no scheduler calls: the SLURM backend and ``hpcllm doctor`` build on it."""

from __future__ import annotations

import shlex
from pathlib import Path

from hpcllm.launch.manifest import Manifest, RunState
from hpcllm.launch.slurmcmd import parse_scontrol_record
from hpcllm.rundir import RunDir

# SLURM job states (squeue %T / sacct State) -> ours. Anything unlisted counts as running.
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
_TERMINAL = {
    "COMPLETED": RunState.COMPLETED,
    "CANCELLED": RunState.CANCELLED,
    "FAILED": RunState.FAILED,
    "TIMEOUT": RunState.FAILED,
    "NODE_FAIL": RunState.FAILED,
    "OUT_OF_MEMORY": RunState.FAILED,
    "BOOT_FAIL": RunState.FAILED,
    "DEADLINE": RunState.FAILED,
    "PREEMPTED": RunState.FAILED,
}


def job_state(slurm_state: str) -> RunState:
    """Map a SLURM state word (``CANCELLED by 0`` from sacct included) to a RunState."""
    word = slurm_state.split()[0].rstrip("+") if slurm_state.strip() else ""
    if word in _TERMINAL:
        return _TERMINAL[word]
    return RunState.PENDING if word in _PENDING else RunState.RUNNING


def parse_job_id(sbatch_stdout: str) -> str | None:
    """``sbatch --parsable`` prints ``id`` or ``id;cluster`` (federations, multi-cluster sites)."""
    job_id = sbatch_stdout.strip().split(";")[0]
    return job_id if job_id.isdigit() else None


def sbatch_option(run_dir: RunDir, option: str) -> str | None:
    """The value of ``#SBATCH --<option>=`` in the run's ``job.sbatch``: what was really submitted."""
    try:
        lines = run_dir.job_script.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if line.startswith(f"#SBATCH --{option}="):
            return shlex.split(line.partition("=")[2])[0]
    return None


def submitted_job_name(run_dir: RunDir) -> str | None:
    """The ``--job-name`` that ``job.sbatch`` asked for (the run's identity in the scheduler)."""
    return sbatch_option(run_dir, "job-name")


def expected_job_name(run_dir: RunDir, manifest: Manifest) -> str | None:
    """The name the run's job has in the scheduler: its array's, or its own script's."""
    return manifest.job_name or submitted_job_name(run_dir)


def usable_excludes(exclude: list[str], nodes: int, partition_nodes: int) -> list[str]:
    """The most recently failed nodes that still leave ``nodes`` in the partition.

    Excluding more would leave the job pending forever; older failures are the likeliest to have
    been repaired since.
    """
    keep = max(partition_nodes - nodes, 0)
    return exclude[len(exclude) - keep :] if keep else []


def jobcomp_state(log: Path, job_id: str, job_name: str) -> str | None:
    """The last ``JobState`` of job ``job_id`` named ``job_name`` in a jobcomp/filetxt log.

    An array task ``<array>_<task>`` is logged under its own numeric JobId, with
    ``ArrayJobId=<array> ArrayTaskId=<task>``: match it by those.
    """
    array_id, _, task_id = job_id.partition("_")
    state = None
    try:
        with open(log, errors="replace") as fh:
            for line in fh:
                if task_id:
                    if f"ArrayJobId={array_id} " not in line:
                        continue
                    rec = parse_scontrol_record(line)
                    if rec.get("ArrayTaskId") != task_id:
                        continue
                elif line.startswith(f"JobId={job_id} "):
                    rec = parse_scontrol_record(line)
                else:
                    continue
                if rec.get("Name") == job_name:
                    state = rec.get("JobState")
    except OSError:
        return None
    return state


SCRIPT_ERROR_PREFIX = "[hpcllm] error: "  # how templates/sbatch.sh.j2's setup_failed starts its line


def script_error(run_dir: RunDir, job_id: str, tail_bytes: int = 65536) -> str | None:
    """The last ``[hpcllm] error:`` line the batch script wrote to the job's log, without the prefix."""
    try:
        with open(run_dir.log_file(job_id), "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(fh.tell() - tail_bytes, 0))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line[len(SCRIPT_ERROR_PREFIX) :] for line in lines if line.startswith(SCRIPT_ERROR_PREFIX)]
    return errors[-1] if errors else None


def parse_duration(value: str) -> int | None:
    """A SLURM duration (scontrol's RunTime/TimeLimit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM``, ``D-HH:MM:SS``) -> seconds; None for UNLIMITED, Partition_Limit and the like."""
    days, dash, clock = value.strip().rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3 or (dash and not days.isdigit()):
        return None
    numbers = [int(p) for p in parts]
    if dash:  # after "D-" the clock starts with hours
        hours, minutes, seconds = ([*numbers, 0, 0])[:3]
    else:
        hours, minutes, seconds = ([0, 0, *numbers])[-3:] if len(numbers) > 1 else (0, numbers[0], 0)
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
