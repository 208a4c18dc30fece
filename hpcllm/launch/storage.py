"""Will the checkpoints fit? Estimate what a grid writes and compare it with the room where it goes.

A DCP checkpoint holds fp32 weights and AdamW's two moments (``hpcllm.plan.memory.checkpoint_bytes``):
about 33 GB for 2.7B, 336 GB for 28B. A grid of such runs in a directory under ``$HOME`` (Leonardo:
50 GB quota) fails hours later in the middle of a save. So ``hpcllm submit`` adds up
``checkpoint bytes x checkpoints kept x runs`` before anything is queued, shows it, and refuses when
the results root cannot hold it, by ``df`` (free blocks) or, on Lustre, ``lfs quota`` (the user's
and the directory group's limits), whichever leaves less room. Torch-free: it runs on the login node.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpcllm.config.experiment import RunSpec
from hpcllm.errors import HpcllmError
from hpcllm.plan.memory import checkpoint_bytes

LFS_TIMEOUT_S = 30  # a hung Lustre client must not hang `hpcllm submit`


class StorageError(HpcllmError):
    """The checkpoints of the runs to submit do not fit where they would be written."""


@dataclass(frozen=True)
class StorageNeed:
    """What the runs will keep on disk: ``total`` normally, ``peak`` while each run saves (a new
    checkpoint is complete before the oldest is deleted)."""

    runs: int
    kept: int  # checkpoints kept per run (the largest keep_last among them)
    largest: int  # bytes of the largest single checkpoint
    uniform: bool  # every run's checkpoint has that size
    total: int
    peak: int

    def describe(self) -> str:
        if not self.runs:
            return "no checkpoints (nothing to submit)"
        each = "" if self.uniform else "up to "
        return (
            f"{human_bytes(self.total)} of checkpoints ({self.runs} run{'s' * (self.runs != 1)} x "
            f"{self.kept} kept x {each}{human_bytes(self.largest)}; {human_bytes(self.peak)} while all save at once)"
        )


@dataclass(frozen=True)
class Room:
    """Free bytes under a path by one measure, and which (``df /x``, ``lfs quota -g grp /x``)."""

    free: int
    source: str


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover - the loop returns at TB


def storage_need(specs: list[RunSpec]) -> StorageNeed:
    """Bytes the checkpoints of ``specs`` take, from the one formula in ``hpcllm.plan.memory``."""
    sizes = [(checkpoint_bytes(s.training.model, s.world_size), s.training.checkpoint.keep_last) for s in specs]
    return StorageNeed(
        runs=len(specs),
        kept=max((k for _, k in sizes), default=0),
        largest=max((b for b, _ in sizes), default=0),
        uniform=len({b for b, _ in sizes}) <= 1,
        total=sum(b * k for b, k in sizes),
        peak=sum(b * (k + 1) for b, k in sizes),
    )


def existing_ancestor(path: Path) -> Path:
    """``path`` or the nearest parent that exists (the results root may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def parse_lfs_quota(output: str) -> tuple[int, int | None] | None:
    """``lfs quota -q`` output -> (used bytes, limit bytes or None for no limit); None if unreadable.

    The line is ``<fs> <kbytes>[*] <quota> <limit> <grace> <files> ...`` in KiB (a ``*`` marks an
    exceeded quota); a long file-system name may sit on a line of its own. The hard limit counts,
    else the soft quota; 0 means none.
    """
    tokens = output.split()
    for i, token in enumerate(tokens):
        if token.startswith("/") and len(tokens) >= i + 4:
            try:
                used, soft, hard = (int(t.rstrip("*")) for t in tokens[i + 1 : i + 4])
            except ValueError:
                return None
            limit = hard or soft
            return used * 1024, (limit * 1024 if limit else None)
    return None


def _lfs_quota(kind: str, name: str, path: Path) -> Room | None:
    cmd = ["lfs", "quota", "-q", kind, name, str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LFS_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parsed = parse_lfs_quota(proc.stdout) if proc.returncode == 0 else None
    if parsed is None:
        return None
    used, limit = parsed
    if limit is None:
        return None
    return Room(max(limit - used, 0), f"`{' '.join(cmd)}`: {human_bytes(used)} used of {human_bytes(limit)}")


def room_at(root: Path) -> list[Room]:
    """Every measure of the room under ``root`` that this machine can take (df always; lfs quota
    for the user and for the directory's group where ``lfs`` exists)."""
    where = existing_ancestor(root)
    rooms = [Room(shutil.disk_usage(where).free, f"`df {where}`")]
    if shutil.which("lfs"):
        user = os.environ.get("USER") or str(os.getuid())
        try:
            group = grp.getgrgid(where.stat().st_gid).gr_name
        except KeyError:
            group = str(where.stat().st_gid)
        for kind, name in (("-u", user), ("-g", group)):
            room = _lfs_quota(kind, name, where)
            if room is not None:
                rooms.append(room)
    return rooms


def check_storage(need: StorageNeed, root: Path, *, profile_file: str) -> Room:
    """The tightest measure of room under ``root``; StorageError when ``need.total`` exceeds it."""
    tightest = min(room_at(root), key=lambda r: r.free)
    if need.total > tightest.free:
        raise StorageError(
            f"{root}: the runs to submit need {need.describe()}, but only {human_bytes(tightest.free)} "
            f"is free there ({tightest.source}); put results where there is room (--results, or "
            f"paths.results in {profile_file}), keep fewer checkpoints (checkpoint.keep_last), or "
            "submit fewer runs at once"
        )
    return tightest
