"""Held jobs that no manifest names: what a ``hpcllm submit`` killed between ``sbatch --hold`` and
saving the run's manifest leaves in the queue, cancelled by the next submit of the same grid.

The SLURM backend submits held and releases a job only once the manifest records its id (the batch
script's hooks read that manifest). A submit killed in between (SIGKILL, a lost login session;
Ctrl-C is deferred over that window: ``hpcllm.launch.sigint``) leaves a job that waits forever and
that nothing of hpcllm knows. The next submit of the grid holds the grid's submit lock, so no
other submit of it is between the two steps, and cancels such a job only when every one of these
says it is the grid's: it is this user's, pending with reason ``JobHeldUser`` (held by sbatch, not
by the scheduler); its batch script is a run's ``job.sbatch`` in this grid's folder and its name
the one that script asks for, or it is a job array whose script and name are this grid's; its
output goes into that run's (the array's: the grid's) folder; and no manifest of the grid
records its id. A job the user held on purpose (``scontrol hold``) has a manifest naming it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hpcllm.errors import HpcllmError
from hpcllm.launch.backends.slurmtext import submitted_job_name
from hpcllm.launch.manifest import load_manifest
from hpcllm.launch.slurmcmd import parse_scontrol_record, run_slurm
from hpcllm.rundir import RunDir, within

HELD_BY_USER = "JobHeldUser"


def _recorded_ids(grid: Path) -> set[str] | None:
    """The job ids (array ids for array tasks) that the grid's manifests record; None when one of
    them cannot be read (then nothing is known to be unrecorded)."""
    ids = set()
    for folder in sorted(p for p in grid.iterdir() if p.is_dir()):
        try:
            manifest = load_manifest(RunDir(folder))
        except HpcllmError:
            return None
        if manifest is not None and manifest.job_id:
            ids.add(manifest.job_id.split("_")[0])
    return ids


def _held_candidates() -> list[str]:
    """Ids of this user's jobs held by sbatch whose name hpcllm could have given (one squeue)."""
    proc = run_slurm(
        ["squeue", "--noheader", f"--user={os.getuid()}", "--states=PENDING", "--format=%i|%j|%r"], check=False
    )
    ids = []
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        job_id, _, rest = line.strip().partition("|")
        name, _, reason = rest.rpartition("|")
        if reason == HELD_BY_USER and name.startswith("hpcllm-"):
            ids.append(job_id.split("_")[0])
    return sorted(set(ids))


def _owner(record: dict[str, str], grid: Path) -> str | None:
    """The run (or, for an array, the grid) that the held job ``record`` was submitted for, when
    every check of the module's docstring holds; else None."""
    if record.get("JobState") != "PENDING" or record.get("Reason") != HELD_BY_USER:
        return None
    if not record.get("UserId", "").endswith(f"({os.getuid()})"):
        return None
    name, command, stdout = record.get("JobName", ""), record.get("Command", ""), record.get("StdOut", "")
    script = Path(command)
    if script.name == "job.sbatch" and os.path.realpath(script.parent.parent) == os.path.realpath(grid):
        run_dir = RunDir(script.parent)
        if name and submitted_job_name(run_dir) == name and within(run_dir.path, stdout, below=True):
            return run_dir.run_id
        return None
    array = script.name == f".{name}.sbatch" and "-array-" in name
    if array and os.path.realpath(script.parent) == os.path.realpath(grid) and within(grid, stdout, below=True):
        return "job array"
    return None


def cancel_held_orphans(grid: Path) -> str | None:
    """Cancel the grid's held jobs that no manifest records; one line saying which (None: none).
    The caller holds the grid's submit lock."""
    if not grid.is_dir() or shutil.which("squeue") is None:  # no SLURM here: sbatch says so
        return None
    candidates = _held_candidates()
    recorded = _recorded_ids(grid) if candidates else set()
    if recorded is None:
        return None
    cancelled: list[str] = []
    failed: list[str] = []
    for job_id in candidates:
        if job_id in recorded:
            continue
        proc = run_slurm(["scontrol", "-o", "show", "job", job_id], check=False)
        lines = proc.stdout.splitlines() if proc.returncode == 0 else []
        owner = _owner(parse_scontrol_record(lines[0]), grid) if lines else None
        if owner is None:
            continue
        done = run_slurm(["scancel", job_id], check=False)
        (cancelled if done.returncode == 0 else failed).append(f"{job_id} ({owner})")
    parts = []
    if cancelled:
        parts.append(f"cancelled {len(cancelled)} held job(s) that an interrupted submit left: {', '.join(cancelled)}")
    if failed:
        parts.append(f"could not cancel held job(s) an interrupted submit left: {', '.join(failed)} (scancel them)")
    return "; ".join(parts) or None
