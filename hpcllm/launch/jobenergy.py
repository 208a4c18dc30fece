"""The job's energy as SLURM accounts it (``sacct``'s ConsumedEnergy), recorded per attempt.

NVML (hpcllm.engine.energy) measures the GPUs only; a site with an ``acct_gather_energy`` plugin
(IPMI, RAPL, the GPU plugin) accounts each job step's whole-node energy. The batch script's end
hook asks ``sacct`` for the attempt's finished steps once the engine has exited (a finished step's
figure is final; the batch step's is not) and adds it to the manifest's ``consumed_energy_j``, or
says in ``energy_note`` why there is no figure: no accounting, or a site that accounts no energy.
"""

from __future__ import annotations

import re

from hpcllm.errors import HpcllmError
from hpcllm.launch.manifest import Manifest
from hpcllm.launch.slurmcmd import run_slurm

_STEP = re.compile(r"^[0-9_]+\.[0-9]+$")  # JOBID.N: srun steps (not .batch or .extern)


def steps_energy_j(sacct_output: str) -> float:
    """Joules of the srun steps in ``sacct -n -P --format=JobIDRaw,ConsumedEnergyRaw`` output."""
    total = 0.0
    for line in sacct_output.splitlines():
        job, _, energy = line.partition("|")
        if _STEP.match(job) and energy.strip().isdigit():
            total += float(energy)
    return total


def record_job_energy(manifest: Manifest, job_id: str) -> None:
    """Add this attempt's accounted step energy to the manifest, or note why there is none."""
    try:
        proc = run_slurm(["sacct", "-n", "-P", f"--jobs={job_id}", "--format=JobIDRaw,ConsumedEnergyRaw"], check=False)
    except HpcllmError as exc:
        manifest.energy_note = f"job energy: {exc}"
        return
    if proc.returncode != 0:
        why = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        manifest.energy_note = f"job energy: sacct failed ({why[0] if why else f'exit {proc.returncode}'})"
        return
    joules = steps_energy_j(proc.stdout)
    if joules <= 0:
        manifest.energy_note = "job energy: the site accounts no energy (sacct ConsumedEnergy 0)"
        return
    manifest.consumed_energy_j = (manifest.consumed_energy_j or 0.0) + joules
    manifest.energy_note = "job energy: sacct ConsumedEnergy of the srun steps, every attempt"
