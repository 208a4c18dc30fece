"""What an attempt really ran on: versions, hosts, CPUs and devices of every rank (``runtime.jsonl``).

The profile says what a job asks for; this says what it got. "It was faster last week" is answered
by the torch, CUDA, NCCL and driver versions of each attempt (a requeue may land on other nodes, a
module update may change a library), and a rank starved of cores (a step that did not inherit the
job's ``--cpus-per-task``) shows in its CPU list. One JSON line per attempt, appended by rank 0
after every rank has reported; ``hpcllm status`` shows the last one.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hpcllm import __version__
from hpcllm.engine.distributed import DistEnv
from hpcllm.fsutil import append_line_in
from hpcllm.rundir import RunDir

# Environment variables that change how ranks talk or compute; recorded as the job set them.
RECORDED_ENV_PREFIXES = ("NCCL_", "GLOO_", "TORCH_NCCL_", "CUDA_", "OMP_", "SLURM_CPUS_PER_TASK")
_DRIVER_FILE = Path("/proc/driver/nvidia/version")


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version (no nvidia-smi needed), or None without one."""
    try:
        match = re.search(r"Kernel Module\s+([0-9.]+)", _DRIVER_FILE.read_text())
    except OSError:
        return None
    return match.group(1) if match else None


def nccl_version() -> str | None:
    """The NCCL that torch loaded (a site module may have shadowed the bundled one), or None."""
    if not torch.cuda.is_available():
        return None
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(str(v) for v in version) if isinstance(version, tuple) else str(version)


def software() -> dict[str, Any]:
    """The versions this process runs with (the driver is per rank: nodes may differ)."""
    return {
        "hpcllm": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": nccl_version(),
        "modules": os.environ.get("LOADEDMODULES", ""),  # set by Lmod / Environment Modules
    }


def rank_facts(env: DistEnv) -> dict[str, Any]:
    """Where this rank runs and what it may use (small: a line holds every rank of the job)."""
    facts: dict[str, Any] = {
        "rank": env.rank,
        "local_rank": env.local_rank,
        "host": socket.gethostname(),
        # On one host with several slurmd (the local cluster) only this tells the logical node.
        "slurm_node": os.environ.get("SLURMD_NODENAME"),
        "cpus": sorted(os.sched_getaffinity(0)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "device": str(env.device),
        "driver": driver_version(),
    }
    if env.device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(env.device)
    return facts


def record_runtime(run_dir: RunDir, env: DistEnv, *, restart: int) -> dict[str, Any] | None:
    """Gather every rank's facts on rank 0 and append them as one line; a collective (all ranks call
    it at the same point). Returns the record on rank 0."""
    mine = rank_facts(env)
    if dist.is_initialized() and env.world_size > 1:
        gathered: list[Any] = [None] * env.world_size
        dist.all_gather_object(gathered, mine)
    else:
        gathered = [mine]
    if not env.is_main:
        return None
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "restart": restart,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "world_size": env.world_size,
        "hosts": sorted({r["host"] for r in gathered}),
        "nodes": sorted({r["slurm_node"] or r["host"] for r in gathered}),
        "software": software(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(RECORDED_ENV_PREFIXES)},
        "ranks": gathered,
    }
    append_line_in(run_dir.path, run_dir.runtime, json.dumps(record, sort_keys=True))
    return record
