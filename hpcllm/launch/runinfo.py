"""Read what a run's attempts ran on (``runtime.jsonl``, written by ``hpcllm.engine.runtime``), torch-free."""

from __future__ import annotations

from typing import Any

from hpcllm import runfiles
from hpcllm.rundir import RUNTIME, RunDir


def last_runtime(run_dir: RunDir) -> dict[str, Any] | None:
    """The latest attempt's record, or None before the engine has written one."""
    try:  # the tail only; a line cut by a crash while it was written is skipped
        return runfiles.last_json_line(run_dir.file(RUNTIME))
    except runfiles.RunFileProblem:  # missing (not started yet) or damaged: nothing to show
        return None


def software_label(record: dict[str, Any] | None) -> str:
    """``torch 2.5.1 cuda 12.4 nccl 2.21.5 driver 550.54, 8 nodes`` (what `hpcllm status` shows)."""
    if not record:
        return ""
    sw = _object(record.get("software"))
    ranks = record.get("ranks")
    first = _object(ranks[0] if isinstance(ranks, list) and ranks else None)
    parts = [f"torch {sw.get('torch')}"]
    parts += [
        f"{name} {value}"
        for name, value in (("cuda", sw.get("cuda")), ("nccl", sw.get("nccl")), ("driver", first.get("driver")))
        if value
    ]
    hosts = record.get("nodes") or record.get("hosts")
    nodes = len(hosts) if isinstance(hosts, list) else 0
    return f"{' '.join(parts)}, {nodes} node{'s' * (nodes != 1)}"


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else {} (a damaged record shows less, never crashes ``status``)."""
    return value if isinstance(value, dict) else {}
