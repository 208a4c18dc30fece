"""Cluster profiles (``clusters/*.yaml``): site facts, kept apart from the experiments that use them.

An experiment names node counts and a QoS; the profile says what a node has, how to reach the GPUs,
which modules and environment a job needs and what the scheduler allows. The renderer checks a
run's request against these limits before anything is submitted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from hpcllm.config import NAME_PATTERN
from hpcllm.config.accounting import AccountingSettings
from hpcllm.config.loader import load_model
from hpcllm.config.text import OneLine, SbatchOption, one_line, shell_variable_name
from hpcllm.errors import ConfigError
from hpcllm.paths import project_folder
from hpcllm.rundir import check_name
from hpcllm.sitepaths import root_names

_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")


def parse_slurm_time(value: str) -> int:
    """SLURM time ``[D-]HH:MM:SS`` -> seconds (the only form we accept: unambiguous)."""
    match = _TIME_RE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a time; use [D-]HH:MM:SS, e.g. 00:30:00 or 1-00:00:00")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _valid_time(value: str) -> str:
    parse_slurm_time(value)
    return value.strip()  # "00:30:00\n" would end the #SBATCH --time line early


# A wall time as SLURM writes it, checked where it is declared (profiles and experiments).
SlurmTime = Annotated[str, AfterValidator(_valid_time)]


class QosSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    max_time: SlurmTime = Field(description="Wall-time limit of this QoS, [D-]HH:MM:SS.")
    max_nodes: int | None = Field(None, gt=0, description="Most nodes one job may use; null = partition limit.")
    min_nodes: int | None = Field(
        None, gt=0, description="Fewest nodes a job must use (big-job QoS such as boost_qos_bprod); null = 1."
    )
    description: str = ""

    @model_validator(mode="after")
    def _range(self) -> QosSpec:
        if self.min_nodes is not None and self.max_nodes is not None and self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes ({self.min_nodes}) > max_nodes ({self.max_nodes})")
        return self


class ClusterProfile(BaseModel):
    """One system (or one partition of it) as hpcllm sees it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    name: str = Field(description="Short name used on the command line (--cluster NAME).", pattern=NAME_PATTERN)
    description: str = ""
    scheduler: Literal["slurm", "local"] = Field(
        description="slurm: submit with sbatch. local: run on this machine, one job at a time."
    )
    partition: OneLine | None = Field(None, description="SLURM partition (-p).")
    account: OneLine | None = Field(
        None, description="Project to charge (-A). Overridden by $HPCLLM_ACCOUNT, then by --account."
    )
    requires_account: bool = Field(True, description="The site rejects jobs without an account.")
    qos: dict[OneLine, QosSpec] = Field(default_factory=dict, description="QoS names and their limits.")
    default_qos: OneLine | None = Field(None, description="QoS of a run that names none (unless auto_qos is set).")
    auto_qos: list[OneLine] = Field(
        default_factory=list,
        description="A run that names no QoS gets the first of these that admits its nodes and time; "
        "a run none admits is refused with each one's limit.",
    )
    max_nodes: int = Field(1, gt=0, description="Nodes in the partition: more would pend forever.")
    gpu_type: str = Field(description="Accelerator model for MFU (see hpcllm.perf), or 'cpu'.")
    gpus_per_node: int = Field(gt=0, description="Ranks per node (one per GPU; CPU ranks on 'cpu').")
    gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="Memory of one GPU in GiB (`nvidia-smi --query-gpu=memory.total --format=csv` on a "
        "compute node); on a CPU profile, the host memory one rank may use. `hpcllm submit` skips points whose "
        "estimate exceeds it; null = no memory check.",
    )
    cpus_per_node: int = Field(gt=0, description="Cores of one node, all given to the node's task.")
    min_cpus_per_gpu: int | None = Field(None, gt=0, description="Site rule: at least this many cores per GPU.")
    gres: OneLine | None = Field(None, description="--gres value, e.g. gpu:4; null = none.")
    mem: OneLine | None = Field(None, description="--mem value (0 = all of the node); null = no --mem line.")
    exclusive: bool = Field(True, description="Add --exclusive (whole nodes for scaling runs).")
    modules: list[OneLine] = Field(default_factory=list, description="`module load` these, in order.")
    system_nccl: bool = Field(
        False,
        description="Allow a site NCCL module: it shadows the NCCL torch was built and tested with "
        "(LD_LIBRARY_PATH beats the wheel's RUNPATH); only for sites whose network needs it.",
    )
    setup: list[str] = Field(
        default_factory=list, description="Shell lines run before launch (activate the venv etc.)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Exported in the job (NCCL etc.).")
    sbatch_extra: list[SbatchOption] = Field(
        default_factory=list, description="Extra #SBATCH options, e.g. --constraint=... ."
    )
    python: OneLine = Field("python", description="Interpreter that has hpcllm[train] installed.")
    signal_before_end_s: int = Field(
        300, gt=0, description="--signal=B:USR1@N: seconds before the time limit to checkpoint."
    )
    max_restarts: int = Field(3, ge=0, description="Requeues a run may use (time limits + failures).")
    preflight_from_nodes: int | None = Field(
        None,
        gt=0,
        description="Pre-flight node checks by default for jobs of this many nodes or more; null = only on request.",
    )
    preflight_min_fraction: float = Field(
        0.7, gt=0, lt=1, description="The pre-flight names a node below this fraction of the median node in any figure."
    )
    template: str = Field(
        "sbatch.sh.j2",
        description="Template in templates/ used to render jobs.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\.j2$",
    )
    paths: dict[str, OneLine] = Field(
        default_factory=dict,
        description="Storage roots by name. Experiments write `{scratch}/data` and get this site's path; "
        "`results` is where `hpcllm submit` puts run directories (default ./results). Values may use "
        "$VAR, ${VAR} and ~ (expanded where the path is used) and {account}.",
    )
    max_array_size: int = Field(
        0,
        ge=0,
        description="SLURM: submit grid points with equal resources as one job array of at most "
        "this many tasks (keep it <= the site's MaxArraySize); 0 = one job per run.",
    )
    accounting: AccountingSettings = Field(
        default_factory=AccountingSettings,
        description="How the site bills and where its budget is read (`hpcllm plan`, docs/plan.md).",
    )

    @model_validator(mode="after")
    def _check(self) -> ClusterProfile:
        for key in self.env:
            try:
                shell_variable_name(key)
            except ValueError as exc:
                raise ValueError(f"env: {exc}") from None
        if self.default_qos is not None and self.default_qos not in self.qos:
            raise ValueError(
                f"default_qos {self.default_qos!r} is not one of the qos names: {', '.join(self.qos) or '(none)'}"
            )
        for name in self.auto_qos:
            if name not in self.qos:
                raise ValueError(f"auto_qos: {name!r} is not one of the qos names: {', '.join(self.qos) or '(none)'}")
        if self.auto_qos and self.default_qos is not None:
            raise ValueError("set default_qos or auto_qos, not both (auto_qos chooses for runs that name no QoS)")
        for key, value in self.paths.items():
            if not key.isidentifier():
                raise ValueError(f"paths: {key!r} is not a name (letters, digits, _): experiments write {{name}}")
            unknown = [r for r in root_names(value) if r != "account"]
            if unknown:
                raise ValueError(f"paths.{key}: {{{unknown[0]}}}: only {{account}} may appear in a storage root")
        nccl = [m for m in self.modules if m.split("/")[0].lower() == "nccl"]
        if nccl and not self.system_nccl:
            raise ValueError(
                f"modules: {nccl[0]!r} would put the site's NCCL ahead of the one torch ships with; "
                "remove it, or set system_nccl: true if this site's network needs it"
            )
        if self.min_cpus_per_gpu and self.cpus_per_node < self.min_cpus_per_gpu * self.gpus_per_node:
            raise ValueError(
                f"cpus_per_node ({self.cpus_per_node}) < min_cpus_per_gpu ({self.min_cpus_per_gpu}) "
                f"x gpus_per_node ({self.gpus_per_node})"
            )
        return self

    @property
    def is_cpu(self) -> bool:
        return self.gpu_type.lower() == "cpu"

    def storage_roots(self, account: str | None) -> dict[str, str]:
        """``paths`` with ``{account}`` filled in (left as is without an account: whoever uses such a
        root says that it needs one)."""
        if account:
            check_name(account, "account")
        return {name: value.replace("{account}", account) if account else value for name, value in self.paths.items()}

    def resolve_account(self, cli_account: str | None = None) -> str | None:
        """--account beats $HPCLLM_ACCOUNT beats the profile; error if the site needs one and none is set."""
        if self.scheduler == "local":
            return None
        account = cli_account or os.environ.get("HPCLLM_ACCOUNT") or self.account
        if self.scheduler == "slurm" and self.requires_account and not account:
            raise AccountMissing(
                f"cluster {self.name!r} needs an account: set `account:` in its profile, "
                "export HPCLLM_ACCOUNT=<project>, or pass --account <project>"
            )
        if account is not None:
            try:
                one_line(account)
            except ValueError as exc:
                raise ConfigError(f"account {account!r}: {exc}") from None
            check_name(account, "account")  # it fills {account} in storage roots: a folder name
        return account


class AccountMissing(ConfigError):
    """The site needs an account and none is set (a dry run renders without one; a bad one is refused)."""


def clusters_dir() -> Path:
    """The profiles folder: $HPCLLM_CLUSTERS_DIR, ./clusters, or the installed copies."""
    return project_folder("clusters", "HPCLLM_CLUSTERS_DIR")


def available_clusters(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or clusters_dir()).glob("*.yaml"))


def load_cluster(name_or_path: str, directory: Path | None = None) -> ClusterProfile:
    """A profile by name (``clusters/<name>.yaml``) or by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = (directory or clusters_dir()) / f"{name_or_path}.yaml"
    if not os.path.lexists(path):  # a link that leads nowhere is read, and named for what it is
        known = available_clusters(directory)
        raise ConfigError(
            f"no cluster profile {name_or_path!r} ({path} does not exist); known: {', '.join(known) or '(none)'}"
        )
    return load_model(ClusterProfile, path)
