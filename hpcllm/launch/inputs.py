"""Input paths checked before the queue: a missing token store found at submit, not hours later.

Every path field of a run's config (``SitePath``: data sources, tokenizer, evaluation sets, the
teacher and ``init_from`` checkpoints) is an input. Where this machine sees what the job will see,
a missing one refuses the point with its key and path: on the ``local`` scheduler, and on a login
node of the profile's SLURM (``sinfo`` knows its partition), whose parallel file systems are the
compute nodes'. Elsewhere (a
dry run on a laptop) it is a warning. A path that uses a variable unset here is left to the
compute node (``orchestrate`` warns about the variable), and ``init_from`` may name a run that a
job submitted with ``--after`` is still writing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from hpcllm.config.cluster import ClusterProfile
from hpcllm.config.experiment import RunSpec
from hpcllm.plan.qos import RefusedPoint
from hpcllm.sitepaths import expand_path, iter_site_paths, unset_variables

# A login node's slurmctld answers in milliseconds; past this, decide without it (warnings only).
SINFO_TIMEOUT_S = 10
# Paths that a run written later (a dependency) may create: checked only without --after.
PRODUCED_BY_EARLIER_JOBS = ("init_from", "teacher_checkpoint")


@dataclass(frozen=True)
class MissingInput:
    key: str
    path: str

    def __str__(self) -> str:
        return f"{self.key}: {self.path} does not exist"


def sees_the_site(cluster: ClusterProfile) -> bool:
    """Whether this machine sees the files the job will: the local scheduler, or a login node of
    the profile's SLURM (its partition is one this machine's ``sinfo`` knows)."""
    if cluster.scheduler == "local":
        return True
    if shutil.which("sinfo") is None or not cluster.partition:
        return False
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%R", "-p", cluster.partition],
            capture_output=True,
            text=True,
            timeout=SINFO_TIMEOUT_S,
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return proc.returncode == 0 and cluster.partition in proc.stdout.split()


def missing_inputs(spec: RunSpec, *, after: bool = False) -> list[MissingInput]:
    """The input paths of ``spec`` that do not exist here (``after``: jobs it waits for may write some)."""
    out = []
    for key, value in iter_site_paths(spec.training):
        if unset_variables(value):
            continue
        if after and key.split(".")[-1].split("[")[0] in PRODUCED_BY_EARLIER_JOBS:
            continue
        path = expand_path(value, key)
        if key.endswith("init_from") or key.endswith("teacher_checkpoint"):
            head, sep, tail = path.rpartition("@")  # run@N: a step of that run
            path = head if sep and tail.isdigit() else path
        if not os.path.exists(path):
            out.append(MissingInput(key, path))
    return out


def refuse_missing_inputs(
    specs: list[RunSpec],
    cluster: ClusterProfile,
    *,
    after: bool,
    refused: list[RefusedPoint],
    warnings: list[str],
) -> list[RunSpec]:
    """``specs`` less those with a missing input, each added to ``refused`` (or, where this machine
    does not see the site's files, kept with a warning)."""
    enforce = sees_the_site(cluster)
    kept: list[RunSpec] = []
    warned: set[MissingInput] = set()
    for spec in specs:
        missing = missing_inputs(spec, after=after)
        if missing and enforce:
            why = "; ".join(map(str, missing))
            refused.append(RefusedPoint(spec.point, f"{why} (make it, e.g. `hpcllm data prepare`, or fix the path)"))
            continue
        for m in missing:
            if m not in warned:
                warned.add(m)
                warnings.append(f"{m} here; this machine is not {cluster.name}'s login node, so it is not checked")
        kept.append(spec)
    return kept


def unset_on_login(specs: list[RunSpec]) -> list[str]:
    """One warning per path variable that is not set here: the compute node must set it, or the run
    fails at start-up (it may be fine: some sites set scratch variables only in jobs)."""
    seen: dict[str, str] = {}
    for spec in specs:
        for key, value in iter_site_paths(spec.training):
            for name in unset_variables(value):
                seen.setdefault(name, f"{key}: {value}")
    return [
        f"${name} is not set on this login node (used in {where}); the job's node must set it, "
        "or the run fails at start"
        for name, where in seen.items()
    ]
