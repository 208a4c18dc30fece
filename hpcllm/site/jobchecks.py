"""``hpcllm doctor``'s checks that run something: the profile's Python environment in a subprocess
(its modules and set-up lines, as a job runs them) and, with ``--gpu``, a short job on two nodes that
runs a training run's launch and one all-reduce (``hpcllm.engine.site_check`` reports back).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from hpcllm.config.cluster import ClusterProfile, parse_slurm_time
from hpcllm.launch.backends.slurmtext import parse_job_id, script_error
from hpcllm.launch.render import environment_context, render_template
from hpcllm.plan.qos import qos_refusal
from hpcllm.rundir import DOCTOR_REPORT_PREFIX, RunDir
from hpcllm.site.checks import FAIL, OK, SKIP, WARN, Check
from hpcllm.site.nccllog import parse_nccl_network
from hpcllm.site.sitefacts import PartitionInfo

ENV_PROBE_TIMEOUT_S = 600  # importing torch from a cold parallel file system can take minutes
GPU_JOB_TIME = "00:10:00"


# --- the Python environment ---------------------------------------------------------------------


def python_environment(cluster: ClusterProfile) -> Check:
    """The profile's modules, env and set-up lines, then its python imports hpcllm and torch."""
    probe = (
        f"{cluster.python} -c 'import json, hpcllm, torch; "
        f'print("{DOCTOR_REPORT_PREFIX}" + json.dumps(dict(hpcllm=hpcllm.__version__, torch=torch.__version__, '
        f"cuda=torch.version.cuda)))'"
    )
    script = render_template("_environment.sh.j2", environment_context(cluster, cluster.gpus_per_node, 0), cluster.name)
    text = 'set -uo pipefail\nsetup_failed() { echo "[hpcllm] error: $1"; exit 1; }\n' + script + probe + "\n"
    try:
        proc = subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=ENV_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Check("python", cluster.python, FAIL, f"no answer in {ENV_PROBE_TIMEOUT_S} s", "")
    reports = _reports(proc.stdout)
    if proc.returncode != 0 or not reports:
        said = (proc.stdout + proc.stderr).strip().splitlines()
        return Check(
            "python",
            cluster.python,
            FAIL,
            f"the profile's environment cannot import hpcllm and torch: "
            f"{said[-1] if said else f'exit {proc.returncode}'}",
            "make modules:/setup: give a Python with hpcllm[train] (pip install 'hpcllm[train]' in the venv)",
        )
    got = reports[-1]
    return Check(
        "python",
        cluster.python,
        OK,
        f"hpcllm {got['hpcllm']}, torch {got['torch']} "
        f"(CUDA {got['cuda'] or 'none'}) with the profile's modules and set-up",
    )


