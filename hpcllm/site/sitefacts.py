"""What the live cluster says about itself: scontrol, sinfo and sacctmgr, read into plain records.

Torch-free, for ``hpcllm doctor`` on a login node. Each function is one scheduler call; parsing is
kept apart from calling so that the formats (``key=value`` records, ``sacctmgr -P`` pipes, GRES
strings like ``gpu:a100:4(S:0-1)``) can be tested on their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hpcllm.launch.backends.slurmtext import parse_duration
from hpcllm.launch.slurmcmd import parse_scontrol_record, run_slurm


@dataclass(frozen=True)
class NodeInfo:
    name: str
    cpus: int
    gres: str
    state: str

    @property
    def gpus(self) -> int:
        return gpu_count(self.gres)


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    state: str
    total_nodes: int
    max_nodes_per_job: int | None  # None: UNLIMITED
    max_time_s: int | None
    allow_qos: list[str] | None  # None: ALL
    deny_qos: list[str]
    nodes: list[NodeInfo] = field(default_factory=list)


@dataclass(frozen=True)
class QosInfo:
    name: str
    max_wall_s: int | None
    max_tres: dict[str, str]  # per job, e.g. {"node": "64"} or {"cpu": "8000"}
    min_tres: dict[str, str]

    def max_nodes(self, cpus_per_node: int) -> int | None:
        """The node limit per job, from ``node=N`` or (MareNostrum 5 style) ``cpu=C`` / cores a node."""
        if "node" in self.max_tres:
            return int(self.max_tres["node"])
        if "cpu" in self.max_tres:
            return int(self.max_tres["cpu"]) // cpus_per_node
        return None

    def min_nodes(self, cpus_per_node: int) -> int | None:
        if "node" in self.min_tres:
            return int(self.min_tres["node"])
        if "cpu" in self.min_tres:
            return -(-int(self.min_tres["cpu"]) // cpus_per_node)
        return None


@dataclass(frozen=True)
class Association:
    account: str
    partition: str  # "" = every partition
    qos: list[str]


def gpu_count(gres: str) -> int:
    """GPUs in a node's GRES: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:h100:2,gpu:a100:2`` -> 4, 4, 4."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres or ""):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_tres(text: str) -> dict[str, str]:
    """``cpu=8000,node=100,gres/gpu=400`` -> ``{"cpu": "8000", "node": "100", "gres/gpu": "400"}``."""
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def parse_qos_table(output: str) -> dict[str, QosInfo]:
    """``sacctmgr -nP show qos format=Name,MaxWall,MaxTRESPerJob,MinTRESPerJob`` output."""
    table = {}
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) < 4 or not fields[0]:
            continue
        name, wall, max_tres, min_tres = fields[:4]
        table[name] = QosInfo(name, parse_duration(wall) if wall else None, parse_tres(max_tres), parse_tres(min_tres))
    return table


def parse_associations(output: str) -> list[Association]:
    """``sacctmgr -nP show assoc format=Account,Partition,QOS`` output."""
    out = []
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) >= 3 and fields[0]:
            out.append(Association(fields[0], fields[1], [q for q in fields[2].split(",") if q]))
    return out


def parse_partition(record: dict[str, str], nodes: list[NodeInfo]) -> PartitionInfo:
    def names(value: str) -> list[str]:
        return [v for v in value.split(",") if v]

    max_nodes = record.get("MaxNodes", "UNLIMITED")
    allow = record.get("AllowQos", "ALL")
    deny = record.get("DenyQos", "")
    return PartitionInfo(
        name=record.get("PartitionName", ""),
        state=record.get("State", ""),
        total_nodes=int(record.get("TotalNodes", "0") or 0),
        max_nodes_per_job=int(max_nodes) if max_nodes.isdigit() else None,
        max_time_s=parse_duration(record.get("MaxTime", "UNLIMITED")),
        allow_qos=None if allow == "ALL" else names(allow),
        deny_qos=[] if deny in ("", "(null)") else names(deny),
        nodes=nodes,
    )


# --- calls --------------------------------------------------------------------------------------


def slurm_config() -> dict[str, str]:
    """``scontrol show config`` as a mapping (raises BackendError when slurmctld does not answer)."""
    config = {}
    for line in run_slurm(["scontrol", "show", "config"]).stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def accounting_enabled(config: dict[str, str]) -> bool:
    """Whether sacctmgr can answer: only with slurmdbd (the local cluster, like many, has none)."""
    return "slurmdbd" in config.get("AccountingStorageType", "")


def partition_names() -> list[str]:
    return [p.rstrip("*") for p in run_slurm(["sinfo", "-h", "-o", "%P"]).stdout.split()]


def partition(name: str) -> PartitionInfo | None:
    """The partition and its nodes, or None when SLURM knows no such partition."""
    proc = run_slurm(["scontrol", "-o", "show", "partition", name], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    nodes = []
    for line in run_slurm(["sinfo", "-h", "-N", "-p", name, "-o", "%N|%c|%G|%T"]).stdout.splitlines():
        node, cpus, gres, state = ([*line.split("|"), "", "", "", ""])[:4]
        if node and cpus.isdigit():
            nodes.append(NodeInfo(node, int(cpus), "" if gres == "(null)" else gres, state))
    return parse_partition(parse_scontrol_record(proc.stdout.splitlines()[0]), nodes)


def qos_table() -> dict[str, QosInfo]:
    out = run_slurm(["sacctmgr", "-nP", "show", "qos", "format=Name,MaxWall,MaxTRESPerJob,MinTRESPerJob"]).stdout
    return parse_qos_table(out)


def associations(user: str) -> list[Association]:
    out = run_slurm(
        ["sacctmgr", "-nP", "show", "assoc", "where", f"user={user}", "format=Account,Partition,QOS"]
    ).stdout
    return parse_associations(out)
