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

import os
from pathlib import Path

from hpcllm.config.cluster import ClusterProfile, parse_slurm_time
from hpcllm.config.experiment import RunSpec, load_experiment
from hpcllm.errors import BackendError, ConfigError
from hpcllm.launch.orchestrate import results_root_for
from hpcllm.plan.expand import expand_experiment
from hpcllm.plan.qos import RefusedPoint
from hpcllm.site.checks import FAIL, OK, SKIP, WARN, Check
from hpcllm.site.jobchecks import gpu_job_checks, python_environment
from hpcllm.site.pointchecks import input_checks, point_checks, storage_checks
from hpcllm.site.sitefacts import (
    PartitionInfo,
    accounting_enabled,
    associations,
    partition,
    partition_names,
    qos_table,
    slurm_config,
)


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
