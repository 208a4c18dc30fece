"""``hpcllm doctor``: a cluster profile checked against the live cluster before the first submit.

A profile is a list of claims about a site: the partition and its nodes, cores and GPUs, the QoS
windows, the account, the storage roots, the Python environment. Each claim SLURM or the file system
can confirm from a login node is checked here, and each failure comes with the fix. A claim that
cannot be checked from here is *skipped* with the reason (without slurmdbd, sacctmgr knows no QoS),
never reported as fine. With an experiment, every point goes through ``sbatch --test-only``; with
``gpu``, a short job on two nodes runs the launch a training run uses and one all-reduce.

Torch-free: the Python environment is probed in a subprocess with the profile's own modules and
set-up lines (the same ``templates/_environment.sh.j2`` a job runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcllm.config.cluster import ClusterProfile, parse_slurm_time
from hpcllm.config.experiment import RunSpec, expand_experiment, load_experiment
from hpcllm.config.qos import RefusedPoint, qos_refusal
from hpcllm.errors import BackendError, ConfigError
from hpcllm.launch.backends.slurm import parse_job_id, script_error
from hpcllm.launch.inputs import missing_inputs
from hpcllm.launch.nccllog import parse_nccl_network
from hpcllm.launch.orchestrate import RESULTS_ENV, results_root_for
from hpcllm.launch.render import environment_context, render_job, render_template
from hpcllm.launch.sitefacts import (
    PartitionInfo,
    accounting_enabled,
    associations,
    partition,
    partition_names,
    qos_table,
    slurm_config,
)
from hpcllm.launch.slurmcmd import run_slurm
from hpcllm.launch.storage import human_bytes, room_at, storage_need
from hpcllm.rundir import RunDir
from hpcllm.sitepaths import expand_path

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"
REPORT_PREFIX = "HPCLLM-DOCTOR "  # hpcllm.engine.site_check prints its reports after this
ENV_PROBE_TIMEOUT_S = 600  # importing torch from a cold parallel file system can take minutes
GPU_JOB_TIME = "00:10:00"


@dataclass(frozen=True)
class Check:
    area: str
    name: str
    status: str  # ok | fail | warn | skip
    detail: str
    fix: str = ""


def run_doctor(
    cluster: ClusterProfile,
    *,
    profile_file: str,
    account: str | None = None,
    experiment: Path | None = None,
    results_root: Path | None = None,
    gpu: bool = False,
    gpu_timeout_s: int = 3600,
) -> list[Check]:
    """Every check of ``cluster`` against the cluster this machine submits to, in order."""
    if cluster.scheduler != "slurm":
        return [
            Check(
                "scheduler",
                "scheduler",
                SKIP,
                f"{cluster.name!r} is a {cluster.scheduler!r} profile: there is no scheduler to check",
            ),
            python_environment(cluster),
        ]
    try:
        config = slurm_config()
    except BackendError as exc:
        return [Check("scheduler", "slurmctld", FAIL, str(exc), "run hpcllm doctor on a login node of the cluster")]
    checks = scheduler_checks(cluster, config, profile_file)
    part = partition(cluster.partition) if cluster.partition else None
    checks += partition_checks(cluster, part, profile_file)
    checks += qos_checks(cluster, part, config, profile_file)
    try:
        account = cluster.resolve_account(account)
    except ConfigError as exc:
        checks.append(Check("account", "account", FAIL, str(exc), "pass --account or export HPCLLM_ACCOUNT"))
        account = None
    specs: list[RunSpec] = []
    refused: list[RefusedPoint] = []
    if experiment is not None:
        try:
            specs = expand_experiment(
                load_experiment(experiment), cluster, str(experiment), account=account, refused=refused
            )
        except ConfigError as exc:
            checks.append(Check("experiment", str(experiment), FAIL, str(exc), "fix the experiment or the profile"))
    needed = sorted(
        {s.resources.qos for s in specs if s.resources.qos}
        if experiment is not None
        else set(cluster.auto_qos) | ({cluster.default_qos} if cluster.default_qos else set())
    )
    checks += account_checks(cluster, config, account, needed, profile_file)
    checks += point_checks(cluster, account, specs, refused, part)
    checks += input_checks(specs)
    checks += storage_checks(cluster, account, specs, results_root, profile_file)
    checks.append(python_environment(cluster))
    if gpu:
        try:
            job_root = results_root_for(cluster, account, results_root)
        except ConfigError:
            job_root = Path("results")  # the storage rows above say why the profile's root fails here
        checks += gpu_job_checks(cluster, account, part, job_root, gpu_timeout_s)
    return checks


# --- the scheduler and the partition ------------------------------------------------------------


def scheduler_checks(cluster: ClusterProfile, config: dict[str, str], profile_file: str) -> list[Check]:
    version = config.get("SLURM_VERSION", "?")
    checks = [
        Check(
            "scheduler",
            "slurm",
            OK,
            f"SLURM {version}; batch scripts restate --cpus-per-task on srun, as 22.05 and 23.02 need",
        )
    ]
    kill_wait = config.get("KillWait", "?")
    checks.append(
        Check(
            "scheduler",
            "KillWait",
            OK,
            f"{kill_wait}: a stop by TERM alone (plain scancel, preemption) leaves that long to checkpoint; hpcllm "
            f"cancel and time limits send USR1 first ({cluster.signal_before_end_s} s ahead)",
        )
    )
    site_max = config.get("MaxArraySize", "")
    if cluster.max_array_size and site_max.isdigit() and cluster.max_array_size > int(site_max) - 1:
        checks.append(
            Check(
                "scheduler",
                "MaxArraySize",
                FAIL,
                f"max_array_size {cluster.max_array_size}, but the site's MaxArraySize is {site_max} "
                f"(task ids must stay below it)",
                f"set max_array_size: {int(site_max) - 1} in {profile_file}",
            )
        )
    return checks


def partition_checks(cluster: ClusterProfile, part: PartitionInfo | None, profile_file: str) -> list[Check]:
    name = cluster.partition or "(none)"
    if part is None:
        known = ", ".join(partition_names()) or "(none)"
        return [
            Check(
                "partition",
                name,
                FAIL,
                f"SLURM has no partition {name!r} (partitions: {known})",
                f"set partition: to one of them in {profile_file}",
            )
        ]
    checks = [
        Check("partition", name, OK if part.state == "UP" else WARN, f"state {part.state}, {part.total_nodes} nodes")
    ]
    limit = min(part.total_nodes, part.max_nodes_per_job or part.total_nodes)
    if cluster.max_nodes > limit:
        why = (
            f"the partition has {part.total_nodes} nodes"
            if limit == part.total_nodes
            else f"the partition allows {part.max_nodes_per_job} nodes a job"
        )
        checks.append(
            Check(
                "partition",
                "nodes",
                FAIL,
                f"max_nodes is {cluster.max_nodes}, but {why}: larger jobs would pend forever",
                f"set max_nodes: {limit} in {profile_file}",
            )
        )
    else:
        checks.append(Check("partition", "nodes", OK, f"max_nodes {cluster.max_nodes} <= {limit} a job may have"))
    if not part.nodes:
        return [*checks, Check("partition", "cpus per node", SKIP, "sinfo lists no nodes in the partition")]
    cpus = sorted({n.cpus for n in part.nodes})
    if cluster.cpus_per_node > cpus[0]:
        checks.append(
            Check(
                "partition",
                "cpus per node",
                FAIL,
                f"cpus_per_node is {cluster.cpus_per_node}, but nodes have {cpus[0]}"
                f"{'-' + str(cpus[-1]) if len(cpus) > 1 else ''} CPUs: --cpus-per-task would be refused",
                f"set cpus_per_node: {cpus[0]} in {profile_file}",
            )
        )
    elif cluster.cpus_per_node < cpus[-1]:
        checks.append(
            Check(
                "partition",
                "cpus per node",
                WARN,
                f"cpus_per_node {cluster.cpus_per_node} of the {cpus[-1]} CPUs nodes have: runs leave cores idle",
                f"set cpus_per_node: {cpus[-1]} in {profile_file} if jobs get whole nodes",
            )
        )
    else:
        checks.append(Check("partition", "cpus per node", OK, f"{cluster.cpus_per_node} CPUs on every node"))
    checks.append(_gpu_check(cluster, part, profile_file))
    return checks


def _gpu_check(cluster: ClusterProfile, part: PartitionInfo, profile_file: str) -> Check:
    gpus = sorted({n.gpus for n in part.nodes})
    if cluster.is_cpu:
        return Check(
            "partition",
            "gres",
            OK if not cluster.gres else WARN,
            "CPU profile: ranks are CPU processes"
            + (f", but it asks for --gres={cluster.gres}" if cluster.gres else ""),
        )
    if gpus[0] < cluster.gpus_per_node:
        return Check(
            "partition",
            "gres",
            FAIL,
            f"gpus_per_node is {cluster.gpus_per_node}, but nodes have {gpus[0]} GPUs in their GRES "
            f"({part.nodes[0].gres or 'none'})",
            f"check gres: and gpus_per_node in {profile_file}",
        )
    if not cluster.gres:
        return Check(
            "partition",
            "gres",
            WARN,
            f"nodes have {gpus[0]} GPUs, but the profile requests none (gres: null): jobs may see no GPU",
            f'set gres: "gpu:{cluster.gpus_per_node}" in {profile_file}',
        )
    return Check("partition", "gres", OK, f"{gpus[0]} GPUs a node ({part.nodes[0].gres}), --gres={cluster.gres}")


# --- QoS and account ------------------------------------------------------------------------------


def qos_checks(
    cluster: ClusterProfile, part: PartitionInfo | None, config: dict[str, str], profile_file: str
) -> list[Check]:
    checks = []
    site = qos_table() if accounting_enabled(config) else None
    for name, spec in cluster.qos.items():
        if part is not None and (name in part.deny_qos or (part.allow_qos is not None and name not in part.allow_qos)):
            allowed = ", ".join(part.allow_qos or []) or "(none)"
            checks.append(
                Check(
                    "qos",
                    name,
                    FAIL,
                    f"partition {part.name} does not accept QoS {name!r} "
                    f"(AllowQos: {allowed}; DenyQos: {', '.join(part.deny_qos) or 'none'})",
                    f"remove it from qos: in {profile_file} or use the partition that takes it",
                )
            )
            continue
        if site is None:
            checks.append(
                Check(
                    "qos",
                    name,
                    SKIP,
                    "not checked: no accounting on this cluster "
                    f"(AccountingStorageType={config.get('AccountingStorageType', '?')}), so sacctmgr "
                    "cannot list QoS or their limits",
                    "check the site's documentation by hand",
                )
            )
            continue
        info = site.get(name)
        if info is None:
            checks.append(
                Check(
                    "qos",
                    name,
                    FAIL,
                    f"no QoS {name!r} on this cluster (QoS: {', '.join(sorted(site))})",
                    f"remove or rename it in qos: of {profile_file}",
                )
            )
            continue
        problems = []
        if info.max_wall_s is not None and parse_slurm_time(spec.max_time) > info.max_wall_s:
            problems.append(f"max_time {spec.max_time} > the site's MaxWall {info.max_wall_s // 3600} h")
        site_max = info.max_nodes(cluster.cpus_per_node)
        if site_max is not None and (spec.max_nodes is None or spec.max_nodes > site_max):
            problems.append(
                f"max_nodes {spec.max_nodes or 'unset'} > the site's {site_max} (MaxTRESPerJob "
                f"{','.join(f'{k}={v}' for k, v in info.max_tres.items())})"
            )
        site_min = info.min_nodes(cluster.cpus_per_node)
        if site_min is not None and (spec.min_nodes or 1) < site_min:
            problems.append(f"min_nodes {spec.min_nodes or 'unset'} < the site's {site_min} (MinTRESPerJob)")
        if problems:
            checks.append(Check("qos", name, FAIL, "; ".join(problems), f"correct qos.{name} in {profile_file}"))
        else:
            checks.append(
                Check(
                    "qos", name, OK, f"limits as the profile says (max {spec.max_nodes or '-'} nodes, {spec.max_time})"
                )
            )
    return checks


def account_checks(
    cluster: ClusterProfile, config: dict[str, str], account: str | None, needed_qos: list[str], profile_file: str
) -> list[Check]:
    if account is None:
        return [] if cluster.requires_account else [Check("account", "account", OK, "none needed")]
    if not accounting_enabled(config):
        return [
            Check(
                "account",
                account,
                SKIP,
                "not checked: no accounting on this cluster, so sacctmgr cannot "
                "list associations (sbatch --test-only below still tries the account)",
            )
        ]
    user = os.environ.get("USER", "")
    assocs = [a for a in associations(user) if a.account.lower() == account.lower()]
    if not assocs:
        mine = sorted({a.account for a in associations(user)})
        return [
            Check(
                "account",
                account,
                FAIL,
                f"user {user} has no association with account {account!r} (theirs: {', '.join(mine) or 'none'})",
                "pass one of them with --account",
            )
        ]
    usable = {q for a in assocs for q in a.qos}
    checks = [Check("account", account, OK, f"QoS it may use: {', '.join(sorted(usable)) or 'the default'}")]
    for qos in needed_qos:
        if usable and qos not in usable:
            checks.append(
                Check(
                    "account",
                    f"{account} -> {qos}",
                    FAIL,
                    f"account {account!r} may not use QoS {qos!r}, which runs need",
                    f"ask the site to add it, or leave {qos} out of auto_qos in {profile_file}",
                )
            )
    return checks


# --- experiment points --------------------------------------------------------------------------


def point_checks(
    cluster: ClusterProfile,
    account: str | None,
    specs: list[RunSpec],
    refused: list[RefusedPoint],
    part: PartitionInfo | None,
) -> list[Check]:
    checks = [
        Check("point", _label(r.point), WARN, f"refused: {r.reason}", "needs a larger allocation's QoS in the profile")
        for r in refused
    ]
    if not specs:
        return checks
    if part is None:
        return [*checks, Check("point", f"{len(specs)} points", SKIP, "not tried: the partition does not exist")]
    with tempfile.TemporaryDirectory(prefix="hpcllm-doctor-") as tmp:
        for spec in specs:
            run_dir = RunDir.of(Path(tmp), spec.experiment, cluster.name, spec.run_id)
            run_dir.path.mkdir(parents=True)
            run_dir.job_script.write_text(render_job(spec, cluster, run_dir, account=account))
            proc = run_slurm(["sbatch", "--test-only", str(run_dir.job_script)], check=False)
            said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            message = said[-1] if said else f"exit {proc.returncode}"
            if proc.returncode == 0:
                checks.append(
                    Check("point", spec.run_id, OK, f"sbatch --test-only: {message.removeprefix('sbatch: ')}")
                )
            else:
                checks.append(
                    Check(
                        "point",
                        spec.run_id,
                        FAIL,
                        f"sbatch --test-only refuses it: {message}",
                        "see the message; `hpcllm submit --dry-run` writes the script to read",
                    )
                )
    return checks


def input_checks(specs: list[RunSpec]) -> list[Check]:
    """Every input path of the experiment (store, tokenizer, checkpoints) exists on this login node."""
    missing: dict[str, list[str]] = {}
    for spec in specs:
        for m in missing_inputs(spec):
            missing.setdefault(str(m), []).append(spec.run_id)
    if not specs:
        return []
    if not missing:
        return [Check("experiment", "input paths", OK, f"every input path of {len(specs)} points exists here")]
    return [
        Check("experiment", "input path", FAIL, f"{what} (in {len(runs)} points)", "make it, or fix the experiment")
        for what, runs in missing.items()
    ]


def _label(point: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in point.items()) + "}"


# --- storage ------------------------------------------------------------------------------------


def storage_checks(
    cluster: ClusterProfile, account: str | None, specs: list[RunSpec], results_root: Path | None, profile_file: str
) -> list[Check]:
    """Each storage root of the profile, and the results root submit would use (same precedence)."""
    roots = dict(cluster.storage_roots(account))
    if results_root is not None or os.environ.get(RESULTS_ENV) or "results" not in roots:
        roots["results"] = str(results_root_for(cluster, account, results_root))
    checks = []
    for name, value in roots.items():
        key = f"paths.{name}"
        if "{account}" in value:
            checks.append(Check("storage", key, FAIL, f"{value!r} needs an account", "pass --account"))
            continue
        try:
            path = Path(expand_path(value, key)).absolute()
        except ConfigError as exc:
            checks.append(
                Check(
                    "storage",
                    key,
                    FAIL,
                    f"{exc} (on this login node)",
                    f"set the variable in your login shell, or write the path out in {profile_file}",
                )
            )
            continue
        checks.append(_root_check(name, key, path, specs if name == "results" else []))
    return checks


def _root_check(name: str, key: str, path: Path, specs: list[RunSpec]) -> Check:
    target = path
    if not path.exists():
        if name != "results":
            return Check("storage", key, FAIL, f"{path} does not exist", f"mkdir -p {path} (or correct {key})")
        target = path.parent
        while not target.exists():
            target = target.parent
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".hpcllm-doctor-"):
            pass
    except OSError as exc:
        return Check(
            "storage",
            key,
            FAIL,
            f"{target} is not writable ({exc.strerror})",
            f"choose a root you can write to for {key}",
        )
    room = min(room_at(path), key=lambda r: r.free)
    need = storage_need(specs)
    where = str(path) if path.exists() else f"{path} (created by submit under {target})"
    if need.runs and need.total > room.free:
        return Check(
            "storage",
            key,
            FAIL,
            f"{where}: the experiment needs {need.describe()}, {human_bytes(room.free)} free ({room.source})",
            "choose a larger root, keep fewer checkpoints, or submit in parts",
        )
    needs = f"; the experiment needs {human_bytes(need.total)}" if need.runs else ""
    return Check("storage", key, OK, f"{where}: writable, {human_bytes(room.free)} free ({room.source}){needs}")


# --- the Python environment ---------------------------------------------------------------------


def python_environment(cluster: ClusterProfile) -> Check:
    """The profile's modules, env and set-up lines, then its python imports hpcllm and torch."""
    probe = (
        f"{cluster.python} -c 'import json, hpcllm, torch; "
        f'print("{REPORT_PREFIX}" + json.dumps(dict(hpcllm=hpcllm.__version__, torch=torch.__version__, '
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
        if line.startswith(REPORT_PREFIX):
            try:
                out.append(json.loads(line[len(REPORT_PREFIX) :]))
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
