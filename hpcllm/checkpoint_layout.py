"""The checkpoint folder layout, and what can be learnt of it without torch.

``hpcllm ckpt ls`` runs on login nodes, which may have no torch: it lists checkpoints from their
names, their ``trainer_state.json`` (JSON on purpose) and the presence of DCP's files. Checking
every shard against DCP's index needs torch (the index is a pickle of torch types): that is
``hpcllm.engine.checkpoint.verify_checkpoint``, used on resume and by ``ckpt ls --verify``.
The layout itself is documented in ``hpcllm/engine/checkpoint.py`` and docs/checkpoints.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcllm.errors import HpcllmError
from hpcllm.runfiles import MissingFile, RunFileProblem, read_json_object, read_text

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
DCP_METADATA = ".metadata"
TMP_PREFIX = ".tmp_"
STEP_RE = re.compile(r"^step_(\d+)$")
TRAINER_KEYS = ("step", "consumed_samples", "scheduler", "loader", "world_size")


class CheckpointCorrupt(HpcllmError):
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
    """For listing only: None when missing or damaged (``check_files`` says which)."""
    try:
        return read_json_object(path / TRAINER_STATE)
    except RunFileProblem:
        return None


def incomplete_saves(ckpt_root: Path) -> list[Path]:
    """Temp folders of saves in progress or interrupted by a crash (removed at the next start)."""
    return sorted(ckpt_root.glob(f"{TMP_PREFIX}*")) if ckpt_root.is_dir() else []


def read_latest_pointer(ckpt_root: Path) -> Path | None:
    """The folder the ``latest`` pointer names, or None if there is no pointer.

    The pointer is trusted with nothing but a name: it must be ``step_<N>``, a folder of this same
    ``checkpoints/`` (after links are resolved), else CheckpointCorrupt. A pointer of
    ``../../<other run>/checkpoints/step_N`` would make ``ckpt export`` write another run's weights
    as this run's, and a resume continue another run.
    """
    pointer = ckpt_root / LATEST
    try:
        name = read_text(pointer).strip()
    except MissingFile:
        return None
    except RunFileProblem as exc:
        raise CheckpointCorrupt(str(exc)) from None
    if not STEP_RE.match(name):
        raise CheckpointCorrupt(f"{pointer}: names {name[:80]!r}, not a step_<N> folder of {ckpt_root}")
    chosen = ckpt_root / name
    if os.path.realpath(chosen.parent) != os.path.realpath(ckpt_root) or (
        chosen.is_symlink() and os.path.dirname(os.path.realpath(chosen)) != os.path.realpath(ckpt_root)
    ):
        raise CheckpointCorrupt(f"{pointer}: {name} leads outside {ckpt_root}")
    return chosen


def check_files(path: Path) -> None:
    """Raise CheckpointCorrupt unless ``path`` has a whole trainer state, DCP's index and shards.

    The part of verification that needs no torch: it catches a torn or missing trainer state and
    deleted DCP files, not a truncated shard (that takes DCP's index: ``verify_checkpoint``).
    """
    try:
        trainer = read_json_object(path / TRAINER_STATE)
    except MissingFile:
        raise CheckpointCorrupt(f"{path}: missing {TRAINER_STATE}") from None
    except RunFileProblem as exc:
        raise CheckpointCorrupt(f"{path}: {TRAINER_STATE}: {exc.reason}") from None
    missing = [k for k in TRAINER_KEYS if k not in trainer]
    if missing:
        raise CheckpointCorrupt(f"{path}: {TRAINER_STATE} lacks {', '.join(missing)}")
    if not (path / DCP_METADATA).is_file():
        raise CheckpointCorrupt(f"{path}: missing DCP metadata ({DCP_METADATA})")
    if not any(path.glob("*.distcp")):
        raise CheckpointCorrupt(f"{path}: no DCP shard (*.distcp)")
