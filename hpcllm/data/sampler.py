"""The deterministic sampler: global sample id -> (source, window) -> tokens. Numpy only.

The one rule (docs/data.md): training consumes a single global stream of samples 0, 1, 2, ...
Micro-step i of a run with data-parallel size D and micro-batch B takes the next B·D samples of
the stream, and rank r takes its r-th slice of B. The only state is the count of samples consumed,
so a checkpoint taken with D ranks resumes with any other D' and no sample is skipped or repeated.

Sample k of a source lives in its epoch ``k // n_windows``, at position ``k % n_windows`` of that
epoch's order: a ``Permutation`` seeded by (seed, epoch, source index), or the identity when
shuffling is off. Window w is tokens ``[w·T, w·T + T + 1)`` of the concatenated documents (EOS
between them), so inputs and labels are the window shifted by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hpcllm.data.blending import BlendSchedule
from hpcllm.data.holdout import Holdout, Side, StoreView
from hpcllm.data.permutation import Permutation
from hpcllm.data.store import TokenStore
from hpcllm.data.tokenizer import fingerprint_of
from hpcllm.errors import ConfigError


@dataclass
class Batch:
    tokens: np.ndarray  # (n, T + 1) int64
    loss_mask: np.ndarray | None  # (n, T) float32 loss weights of the labels, None when no source has any


class Sampler:
    """Maps global sample ids to token windows of one store or a weighted blend of stores."""

    def __init__(
        self,
        paths: list[str],
        weights: list[float],
        *,
        tokenizer: str,
        seq_len: int,
        seed: int,
        shuffle: bool,
        holdout: Holdout | None = None,
        side: Side = "train",
    ) -> None:
        """``holdout``: read only ``side`` of each store's document split (``hpcllm.data.holdout``)."""
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.paths, self.weights = list(paths), list(weights)
        self.tokenizer, self.seq_len, self.seed, self.shuffle = tokenizer, seq_len, seed, shuffle
        self.holdout, self.side = holdout, side
        self._open()

    def _open(self) -> None:
        fp = fingerprint_of(self.tokenizer)
        opened = [TokenStore.open(p, tokenizer_fingerprint=fp) for p in self.paths]
        self.stores: list[TokenStore | StoreView] = list(opened)
        if self.holdout is not None:
            self.stores = [self.holdout.view(s, self.side) for s in opened]
        self.n_windows = [s.n_windows(self.seq_len) for s in self.stores]
        for path, store, n in zip(self.paths, self.stores, self.n_windows, strict=True):
            if n == 0:
                part = "" if self.holdout is None else f" (its {self.side} documents)"
                raise ConfigError(
                    f"{path}: {store.n_tokens} tokens{part} cannot fill one sample of seq_len + 1 = "
                    f"{self.seq_len + 1} tokens"
                )
        self.blend = BlendSchedule(self.weights) if len(self.stores) > 1 else None
        self.has_loss_mask = any(s.loss_mask is not None for s in self.stores)
        self._perm = lru_cache(maxsize=8)(self._make_perm)

    # Memmaps must not be pickled into DataLoader workers (that would copy the data): reopen there.
    def __getstate__(self) -> dict[str, Any]:
        return {
            k: self.__dict__[k]
            for k in ("paths", "weights", "tokenizer", "seq_len", "seed", "shuffle", "holdout", "side")
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    @property
    def vocab_size(self) -> int:
        return max(s.header.vocab_size for s in self.stores)

    def _make_perm(self, source: int, epoch: int) -> Permutation:
        return Permutation(self.n_windows[source], (self.seed % 2**64, epoch, source))

    def locate(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global sample ids -> (source, epoch within that source, window index)."""
        g = np.asarray(g, dtype=np.int64)
        if self.blend is None:
            src, k = np.zeros_like(g), g
        else:
            src, k = self.blend.locate(g)
        n = np.asarray(self.n_windows, dtype=np.int64)[src]
        epoch, pos = np.divmod(k, n)
        window = pos.copy()
        if self.shuffle:
            for s, e in {(int(a), int(b)) for a, b in zip(src, epoch, strict=True)}:
                sel = (src == s) & (epoch == e)
                window[sel] = self._perm(s, e)(pos[sel])
        return src, epoch, window

    def epoch_at(self, consumed: int) -> list[int]:
        """Each source's epoch at the next sample; for logs and checkpoint metadata."""
        if self.blend is None:
            return [consumed // self.n_windows[0]]
        taken = self.blend.taken_before(consumed)
        return [int(t) // n for t, n in zip(taken, self.n_windows, strict=True)]

    def batch(self, g: np.ndarray) -> Batch:
        src, _, window = self.locate(g)
        tokens = np.empty((len(src), self.seq_len + 1), dtype=np.int64)
        # float32 whatever the stores hold (0/1 uint8, float16 weights): the loss is computed in it.
        mask = np.ones((len(src), self.seq_len), dtype=np.float32) if self.has_loss_mask else None
        for s in np.unique(src):
            sel = src == s
            tok, m = self.stores[s].windows(window[sel], self.seq_len)
            tokens[sel] = tok
            if mask is not None and m is not None:
                mask[sel] = m
        return Batch(tokens, mask)

    def identity(self) -> dict[str, Any]:
        """What a saved position is only meaningful for: resuming elsewhere would train on other data."""
        identity = {
            "seq_len": self.seq_len,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "sources": [
                {
                    "path": str(Path(p)),
                    "weight": w,
                    "n_tokens": s.n_tokens,
                    "tokenizer_fingerprint": s.header.tokenizer_fingerprint,
                }
                for p, w, s in zip(self.paths, self.weights, self.stores, strict=True)
            ],
        }
        if self.holdout is not None:  # absent otherwise: checkpoints from before splits still resume
            identity["holdout"] = {"fraction": self.holdout.fraction, "seed": self.holdout.seed, "side": self.side}
        return identity


def micro_batch_ids(consumed: int, micro_batch_size: int, dp_rank: int) -> np.ndarray:
    """Global ids of rank ``dp_rank``'s slice of the micro-step that starts at sample ``consumed``."""
    start = consumed + dp_rank * micro_batch_size
    return np.arange(start, start + micro_batch_size, dtype=np.int64)
