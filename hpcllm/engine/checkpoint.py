"""Checkpoints with torch.distributed.checkpoint (DCP): atomic, resumable on any number of ranks.

Layout (``RunDir.checkpoints``)::

    checkpoints/
        latest                  text "step_<N>": the newest complete checkpoint (atomic rename)
        step_<N>/               a complete checkpoint; only ever created by renaming a finished temp dir
            .metadata           DCP global metadata (written last by DCP's coordinator)
            __<r>_0.distcp      DCP shards: model + optimizer, one file per writing rank
            trainer_state.json  step, consumed samples, LR scheduler, data-loader and FP_16 loss-scaler
                                state, world size
            rng_rank<r>.pt      per-rank RNG states (python, numpy, torch, cuda)
        .tmp_step_<N>/          a save in progress (or one a crash interrupted; removed on the next start)

Why each piece:
- Model and optimizer go through ``get_state_dict``/``set_state_dict``: FQN-keyed, sharded
  (DTensor under FSDP2) state that DCP can re-shard on load, so a checkpoint written by 2 ranks
  loads on 1 or 4 (DCP reads the slices each rank needs from whichever files hold them).
- The trainer state is small, replicated and must be readable without torch (``hpcllm ckpt ls``),
  hence JSON written by rank 0. The loader's state is a *global* consumed-sample count, so it does
  not depend on the data-parallel size and needs no translation when that changes.
- RNG states differ per rank and cannot be re-sharded; they are restored only when the world size
  matches (otherwise a warning says they were not; the engine's data order does not depend on them).
- "Complete" means: the temp dir was renamed to ``step_<N>`` after DCP finished (DCP writes
  ``.metadata`` after every rank's shards) and after the trainer state was written. A crash at any
  earlier moment leaves only ``.tmp_step_<N>``, which is ignored. The ``latest`` pointer is updated
  by atomic rename after that, so it always names a complete checkpoint.
- On load, a checkpoint is also checked against its own metadata (every shard file exists and is as
  long as the metadata says); a truncated or partly deleted one is skipped with a warning that names
  it, and the next older complete one is used.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from hpcllm.checkpoint_layout import (  # the layout, readable without torch; re-exported here
    LATEST,
    TMP_PREFIX,
    TRAINER_STATE,
    CheckpointCorrupt,
    incomplete_saves,
    list_checkpoints,
    read_latest_pointer,
    step_dir_name,
)
from hpcllm.config.model import ModelConfig
from hpcllm.config.training import CheckpointConfig
from hpcllm.engine.checkpoint_find import describe_failures, single_process_dcp, verify_checkpoint
from hpcllm.engine.dcp_metadata import SafeFileSystemReader
from hpcllm.engine.distributed import barrier, is_distributed, rank, world_size
from hpcllm.engine.guards import check_weights
from hpcllm.engine.preemption import any_rank
from hpcllm.engine.state import TrainState
from hpcllm.engine.tensor_parallel import checkpoint_view, restore_from_view
from hpcllm.errors import HpcllmError
from hpcllm.fsutil import atomic_write_json, atomic_write_text, make_folders_in, read_json, write_in_folder
from hpcllm.rundir import RunDir

log = logging.getLogger(__name__)


def _warn(msg: str, *args: object) -> None:
    """Warn once per job, not once per rank: every rank sees the same files and reaches the same verdict."""
    if rank() == 0:
        log.warning(msg, *args)


# Optimizer settings owned by run.yaml: a resumed run keeps them even if the checkpoint differs.
_CONFIG_HYPERPARAMS = ("weight_decay", "betas", "eps")


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable: a node crash must not roll back a published checkpoint."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _snapshot_if_needed(obj: Any) -> Any:
    """Copy CPU tensors before ``async_save`` on torch versions whose stager would not.

    ``async_save`` must capture the state at call time, as training keeps updating parameters and
    moments in place. Newer torch stages through ``staging.DefaultStager``, which copies every
    tensor into its own buffers; older versions "offload to CPU" with ``.to("cpu")``, a no-op for
    CPU tensors, so the save thread would read weights the next optimizer steps are changing.
    """
    from torch.distributed.checkpoint import staging

    if hasattr(staging, "DefaultStager"):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone() if obj.device.type == "cpu" else obj
    if isinstance(obj, dict):
        return {k: _snapshot_if_needed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_snapshot_if_needed(v) for v in obj]
    return obj


class Checkpointer:
    """Saves and restores the engine's ``TrainState`` under ``run_dir.checkpoints``.

    All methods are called on every rank at the same point of the train loop (they contain
    collectives), except where noted.
    """

    def __init__(self, run_dir: RunDir, cfg: CheckpointConfig) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.root = run_dir.checkpoints
        self._last_save_time = time.monotonic()
        self._last_saved_step: int | None = None
        self._pending: tuple[Future[Any], Path, int] | None = None
        # On gloo, an async save must not share the default group with training: the save thread's
        # collectives would interleave with the train loop's and crash or hang. new_group is itself
        # a collective, so every rank creates it here, at the same point.
        self._save_group = dist.new_group(backend="gloo") if cfg.async_save and is_distributed() else None
        if rank() == 0:
            make_folders_in(run_dir.path, self.root)  # never the run folder itself (moved away: an error)
            self._remove_stale_temp_dirs()
        barrier()

    # --- resume --------------------------------------------------------------------------------
    def load_latest(self, state: TrainState) -> bool:
        """Restore ``state`` in place from the newest complete checkpoint; False when there is none.

        Candidates: the folder ``latest`` names, then every other ``step_<N>``, newest first. A
        candidate that fails verification is skipped with a warning naming it. A verified one that
        does not fit this run (another data setup, another model) is an error, not skipped: every
        older checkpoint of the run would have the same problem. Checkpoints exist but none
        verifies: an error too (starting over is ``--no-resume``'s job, not a silent fallback).
        """
        candidates = self._candidates()
        path = self._choose(candidates)
        if path is not None:
            self._load(path, state)
            log.info("resumed from %s (step %d, %d samples consumed)", path, state.step, state.consumed_samples)
            self._last_saved_step = state.step
            return True
        if candidates:
            # Starting over here would silently throw the run's progress away (and overwrite it).
            raise HpcllmError(
                f"{self.root}: none of the {len(candidates)} checkpoints is usable (warnings above name "
                "each); move them away, or start over with --no-resume / checkpoint.resume: false"
            )
        return False

    @staticmethod
    def _choose(candidates: list[Path]) -> Path | None:
        """The newest candidate that verifies, decided by rank 0 and broadcast.

        One verdict for all ranks: on a shared file system ranks could otherwise see a file at
        different moments and resume from different steps; and only rank 0 stats every shard.
        """
        choice: str | None = None
        if rank() == 0:
            for path in candidates:
                try:
                    verify_checkpoint(path)
                except CheckpointCorrupt as exc:
                    _warn("skipping checkpoint %s: %s", path, exc)
                    continue
                choice = str(path)
                break
        if world_size() > 1:
            box = [choice]
            dist.broadcast_object_list(box, src=0)
            choice = box[0]
        return None if choice is None else Path(choice)

    def _candidates(self) -> list[Path]:
        try:
            latest = read_latest_pointer(self.root)
        except CheckpointCorrupt as exc:  # resume from the newest complete checkpoint instead
            _warn("ignoring checkpoint pointer: %s", exc)
            latest = None
        others = [c.path for c in reversed(list_checkpoints(self.root))]
        if latest is not None:
            if latest.exists():
                others = [latest] + [p for p in others if p != latest]
            else:
                _warn("checkpoint pointer %s names %s, which does not exist", self.root / LATEST, latest)
        return others

    def _load(self, path: Path, state: TrainState) -> None:
        trainer = read_json(path / TRAINER_STATE)
        assert trainer is not None, f"{path}: verified, so it holds {TRAINER_STATE}"
        fresh_loader = state.loader.state_dict()
        state.loader.load_state_dict(trainer["loader"])  # first: it refuses another data setup
        model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
        sd: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        view = checkpoint_view(sd)  # tensor parallelism's strided rows, as saved
        try:
            with single_process_dcp():
                dcp.load(view, storage_reader=SafeFileSystemReader(str(path)))
            restore_from_view(sd, view)
        except CheckpointException as exc:  # raised on every rank alike
            state.loader.load_state_dict(fresh_loader)
            # The files passed verification, so the model or optimizer no longer matches them
            # (another architecture in run.yaml): every older checkpoint would fail the same way.
            raise HpcllmError(
                f"{path}: cannot be loaded into this run's model/optimizer ({describe_failures(exc)}); was "
                "run.yaml's model changed? Restore it, or start over with --no-resume"
            ) from None
        # Hyperparameters come from run.yaml, not from the checkpoint (the scheduler sets lr).
        hyper = [{k: g[k] for k in _CONFIG_HYPERPARAMS if k in g} for g in state.optimizer.param_groups]
        set_state_dict(state.model, state.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        for group, values in zip(state.optimizer.param_groups, hyper, strict=True):
            group.update(values)
        state.scheduler.load_state_dict(trainer["scheduler"])
        if state.loss_scaler is not None and trainer.get("loss_scaler") is not None:
            state.loss_scaler.load_state_dict(trainer["loss_scaler"])  # FP_16: resume at the scale reached
        state.step = int(trainer["step"])
        state.consumed_samples = int(trainer["consumed_samples"])
        state.init_from = trainer.get("init_from")
        self._load_rng(path, int(trainer["world_size"]))

    def _load_rng(self, path: Path, saved_world: int) -> None:
        f = path / f"rng_rank{rank()}.pt"
        if saved_world != world_size() or not f.is_file():
            _warn(
                "%s was saved by %d ranks, this run has %d: per-rank RNG states are not restored",
                path,
                saved_world,
                world_size(),
            )
            return
        try:
            rng = torch.load(f, weights_only=True)
        except Exception as exc:
            _warn("%s: unreadable (%s): per-rank RNG states are not restored", f, exc)
            return
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        np_state = rng["numpy"]
        np.random.set_state((np_state[0], rng["numpy_keys"].numpy().astype(np.uint32), *np_state[1:]))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and rng.get("cuda"):
            torch.cuda.set_rng_state_all(rng["cuda"])

    # --- save ----------------------------------------------------------------------------------
    def maybe_save(self, state: TrainState, *, force: bool = False) -> None:
        """Save if ``every_steps`` divides the step, ``every_minutes`` have passed, or ``force``.

        The time rule is decided collectively (any rank's clock past the mark), so that ranks never
        disagree on whether a save (a collective) happens.
        """
        self._poll_pending()
        if self._last_saved_step == state.step:
            return
        due = force or (self.cfg.every_steps is not None and state.step % self.cfg.every_steps == 0)
        if self.cfg.every_minutes is not None and not due:
            elapsed = time.monotonic() - self._last_save_time
            due = any_rank(elapsed >= 60.0 * self.cfg.every_minutes)
        if due:
            self.save(state)

    def save(self, state: TrainState) -> None:
        """Write a checkpoint of ``state`` now (async if configured); rank 0 publishes it when complete.

        Never of inf/NaN weights: they would poison every restart (raises NonFiniteError instead).
        """
        check_weights(state.model, state.step)
        self.wait()  # one save in flight at a time: the next one would overwrite its staging buffers
        step = state.step
        final = self.root / step_dir_name(step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        gone = False
        if rank() == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            gone = not write_in_folder(self.run_dir.path, tmp, tmp.mkdir)
        if any_rank(gone):  # every rank at once: the run folder was moved away, nowhere to save (said once)
            return
        self._write_rng(tmp)
        if rank() == 0:
            atomic_write_json(tmp / TRAINER_STATE, self._trainer_state(state), make_parents=False)
        model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
        sd = checkpoint_view({"model": model_sd, "optim": optim_sd})  # tensor parallelism's strided rows gathered
        self._last_saved_step = step
        self._last_save_time = time.monotonic()
        if self.cfg.async_save:
            with single_process_dcp():
                future = dcp.async_save(_snapshot_if_needed(sd), checkpoint_id=str(tmp), process_group=self._save_group)
            # An AsyncSaveResponse comes back only for an async_stager, which is not passed here.
            assert isinstance(future, Future), type(future)
            self._pending = (future, tmp, step)
        else:
            with single_process_dcp():
                dcp.save(sd, checkpoint_id=str(tmp))
            self._publish(tmp, step)

    def _trainer_state(self, state: TrainState) -> dict[str, Any]:
        model_cfg = getattr(state.model, "cfg", None)
        return {
            "step": state.step,
            "consumed_samples": state.consumed_samples,
            "scheduler": state.scheduler.state_dict(),
            "loader": state.loader.state_dict(),
            "loss_scaler": state.loss_scaler.state_dict() if state.loss_scaler is not None else None,
            "init_from": state.init_from,
            "world_size": world_size(),
            "saved_at_unix": time.time(),
            "torch_version": torch.__version__,
            # The architecture travels with the weights (nanoGPT's model_args): export and
            # evaluation need no run.yaml, and a changed run.yaml cannot mislabel old weights.
            "model_config": model_cfg.model_dump() if isinstance(model_cfg, ModelConfig) else None,
        }

    def _write_rng(self, folder: Path) -> None:
        py = random.getstate()
        np_state = np.random.get_state(legacy=True)
        assert isinstance(np_state, tuple)  # the legacy form of the default MT19937 state
        rng = {
            "python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], *np_state[2:]],
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        target = folder / f"rng_rank{rank()}.pt"
        tmp = target.with_suffix(".pt.tmp")
        with open(tmp, "wb") as fh:
            torch.save(rng, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    def _poll_pending(self) -> None:
        """Publish a finished async save (non-blocking)."""
        if self._pending is not None and self._pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Block until the async save in flight (if any) has finished, then publish it."""
        if self._pending is None:
            return
        future, tmp, step = self._pending
        self._pending = None
        future.result()
        self._publish(tmp, step)

    def close(self) -> None:
        """Wait for an async save; call on every rank before the process exits."""
        self.wait()
        barrier()

    def _publish(self, tmp: Path, step: int) -> None:
        """Rank 0: rename the finished temp dir into place, move ``latest``, drop old checkpoints.

        For a synchronous save ``dcp.save`` returned on every rank, so all shards are written; for an
        async one, rank 0's future completes only after DCP's finish step, which gathers every
        rank's write results before writing ``.metadata``.
        """
        if rank() != 0:
            return
        final = self.root / step_dir_name(step)
        old = self.root / f"{TMP_PREFIX}old_{final.name}"
        if final.exists():  # a step re-run after a crash is saved again; move the old copy aside first
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(self.root)  # the rename is on disk before the pointer can name it
        atomic_write_text(self.root / LATEST, final.name + "\n", make_parents=False)
        _fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)
        log.info("saved checkpoint %s", final)
        self._prune(keep=final)

    def _prune(self, keep: Path) -> None:
        """Delete all but the newest ``keep_last`` complete checkpoints; never the one ``latest`` names."""
        complete = list_checkpoints(self.root)
        for info in complete[: max(0, len(complete) - self.cfg.keep_last)]:
            if info.path != keep:
                shutil.rmtree(info.path, ignore_errors=True)

    def _remove_stale_temp_dirs(self) -> None:
        for p in incomplete_saves(self.root):
            log.warning("removing incomplete checkpoint %s (a save was interrupted)", p)
            shutil.rmtree(p, ignore_errors=True)
