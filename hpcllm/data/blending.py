"""Weighted blending of several stores with a closed-form position: sample g -> (source, k-th of it).

The global sample stream is cut into blocks of ``BLOCK`` samples. Every block holds the same
number of samples of each source (the weights rounded by largest remainder, at least one each), in
the same evenly spread order. So "which source serves global sample g, and how many samples of that
source came before it" is two table lookups, whatever g is: resuming a blend at sample 10^9 costs
what resuming at 0 does, and the proportions are exact over every block, not just on average.
Randomness comes from each source's own shuffled order (``hpcllm.data.sampler``), not from here.
"""

from __future__ import annotations

import numpy as np

BLOCK = 4096  # weight resolution 1/4096; the prefix table is BLOCK x n_sources int64


class BlendSchedule:
    def __init__(self, weights: list[float], block: int = BLOCK) -> None:
        if not weights or any(w <= 0 for w in weights):
            raise ValueError(f"blend weights must be positive, got {weights}")
        if len(weights) > block:
            raise ValueError(f"at most {block} sources can be blended, got {len(weights)}")
        self.block = block
        w = np.asarray(weights, dtype=np.float64)
        self.counts = _largest_remainder(w / w.sum(), block)
        # Spread each source evenly: its j-th sample sits at relative position (j + 0.5) / count.
        src = np.repeat(np.arange(len(weights)), self.counts)
        pos = np.concatenate([(np.arange(c) + 0.5) / c for c in self.counts])
        self.pattern = src[np.lexsort((src, pos))]
        onehot = np.zeros((block + 1, len(weights)), dtype=np.int64)
        onehot[np.arange(1, block + 1), self.pattern] = 1
        self.prefix = np.cumsum(onehot, axis=0)  # prefix[o, s]: samples of s in pattern[:o]

    @property
    def fractions(self) -> np.ndarray:
        """The realised share of each source (the weights after rounding to 1/block)."""
        return self.counts / self.block

    def locate(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For global sample ids ``g``: the source of each and its index within that source."""
        g = np.asarray(g, dtype=np.int64)
        blk, off = np.divmod(g, self.block)
        src = self.pattern[off]
        return src, blk * self.counts[src] + self.prefix[off, src]

    def taken_before(self, g: int) -> np.ndarray:
        """How many samples of each source the first ``g`` global samples hold."""
        blk, off = divmod(int(g), self.block)
        return blk * self.counts + self.prefix[off]


def _largest_remainder(fractions: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``fractions``, each at least 1."""
    exact = fractions * total
    counts = np.maximum(np.floor(exact).astype(np.int64), 1)
    while counts.sum() > total:  # the minimum of 1 overshot: take from the largest
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for i in range(total - counts.sum()):
        counts[order[i % len(order)]] += 1
    return counts
