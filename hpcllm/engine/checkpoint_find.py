"""Which checkpoint a reference names (a step folder, a run, its ``checkpoints/``, ``RUN@N``), whether
it is whole against DCP's own index, and the DCP helpers every reader shares. Warm start,
distillation's teacher, ``generate``, ``ckpt`` and resume all go through here."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from torch.distributed.checkpoint import CheckpointException

from hpcllm.checkpoint_layout import (
    LATEST,
    CheckpointCorrupt,
    check_files,
    list_checkpoints,
    read_latest_pointer,
    step_dir_name,
)
from hpcllm.engine.dcp_metadata import read_metadata
from hpcllm.errors import ConfigError
from hpcllm.rundir import RunDir, find_run_dirs
from hpcllm.sitepaths import expand_path


def resolve_checkpoint(spec: str, key: str) -> Path:
    """The complete checkpoint folder that ``spec`` names; errors start with ``key`` (config key or option).

    ``spec`` is a ``step_<N>`` folder, or a run directory, its ``checkpoints/`` folder, or a folder
    holding exactly one run directory (``results/<exp>/<cluster>/`` of a one-run experiment): their
    latest checkpoint, or step N with an ``@N`` suffix (``results/pretrain/local/<run>@2000``).
    """
    text, step = spec, None
    head, sep, tail = spec.rpartition("@")
    if sep and tail.isdigit():
        text, step = head, int(tail)
    path = Path(expand_path(text, key))  # $VAR and ~, as for every path the engine reads
    if step is None and (path / ".metadata").is_file():
        return _verified(path, spec, key)  # a step folder named directly is checked like any other
    root = _checkpoint_root(path, spec, key)
    if step is not None:
        chosen: Path | None = root / step_dir_name(step)
        missing = f"no checkpoint at step {step}"
    else:
        try:
            chosen = read_latest_pointer(root)
        except CheckpointCorrupt as exc:
            raise ConfigError(f"{key}: {spec!r}: {exc}") from None
        missing = "no 'latest' pointer" if chosen is None else f"'latest' names {chosen.name}, which is missing"
    if chosen is None or not chosen.is_dir():  # a folder that is there but incomplete: verify says what it lacks
        steps = ", ".join(str(c.step) for c in list_checkpoints(root)) or "none"
        raise ConfigError(f"{key}: {spec!r}: {missing} in {root}; complete checkpoints at steps: {steps}")
    return _verified(chosen, spec, key)


def _verified(chosen: Path, spec: str, key: str) -> Path:
    try:
        verify_checkpoint(chosen)
    except CheckpointCorrupt as exc:
        raise ConfigError(f"{key}: {spec!r}: {exc}") from None
    return chosen


def _checkpoint_root(path: Path, spec: str, key: str) -> Path:
    """The ``checkpoints/`` folder of the run that ``path`` names (see ``resolve_checkpoint``)."""
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    if (path / LATEST).is_file() or list_checkpoints(path):
        return path
    if RunDir(path).config.is_file():
        raise ConfigError(
            f"{key}: {spec!r} is a run directory without checkpoints yet "
            "(checkpoint.every_steps / at_end decide when a run saves one)"
        )
    runs = find_run_dirs(path) if path.is_dir() else []
    if len(runs) == 1 and runs[0].checkpoints.is_dir():
        return runs[0].checkpoints
    if len(runs) > 1:
        names = ", ".join(r.path.name for r in runs[:5]) + (", ..." if len(runs) > 5 else "")
        raise ConfigError(
            f"{key}: {spec!r} is not a run directory but holds {len(runs)} runs ({names}); name one of them"
        )
    raise ConfigError(
        f"{key}: {spec!r} is not a run directory, checkpoints directory or checkpoint folder with a "
        "complete checkpoint (no 'latest' pointer or .metadata found)"
    )


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointCorrupt unless ``path`` has trainer state, DCP metadata and every shard in full.

    After the torch-free checks (``check_files``), checks file presence and sizes against DCP's
    own index (``storage_data``: file, offset, length of every item), which catches truncated and
    deleted shards without reading the tensors.
    """
    check_files(path)
    metadata = read_metadata(path)  # never runs code from the file: CheckpointCorrupt for a crafted one
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for rel, end in sorted(needed.items()):
        f = path / rel
        if not f.is_file():
            raise CheckpointCorrupt(f"{path}: shard {rel} is missing")
        size = f.stat().st_size
        if size < end:
            raise CheckpointCorrupt(f"{path}: shard {rel} is truncated ({size} bytes, index needs {end})")


@contextlib.contextmanager
def single_process_dcp() -> Iterator[None]:
    """Silence DCP's "assuming a single process" warning: world size 1 without a group is intended.

    DCP detects that case by itself (no ``no_dist`` argument needed, which older torch lacks).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def describe_failures(exc: CheckpointException) -> str:
    """The per-rank causes inside DCP's CheckpointException (its str() names only the ranks)."""
    failures = getattr(exc, "failures", None) or {}
    causes = {f"{(err[0] if isinstance(err, tuple) else err)}" for err in failures.values()}
    return "; ".join(sorted(causes)) or str(exc)
