"""Read what a run's attempts ran on (``runtime.jsonl``, written by ``hpcllm.engine.runtime``), torch-free."""

from __future__ import annotations

import json
from typing import Any

from hpcllm.rundir import RUNTIME, RunDir


def last_runtime(run_dir: RunDir) -> dict[str, Any] | None:
    """The latest attempt's record, or None before the engine has written one."""
    try:
        with open(run_dir.file(RUNTIME), encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash while it was written
        return record
    return None


def software_label(record: dict[str, Any] | None) -> str:
    """``torch 2.5.1 cuda 12.4 nccl 2.21.5 driver 550.54, 8 nodes`` (what `hpcllm status` shows)."""
    if not record:
        return ""
    sw = record.get("software", {})
    ranks = record.get("ranks") or [{}]
    parts = [f"torch {sw.get('torch')}"]
    parts += [
        f"{name} {value}"
        for name, value in (("cuda", sw.get("cuda")), ("nccl", sw.get("nccl")), ("driver", ranks[0].get("driver")))
        if value
    ]
    nodes = len(record.get("nodes") or record.get("hosts") or [])
    return f"{' '.join(parts)}, {nodes} node{'s' * (nodes != 1)}"
