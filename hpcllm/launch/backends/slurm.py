"""SLURM backend: ``sbatch --parsable`` to submit, ``squeue`` for states, ``scancel`` to stop."""

from __future__ import annotations

import shutil
import subprocess

from hpcllm.errors import BackendError
from hpcllm.launch.backends.base import Backend
from hpcllm.launch.manifest import Manifest, RunState, Submission, now, save_manifest
from hpcllm.rundir import RunDir


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        raise BackendError(
            f"`{cmd[0]}` is not on PATH: run this on a SLURM login node (or start the local SLURM "
            "cluster with scripts/local-slurm.sh), or render only with --dry-run"
        )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class SlurmBackend(Backend):
    name = "slurm"

    def submit(self, run_dir: RunDir, manifest: Manifest) -> str:
        cmd = ["sbatch", "--parsable"]
        if manifest.exclude_nodes:
            cmd.append(f"--exclude={','.join(manifest.exclude_nodes)}")
        cmd.append(str(run_dir.job_script.absolute()))
        out = _run(cmd)
        job_id = out.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"
        if not job_id.isdigit():
            raise BackendError(f"`{' '.join(cmd)}` printed no job id: {out!r}")
        manifest.job_id = job_id
        manifest.state = RunState.PENDING
        manifest.submissions.append(Submission(job_id=job_id, time=now(), exclude=list(manifest.exclude_nodes)))
        save_manifest(run_dir, manifest)
        return job_id

    def refresh(self, items: list[tuple[RunDir, Manifest]]) -> dict[str, RunState]:
        raise NotImplementedError  # the SLURM issue implements state tracking

    def cancel(self, run_dir: RunDir, manifest: Manifest) -> None:
        if not manifest.job_id:
            raise BackendError(f"run {manifest.run_id} has no job id")
        _run(["scancel", manifest.job_id])
