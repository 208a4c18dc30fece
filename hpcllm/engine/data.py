"""The engine's training data loader: ``hpcllm.data.sampler`` behind a torch ``DataLoader``.

The sampler decides *which* windows a rank reads (a pure function of the global sample count);
this module only turns them into tensors, in worker processes, pinned for the GPU. Its state is the
global count of samples consumed by *returned* batches (not prefetched ones), so a checkpoint's
loader state is independent of data-parallel size, worker count and prefetch depth.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import Sampler as TorchSampler

from hpcllm.config.evaluation import EvalConfig
from hpcllm.config.training import DataConfig
from hpcllm.data.holdout import Holdout
from hpcllm.data.sampler import Sampler, micro_batch_ids
from hpcllm.errors import ConfigError, HpcllmError

STATE_VERSION = 1


class _MicroBatches(Dataset):
    """Item ``i`` is this rank's micro-batch of the ``i``-th micro-step after sample ``start``."""

    def __init__(self, sampler: Sampler, micro_batch_size: int, dp_rank: int, dp_size: int, start: int) -> None:
        self.sampler = sampler
        self.mbs, self.dp_rank, self.dp_size, self.start = micro_batch_size, dp_rank, dp_size, start

    def __len__(self) -> int:  # the stream is endless (epochs roll over); only the sampler indexes
        raise TypeError("the micro-batch stream has no length")

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        consumed = self.start + i * self.mbs * self.dp_size
        batch = self.sampler.batch(micro_batch_ids(consumed, self.mbs, self.dp_rank))
        tokens = torch.from_numpy(batch.tokens)
        out = {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}
        if batch.loss_mask is not None:
            out["loss_mask"] = torch.from_numpy(batch.loss_mask).to(torch.float32)
        return out


class _Count(TorchSampler[int]):
    def __iter__(self) -> Iterator[int]:
        return itertools.count()


def _worker_init(_: int) -> None:
    # Workers only slice memmaps: one thread each, so N ranks x W workers never oversubscribe cores.
    torch.set_num_threads(1)