def _reports(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith(DOCTOR_REPORT_PREFIX):
            try:
                out.append(json.loads(line[len(DOCTOR_REPORT_PREFIX) :]))
            except ValueError:
                continue
    return out


# --- the job (--gpu) ----------------------------------------------------------------------------


def _short_qos(cluster: ClusterProfile, nodes: int) -> str | None:
    """The QoS with the shortest wall time that admits ``nodes`` for the job (debug QoS start soonest)."""
    fitting = [q for q, spec in cluster.qos.items() if qos_refusal(q, spec, nodes, GPU_JOB_TIME) is None]
    return min(fitting, key=lambda q: parse_slurm_time(cluster.qos[q].max_time), default=None)


def gpu_job_checks(
    cluster: ClusterProfile, account: str | None, part: PartitionInfo | None, results_root: Path, timeout_s: int
) -> list[Check]:
    """A short job of two nodes: the profile's environment, the node facts, one all-reduce."""
    if part is None:
        return [Check("job", "site check", SKIP, "not submitted: the partition does not exist")]
    nodes = min(2, part.total_nodes, cluster.max_nodes)
    folder = Path(results_root).absolute() / ".doctor" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    context = dict(
        environment_context(cluster, cluster.gpus_per_node, 0),
        cluster=cluster.name,
        nodes=nodes,
        job_name=f"hpcllm-doctor-{cluster.name}",
        time=GPU_JOB_TIME,
        partition=cluster.partition,
        account=account,
        qos=_short_qos(cluster, nodes),
        gres=cluster.gres,
        mem=cluster.mem,
        exclusive=cluster.exclusive,
        sbatch_extra=cluster.sbatch_extra,
        python=cluster.python,
        log_path=str(folder / "slurm-%j.out"),
        report_prefix=DOCTOR_REPORT_PREFIX,
    )
    script = folder / "doctor.sbatch"
    script.write_text(render_template("_doctor.sh.j2", context, cluster.name))
    try:
        proc = subprocess.run(
            ["sbatch", "--parsable", "--wait", str(script)], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return [
            Check(
                "job",
                "site check",
                FAIL,
                f"the job did not end within {timeout_s} s (still queued?); its files are in {folder}",
                "scancel it, retry when the queue is shorter",
            )
        ]
    job_id = parse_job_id(proc.stdout.splitlines()[0] if proc.stdout else "") or ""
    log = RunDir(folder).log_file(job_id)
    reports = _reports(log.read_text(errors="replace")) if log.exists() else []
    if proc.returncode != 0 or not any(r.get("check") == "allreduce" for r in reports):
        why = (
            script_error(RunDir(folder), job_id)
            or (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        )
        return [
            Check(
                "job",
                f"site check (job {job_id or '?'})",
                FAIL,
                f"{why}; log: {log}",
                "read the log; the job used the profile's modules, env and setup: lines",
            )
        ]
    checks = [Check("job", f"site check (job {job_id})", OK, f"{nodes} node(s), log: {log}")]
    for node in (r for r in reports if r.get("check") == "node"):
        checks += _node_checks(cluster, node)
    result = next(r for r in reports if r.get("check") == "allreduce")
    checks.append(
        Check(
            "job",
            "all-reduce",
            OK if result["ok"] else FAIL,
            f"{result['world_size']} ranks over {result['backend']} ({result['device']}): sum "
            f"{'right' if result['ok'] else 'WRONG'}, {result['busbw_gb_s']} GB/s bus bandwidth for 64 MiB",
            "" if result["ok"] else "check NCCL_SOCKET_IFNAME / NCCL_IB_HCA in the profile's env:",
        )
    )
    checks.append(nccl_network_check(log.read_text(errors="replace")))
    return checks


def nccl_network_check(log_text: str) -> Check:
    """The HCAs and network NCCL reported using (its INIT/NET lines, which the doctor job asks for)."""
    net = parse_nccl_network(log_text)
    if not net.found:
        return Check("job", "NCCL network", SKIP, "NCCL logged no INIT/NET lines (a CPU job uses gloo)")
    status = WARN if "Socket" in net.networks and not net.hcas else OK
    fix = "" if status == OK else "NCCL fell back to sockets: set NCCL_IB_HCA to the IB devices (ibv_devinfo)"
    return Check("job", "NCCL network", status, net.describe(), fix)


def _node_checks(cluster: ClusterProfile, node: dict[str, Any]) -> list[Check]:
    name = node.get("slurm_node") or node.get("host") or "?"
    checks = []
    if cluster.is_cpu:
        checks.append(Check("job", f"{name} GPUs", SKIP, "CPU profile: no GPUs to see"))
    else:
        seen = (node.get("nvidia_smi_gpus"), node.get("cuda_devices"))
        good = seen == (cluster.gpus_per_node, cluster.gpus_per_node)
        checks.append(
            Check(
                "job",
                f"{name} GPUs",
                OK if good else FAIL,
                f"nvidia-smi {seen[0]}, torch {seen[1]} ({', '.join(node.get('gpu_names', []))}); "
                f"torch {node.get('torch')} CUDA {node.get('cuda')} NCCL {node.get('nccl')}",
                "" if good else "check gres:/gpus_per_node and the venv's torch build",
            )
        )
    interfaces = node.get("interfaces", [])
    for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        wanted = cluster.env.get(var)
        if not wanted:
            continue
        names = [w.lstrip("=") for w in wanted.split(",")] if not wanted.startswith("^") else []
        exact = var == "GLOO_SOCKET_IFNAME" or wanted.startswith("=")
        missing = [w for w in names if not any(i == w if exact else i.startswith(w) for i in interfaces)]
        checks.append(
            Check(
                "job",
                f"{name} {var}",
                FAIL if missing else OK,
                f"{var}={wanted}; interfaces: {', '.join(interfaces)}",
                f"set {var} in the profile's env: to one of them" if missing else "",
            )
        )
    return checks
