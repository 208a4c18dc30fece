"""Read what a run's attempts ran on (``runtime.jsonl``, written by ``hpcllm.engine.runtime``), torch-free."""

from __future__ import annotations

from typing import Any

from hpcllm import runfiles
from hpcllm.rundir import RUNTIME, RunDir


def last_runtime(run_dir: RunDir, problems: list[str] | None = None) -> dict[str, Any] | None:
    """The latest attempt's record, or None before the engine has written one; ``problems`` receives
    one line when the file cannot be read or a line of its tail is damaged (``progress.last_metrics``)."""
    # The tail only; a line being written right now is skipped.
    return runfiles.tail_record(run_dir.file(RUNTIME), check=runtime_problem, problems=problems)


def runtime_problem(record: dict[str, Any]) -> str | None:
    """Why a runtime line is not one the engine writes (``hpcllm.engine.runtime.record_runtime``)."""
    for key, kind in (("software", dict), ("ranks", list), ("nodes", list), ("hosts", list)):
        if record.get(key) is not None and not isinstance(record[key], kind):
            return f"field {key!r} holds a value of the wrong type (not a JSON {'object' if kind is dict else 'array'})"
    return runfiles.wrong_field(record, ("world_size", "restart"))


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