class TrainLoader:
    """An endless iterator of micro-batches for one data-parallel rank, with resumable state.

    ``next(loader)`` -> ``{"input_ids": (B,T) int64, "labels": (B,T) int64, "loss_mask": (B,T)
    float32 or None}`` on ``device``.
    """

    def __init__(
        self,
        sampler: Sampler,
        *,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        num_workers: int,
        device: torch.device,
    ) -> None:
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} not in [0, {dp_size})")
        self.sampler = sampler
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size
        self.num_workers = num_workers
        self.device = torch.device(device)
        self.consumed_samples = 0  # global, across all ranks
        self._it: Iterator[dict[str, torch.Tensor]] | None = None

    @property
    def vocab_size(self) -> int:
        """Ids in the data are < vocab_size; the model's embedding must be at least this large."""
        return self.sampler.vocab_size

    @property
    def samples_per_step(self) -> int:
        return self.micro_batch_size * self.dp_size

    def _iterator(self) -> Iterator[dict[str, torch.Tensor]]:
        dataset = _MicroBatches(self.sampler, self.micro_batch_size, self.dp_rank, self.dp_size, self.consumed_samples)
        loader = DataLoader(
            dataset,
            batch_size=None,  # items are whole micro-batches already
            sampler=_Count(),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init if self.num_workers else None,
            prefetch_factor=2 if self.num_workers else None,
        )
        return iter(loader)

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor | None]:
        if self._it is None:
            self._it = self._iterator()
        batch = next(self._it)
        self.consumed_samples += self.samples_per_step
        on_gpu = self.device.type == "cuda"
        out: dict[str, torch.Tensor | None] = {k: v.to(self.device, non_blocking=on_gpu) for k, v in batch.items()}
        out.setdefault("loss_mask", None)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "consumed_samples": self.consumed_samples,
            "epochs": self.sampler.epoch_at(self.consumed_samples),
            "sampler": self.sampler.identity(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Resume at ``sd['consumed_samples']``; any DP size, as long as the data is the same."""
        if sd.get("version") != STATE_VERSION:
            raise HpcllmError(f"data loader state version {sd.get('version')!r}, expected {STATE_VERSION}")
        saved, ours = sd.get("sampler"), self.sampler.identity()
        if _without_paths(saved) != _without_paths(ours):
            raise HpcllmError(
                "the checkpoint's data position belongs to another data setup, so resuming would "
                f"skip or repeat samples.\n  checkpoint: {saved}\n  this run:   {ours}"
            )
        self.consumed_samples = int(sd["consumed_samples"])
        self._it = None  # drop prefetched batches; the next one starts at the restored position

    def close(self) -> None:
        self._it = None


def _without_paths(identity: Any) -> Any:
    """Stores may move between jobs (scratch purges, another mount point): compare contents only."""
    if not isinstance(identity, dict):
        return identity
    sources = [{k: v for k, v in s.items() if k != "path"} for s in identity.get("sources", [])]
    return {**identity, "sources": sources}


def build_train_loader(
    data_cfg: DataConfig,
    *,
    seq_len: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    seed: int,
    device: torch.device,
) -> TrainLoader:
    """The loader the train loop calls ``next()`` on; raises ConfigError on unusable stores."""
    sampler = Sampler(
        [s.path for s in data_cfg.sources],
        [s.weight for s in data_cfg.sources],
        tokenizer=data_cfg.tokenizer,
        seq_len=seq_len,
        seed=seed,
        shuffle=data_cfg.shuffle,
        holdout=_holdout(data_cfg),
    )
    return TrainLoader(
        sampler,
        micro_batch_size=micro_batch_size,
        dp_rank=dp_rank,
        dp_size=dp_size,
        num_workers=data_cfg.num_workers,
        device=device,
    )


def _holdout(data_cfg: DataConfig) -> Holdout | None:
    h = data_cfg.holdout
    return None if h is None else Holdout(h.fraction, h.seed)


def eval_sampler(data_cfg: DataConfig, eval_cfg: EvalConfig, seq_len: int) -> Sampler:
    """The eval stream: the eval stores, else the held-out documents of the training stores.

    Shuffled with the split's seed (0 for eval stores), never the run's: every run draws the same
    eval sequences, spread over the whole held-out set rather than its first documents.
    """
    if eval_cfg.sources is not None:
        return Sampler(
            [s.path for s in eval_cfg.sources],
            [s.weight for s in eval_cfg.sources],
            tokenizer=data_cfg.tokenizer,
            seq_len=seq_len,
            seed=0,
            shuffle=True,
        )
    holdout = _holdout(data_cfg)
    assert holdout is not None, "TrainingConfig validation guarantees eval data"
    return Sampler(
        [s.path for s in data_cfg.sources],
        [s.weight for s in data_cfg.sources],
        tokenizer=data_cfg.tokenizer,
        seq_len=seq_len,
        seed=holdout.seed,
        shuffle=True,
        holdout=holdout,
        side="heldout",
    )


def build_eval_batches(
    data_cfg: DataConfig, eval_cfg: EvalConfig, *, seq_len: int, micro_batch_size: int, dp_rank: int, dp_size: int
) -> list[dict[str, torch.Tensor]]:
    """This rank's share of the eval set: the first ``eval.samples`` sequences of the eval stream.

    Every rank gets the same number of micro-batches (each forward is a collective under FSDP):
    the last round is padded with a valid window whose loss mask is 0, so the eval loss is the mean
    over exactly ``samples`` sequences for any number of ranks and micro-batch size. Built once,
    on the CPU; ``loss_mask`` is always present.
    """
    sampler = eval_sampler(data_cfg, eval_cfg, seq_len)
    samples = eval_cfg.samples
    _check_eval_capacity(sampler, samples)
    per_round = micro_batch_size * dp_size
    batches = []
    for start in range(0, samples, per_round):
        ids = micro_batch_ids(start, micro_batch_size, dp_rank)
        real = ids < samples
        batch = sampler.batch(np.where(real, ids, 0))
        tokens = torch.from_numpy(batch.tokens)
        weights = np.ones((len(ids), seq_len), np.float32) if batch.loss_mask is None else batch.loss_mask
        mask = torch.from_numpy(np.asarray(weights, dtype=np.float32) * real[:, None])
        batches.append(
            {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(), "loss_mask": mask}
        )
    return batches


def _check_eval_capacity(sampler: Sampler, samples: int) -> None:
    """Each eval sequence at most once: ``samples`` must fit in one epoch of every eval source."""
    taken = [samples] if sampler.blend is None else sampler.blend.taken_before(samples).tolist()
    for path, need, have in zip(sampler.paths, taken, sampler.n_windows, strict=True):
        if need > have:
            where = "the held-out documents of " if sampler.holdout is not None else ""
            raise ConfigError(
                f"eval.samples: {samples} sequences take {need} from {where}{path}, which hold only "
                f"{have} of seq_len + 1 tokens; lower eval.samples"
                + (" or raise data.holdout.fraction" if sampler.holdout is not None else "")
            )
