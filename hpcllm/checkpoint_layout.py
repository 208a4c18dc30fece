"""The checkpoint folder layout, and what can be learnt of it without torch.

``hpcllm ckpt ls`` runs on login nodes, which may have no torch: it lists checkpoints from their
names, their ``trainer_state.json`` (JSON on purpose) and the presence of DCP's files. Checking
every shard against DCP's index needs torch (the index is a pickle of torch types): that is
``hpcllm.engine.checkpoint.verify_checkpoint``, used on resume and by ``ckpt ls --verify``.
The layout itself is documented in ``hpcllm/engine/checkpoint.py`` and docs/checkpoints.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcllm.fsutil import read_json

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
DCP_METADATA = ".metadata"
TMP_PREFIX = ".tmp_"
STEP_RE = re.compile(r"^step_(\d+)$")
TRAINER_KEYS = ("step", "consumed_samples", "scheduler", "loader", "world_size")


class CheckpointCorrupt(Exception):
    """A step_<N> folder that is not a loadable checkpoint (truncated or missing files)."""


def step_dir_name(step: int) -> str:
    return f"step_{step}"


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint on disk, as ``hpcllm ckpt ls`` shows it."""

    path: Path
    step: int
    trainer_state: dict[str, Any] | None

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def list_checkpoints(ckpt_root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints (renamed ``step_<N>`` folders) under ``ckpt_root``, oldest first."""
    found = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = STEP_RE.match(p.name)
            if m and p.is_dir():
                found.append(CheckpointInfo(p, int(m.group(1)), _read_trainer_state(p)))
    return sorted(found, key=lambda c: c.step)


def _read_trainer_state(path: Path) -> dict[str, Any] | None:
    """For listing only: None when missing or torn (``check_files`` says which)."""
    try:
        return read_json(path / TRAINER_STATE)
    except ValueError:
        return None


def incomplete_saves(ckpt_root: Path) -> list[Path]:
    """Temp folders of saves in progress or interrupted by a crash (removed at the next start)."""
    return sorted(ckpt_root.glob(f"{TMP_PREFIX}*")) if ckpt_root.is_dir() else []


def read_latest_pointer(ckpt_root: Path) -> Path | None:
    """The folder the ``latest`` pointer names, or None if there is no pointer."""
    try:
        name = (ckpt_root / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return ckpt_root / name


def check_files(path: Path) -> None:
    """Raise CheckpointCorrupt unless ``path`` has a whole trainer state, DCP's index and shards.

    The part of verification that needs no torch: it catches a torn or missing trainer state and
    deleted DCP files, not a truncated shard (that takes DCP's index: ``verify_checkpoint``).
    """
    try:
        trainer = json.loads((path / TRAINER_STATE).read_text())
    except FileNotFoundError:
        raise CheckpointCorrupt(f"{path}: missing {TRAINER_STATE}") from None
    except ValueError as exc:
        raise CheckpointCorrupt(f"{path}: {TRAINER_STATE} is not valid JSON: {exc}") from None
    missing = [k for k in TRAINER_KEYS if k not in trainer]
    if missing:
        raise CheckpointCorrupt(f"{path}: {TRAINER_STATE} lacks {', '.join(missing)}")
    if not (path / DCP_METADATA).is_file():
        raise CheckpointCorrupt(f"{path}: missing DCP metadata ({DCP_METADATA})")
    if not any(path.glob("*.distcp")):
        raise CheckpointCorrupt(f"{path}: no DCP shard (*.distcp)")
