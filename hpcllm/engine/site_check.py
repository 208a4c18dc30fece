"""``python -m hpcllm.engine.site_check``: what ``hpcllm doctor --gpu`` runs on the compute nodes.

One rank per GPU on a few nodes, under the same srun + torchrun launch as a training run. Local rank
0 of each node reports the node (GPUs that ``nvidia-smi`` and torch see, network interfaces, versions,
its CPUs); then every rank joins one all-reduce: the ranks of different nodes must find each other
(rendezvous, the interfaces NCCL and gloo pick) and agree on the sum, and a 64 MiB all-reduce is
timed (bus bandwidth, ``bytes x 2(n-1)/n / time`` as nccl-tests report it, to compare with the
network's line rate). Each report is one line ``HPCLLM-DOCTOR {json}`` the doctor reads from the log.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from hpcllm.engine.distributed import DistEnv, init_distributed, shutdown_distributed
from hpcllm.engine.runtime import software
from hpcllm.rundir import DOCTOR_REPORT_PREFIX

MESSAGE_BYTES = 64 << 20
TIMED_ROUNDS = 5


def report(payload: dict[str, Any]) -> None:
    print(DOCTOR_REPORT_PREFIX + json.dumps(payload, sort_keys=True), flush=True)


def nvidia_smi_gpus() -> int | None:
    """GPUs ``nvidia-smi -L`` lists on this node, or None where there is no nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU ")) if proc.returncode == 0 else 0


def node_facts(env: DistEnv) -> dict[str, Any]:
    return {
        "check": "node",
        "host": socket.gethostname(),
        "slurm_node": os.environ.get("SLURMD_NODENAME"),
        "local_world_size": env.local_world_size,
        "cpus": len(os.sched_getaffinity(0)),
        "nvidia_smi_gpus": nvidia_smi_gpus(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": torch.cuda.device_count(),
        "gpu_names": sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}),
        "interfaces": sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else [],
        **software(),
    }


def all_reduce_check(env: DistEnv) -> dict[str, Any]:
    n = env.world_size
    # Every rank contributes rank + 1: the sum is n(n+1)/2 on every rank, or a peer is wrong.
    check = torch.full((4,), float(env.rank + 1), device=env.device)
    dist.all_reduce(check)
    ok = bool(torch.all(check == n * (n + 1) / 2).item())
    data = torch.ones(MESSAGE_BYTES // 4, dtype=torch.float32, device=env.device)
    dist.all_reduce(data)  # warm-up: communicators are built on first use
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(TIMED_ROUNDS):
        dist.all_reduce(data)
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / TIMED_ROUNDS
    busbw = MESSAGE_BYTES * 2 * (n - 1) / n / seconds if n > 1 else 0.0
    return {
        "check": "allreduce",
        "ok": ok,
        "world_size": n,
        "backend": str(dist.get_backend()),
        "device": env.device.type,
        "busbw_gb_s": round(busbw / 1e9, 3),
    }


def main() -> int:
    env = init_distributed("auto")
    try:
        if env.local_rank == 0:
            report(node_facts(env))
        result = all_reduce_check(env)
        if env.is_main:
            report(result)
        return 0 if result["ok"] else 1
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
