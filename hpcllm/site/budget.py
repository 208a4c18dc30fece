"""A grid's cost against what its account has left: ``hpcllm plan``, and the check ``hpcllm submit``
makes before it queues anything.

The points to price are those ``submit`` would queue: every point of the grid a QoS admits and whose
memory estimate fits the GPUs, less the runs already completed under the results root (``submit``
skips them all). Each point's step time comes
from ``hpcllm.collect.steptimes`` (and says from where), its cost from ``hpcllm.plan.cost``, and the
account's allowance from the scheduler (``hpcllm.launch.accounting``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hpcllm.collect.steptimes import StepTimes
from hpcllm.config.cluster import ClusterProfile, load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.errors import BackendError, ConfigError
from hpcllm.launch.accounting import AccountBudget, account_budget, site_budget_text
from hpcllm.launch.memcheck import Unfit, split_by_fit
from hpcllm.launch.orchestrate import results_root_for
from hpcllm.launch.probeindex import measured_largest_fits
from hpcllm.plan.cost import PlanTotal, PointCost, point_cost, total
from hpcllm.plan.expand import expand_experiment
from hpcllm.plan.qos import RefusedPoint


@dataclass(frozen=True)
class Overrun:
    """A capped TRES the grid would overspend."""

    tres: str
    planned_min: float
    left_min: float


@dataclass
class Plan:
    experiment: str
    cluster: ClusterProfile
    account: str | None
    costs: list[PointCost]
    total: PlanTotal
    done: list[str] = field(default_factory=list)  # completed runs, not priced
    refused: list[RefusedPoint] = field(default_factory=list)
    unfit: list[Unfit] = field(default_factory=list)  # over the GPU memory: submit skips them
    budget: AccountBudget | None = None
    budget_note: str = ""  # why the scheduler's allowance is not known
    site_budget: str | None = None  # the site's budget command's output
    site_budget_note: str = ""

    def planned_min(self, tres: str) -> float | None:
        per_point = [c.tres_minutes(tres, self.cluster.cpus_per_node) for c in self.costs]
        return None if any(m is None for m in per_point) else sum(m or 0.0 for m in per_point)

    @property
    def overruns(self) -> list[Overrun]:
        out = []
        for allowance in self.budget.allowances if self.budget else []:
            planned = self.planned_min(allowance.tres)
            if planned is not None and planned > allowance.left_min:
                out.append(Overrun(allowance.tres, planned, allowance.left_min))
        return out


def build_plan(
    experiment_path: Path,
    cluster_name: str,
    *,
    account: str | None = None,
    results_root: Path | None = None,
    mfu: float | None = None,
    ask_scheduler: bool = True,
    memory_check: bool = True,
) -> Plan:
    """Price every point ``submit`` would queue; with ``ask_scheduler``, read the account's allowance."""
    experiment = load_experiment(experiment_path)
    if experiment.search is not None:  # its trials are chosen while it runs: no grid to price
        raise ConfigError(
            f"{experiment_path}: search: this experiment is a hyper-parameter search; run it "
            f"with `hpcllm search run {experiment_path} --cluster {cluster_name}`"
        )
    cluster = load_cluster(cluster_name)
    # --account, else $HPCLLM_ACCOUNT, else the profile's, checked as submit checks it; none at all is
    # no error here: the scheduler's default account of the user is then read.
    given = account or os.environ.get("HPCLLM_ACCOUNT") or cluster.account
    account = cluster.resolve_account(account) if given else None
    root = _results_root(cluster, account, results_root)
    refused: list[RefusedPoint] = []
    specs = expand_experiment(experiment, cluster, str(experiment_path), account=account, refused=refused)
    unfit: list[Unfit] = []
    if memory_check:  # as submit: points over the GPU memory are not submitted, so not priced
        measured = measured_largest_fits(root, experiment.name, cluster.name) if root is not None else {}
        specs, unfit = split_by_fit(specs, cluster, measured)
    times = StepTimes.build(cluster, root, mfu)
    todo = [s for s in specs if s.run_id not in times.completed]
    costs = [point_cost(spec, cluster, times.lookup(spec)) for spec in todo]
    plan = Plan(
        experiment.name,
        cluster,
        account,
        costs,
        total(costs, cluster),
        [s.run_id for s in specs if s.run_id in times.completed],
        refused,
        unfit,
    )
    if ask_scheduler and cluster.scheduler == "slurm":
        _ask_scheduler(plan)
    elif cluster.scheduler != "slurm":
        plan.budget_note = f"cluster {cluster.name!r} has no scheduler: no allowance to compare with"
    return plan


def _results_root(cluster: ClusterProfile, account: str | None, given: Path | None) -> Path | None:
    try:
        return results_root_for(cluster, account, given)
    except ConfigError:  # a root that needs an account we lack: no finished runs to read, nothing else lost
        return None


def _ask_scheduler(plan: Plan) -> None:
    try:
        plan.budget = account_budget(plan.account)
        if plan.budget is None:
            plan.budget_note = "the scheduler keeps no accounting for this account (no slurmdbd, or no association)"
    except BackendError as exc:
        plan.budget_note = str(exc)
    command = plan.cluster.accounting.budget_command
    if command is not None:
        try:
            plan.site_budget = site_budget_text(command)
        except BackendError as exc:
            plan.site_budget_note = str(exc)
