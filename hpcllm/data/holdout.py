"""A held-out split of a token store by whole documents: deterministic, O(1) per lookup.

Document ``i`` is held out when a seeded 64-bit hash of ``i`` falls below ``fraction``·2^64. The
split depends only on the store, the fraction and the split's own seed (not on the run's seed,
the number of ranks or anything else), so every run of a study, every trial of a search and every
resumed attempt evaluates on the same documents, and no held-out document is ever trained on.

Each side of the split is a ``StoreView``: the concatenation of its documents, seen through a table
of contiguous runs of documents ("segments"). It answers what the sampler asks of a store
(``n_tokens``, ``n_windows``, ``windows``), so windows are cut from the side's own token stream exactly
as from a whole store, and a window never mixes the two sides. Building the table reads the
document index once (O(documents), in chunks); each window costs a binary search over segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from hpcllm.data.permutation import splitmix64
from hpcllm.data.store import StoreHeader, TokenStore
from hpcllm.errors import ConfigError

Side = Literal["train", "heldout"]
_CHUNK = 1 << 22  # documents hashed per numpy pass: bounded memory on stores of 10^8+ documents


@dataclass(frozen=True)
class Holdout:
    """Which documents are held out: a fraction in [0, 1) and the split's seed."""

    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"holdout fraction must be in [0, 1), got {self.fraction}")

    def held_out(self, doc_ids: np.ndarray) -> np.ndarray:
        """Boolean mask: True for the documents (by index) that belong to the held-out side."""
        key = np.uint64(splitmix64(np.array([self.seed % 2**64], dtype=np.uint64))[0])
        hashed = splitmix64(np.asarray(doc_ids, dtype=np.uint64) ^ key)
        # Compare the top 53 bits as a float in [0, 1): exact for every fraction a user can write.
        return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53 < self.fraction

    def view(self, store: TokenStore, side: Side) -> StoreView:
        """The documents of ``store`` on ``side`` of this split, as one token stream."""
        held = np.empty(store.n_docs, dtype=bool)
        for start in range(0, store.n_docs, _CHUNK):
            stop = min(start + _CHUNK, store.n_docs)
            held[start:stop] = self.held_out(np.arange(start, stop))
        keep = held if side == "heldout" else ~held
        # Runs of consecutive kept documents: [first_doc, end_doc) pairs.
        edges = np.diff(np.concatenate([[False], keep, [False]]).astype(np.int8))
        first_docs = np.flatnonzero(edges == 1)
        end_docs = np.flatnonzero(edges == -1)
        offsets = store.doc_offsets
        starts = np.asarray(offsets[first_docs], dtype=np.int64)
        lengths = np.asarray(offsets[end_docs], dtype=np.int64) - starts
        view = StoreView(store, side, starts, lengths, n_docs=int(keep.sum()))
        if view.n_docs == 0:
            other = "training" if side == "train" else "held-out"
            raise ConfigError(
                f"{store.path}: data.holdout.fraction {self.fraction} leaves no {other} document "
                f"among its {store.n_docs}; choose a fraction that keeps some on both sides"
            )
        return view


class StoreView:
    """One side of a split: the listed token ranges of a store, concatenated, read like a store."""

    def __init__(self, store: TokenStore, side: Side, starts: np.ndarray, lengths: np.ndarray, n_docs: int) -> None:
        self.store, self.side, self.n_docs = store, side, n_docs
        self.path = store.path
        self._starts = starts  # where each segment begins in the store's token array
        self._virtual = np.cumsum(lengths) - lengths  # where it begins in this view's stream
        self.n_tokens = int(lengths.sum())

    @property
    def header(self) -> StoreHeader:
        return self.store.header

    @property
    def loss_mask(self) -> np.ndarray | None:
        return self.store.loss_mask

    def n_windows(self, seq_len: int) -> int:
        return max(0, (self.n_tokens - 1) // seq_len)

    def positions(self, virtual: np.ndarray) -> np.ndarray:
        """Positions in this view's stream -> positions in the store's token array."""
        seg = np.searchsorted(self._virtual, virtual, side="right") - 1
        return virtual - self._virtual[seg] + self._starts[seg]

    def windows(self, idx: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Like ``TokenStore.windows``, in this view's stream (a window may join two segments).

        A window inside one segment maps with one offset (the common case on the training side,
        whose segments span many documents); only windows that cross a segment end are mapped
        token by token.
        """
        first = np.asarray(idx, dtype=np.int64) * seq_len
        seg = np.searchsorted(self._virtual, first, side="right") - 1
        seg_end = np.append(self._virtual[1:], self.n_tokens)[seg]
        real = (first - self._virtual[seg] + self._starts[seg])[:, None] + np.arange(seq_len + 1)
        crossing = first + seq_len >= seg_end
        if crossing.any():
            real[crossing] = self.positions(first[crossing, None] + np.arange(seq_len + 1))
        tokens = self.store.tokens[real].astype(np.int64)
        mask = None if self.store.loss_mask is None else self.store.loss_mask[real[:, 1:]]
        return tokens, mask
