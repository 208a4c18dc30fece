"""Permutation, blending and the global sample stream: determinism, DP sharding, resume."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from hpcllm.data.blending import BlendSchedule
from hpcllm.data.permutation import Permutation
from hpcllm.data.sampler import Sampler, micro_batch_ids

SEQ = 64


def _sampler(paths: list[Path], weights: list[float] | None = None, seed: int = 7, shuffle: bool = True) -> Sampler:
    return Sampler(
        [str(p) for p in paths],
        weights or [1.0] * len(paths),
        tokenizer="byte",
        seq_len=SEQ,
        seed=seed,
        shuffle=shuffle,
    )


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 1000, 4097])
def test_permutation_is_a_bijection(n: int) -> None:
    out = Permutation(n, (1, 0))(np.arange(n))
    assert sorted(out.tolist()) == list(range(n))


def test_permutation_depends_on_seed_and_shuffles() -> None:
    a, b = Permutation(1000, (1, 0))(np.arange(1000)), Permutation(1000, (1, 1))(np.arange(1000))
    again = Permutation(1000, (1, 0))(np.arange(1000))
    assert np.array_equal(a, again)
    assert not np.array_equal(a, b)
    assert np.mean(a == np.arange(1000)) < 0.05  # not close to the identity
    # adjacent positions land far apart (a shuffle, not a rotation)
    assert np.median(np.abs(np.diff(a))) > 100


def test_permutation_lookup_is_constant_memory_at_huge_n() -> None:
    n = 10**12
    perm = Permutation(n, (3, 9))
    idx = np.array([0, 1, n // 2, n - 1])
    out = perm(idx)
    assert ((out >= 0) & (out < n)).all() and len(set(out.tolist())) == 4


@pytest.mark.parametrize("weights", [[1, 1], [3, 1], [0.7, 0.2, 0.1], [1, 1e-6]])
def test_blend_proportions_exact_per_block(weights: list[float]) -> None:
    b = BlendSchedule(weights)
    src, k = b.locate(np.arange(3 * b.block))
    counts = np.bincount(src, minlength=len(weights))
    assert np.array_equal(counts, 3 * b.counts)
    assert (b.counts >= 1).all() and b.counts.sum() == b.block
    assert np.allclose(b.fractions, np.asarray(weights) / sum(weights), atol=2 / b.block)
    for s in range(len(weights)):  # each source's samples are numbered 0, 1, 2, ... in order
        assert np.array_equal(k[src == s], np.arange(counts[s]))


def test_blend_locate_far_position_matches_sequential() -> None:
    b = BlendSchedule([0.5, 0.3, 0.2])
    g = np.arange(10**9, 10**9 + 5000)
    src, k = b.locate(g)
    taken = b.taken_before(10**9)
    for s in range(3):
        assert np.array_equal(k[src == s], taken[s] + np.arange((src == s).sum()))


def test_ranks_are_disjoint_and_cover_the_epoch(stores: dict[str, Path]) -> None:
    s = _sampler([stores["plain"]])
    n = s.n_windows[0]
    mbs, dp = 4, 3
    steps = n // (mbs * dp)
    seen: list[np.ndarray] = [[] for _ in range(dp)]  # type: ignore[misc]
    for step in range(steps):
        for r in range(dp):
            seen[r].append(s.locate(micro_batch_ids(step * mbs * dp, mbs, r))[2])
    per_rank = [set(np.concatenate(x).tolist()) for x in seen]
    for a in range(dp):
        for b in range(a + 1, dp):
            assert not per_rank[a] & per_rank[b]
    union = set().union(*per_rank)
    assert len(union) == steps * mbs * dp
    # the rest of the epoch: the full stream of one epoch is every window exactly once
    assert sorted(s.locate(np.arange(n))[2].tolist()) == list(range(n))


def test_epochs_roll_over_with_a_new_order(stores: dict[str, Path]) -> None:
    s = _sampler([stores["plain"]])
    n = s.n_windows[0]
    _src, epoch, w = s.locate(np.arange(2 * n))
    assert list(np.unique(epoch[:n])) == [0] and list(np.unique(epoch[n:])) == [1]
    assert sorted(w[n:].tolist()) == list(range(n))
    assert not np.array_equal(w[:n], w[n:])
    assert s.epoch_at(n - 1) == [0] and s.epoch_at(n) == [1]


def test_no_shuffle_reads_in_order(stores: dict[str, Path]) -> None:
    s = _sampler([stores["plain"]], shuffle=False)
    b = s.batch(np.arange(3))
    assert np.array_equal(b.tokens.ravel()[: SEQ + 1], s.stores[0].tokens[: SEQ + 1])
    assert b.tokens[0, -1] == b.tokens[1, 0]


def test_same_seed_same_batches_other_seed_differs(stores: dict[str, Path]) -> None:
    g = np.arange(100, 108)
    a = _sampler([stores["plain"]], seed=1).batch(g).tokens
    assert np.array_equal(a, _sampler([stores["plain"]], seed=1).batch(g).tokens)
    assert not np.array_equal(a, _sampler([stores["plain"]], seed=2).batch(g).tokens)


def test_blend_of_stores_draws_by_weight_and_masks(stores: dict[str, Path]) -> None:
    s = _sampler([stores["plain"], stores["inst"]], [3.0, 1.0])
    assert s.has_loss_mask
    src, _, _ = s.locate(np.arange(4096))
    assert np.bincount(src).tolist() == [3072, 1024]
    b = s.batch(np.arange(64))
    plain = src[:64] == 0
    assert b.loss_mask is not None
    assert (b.loss_mask[plain] == 1).all()  # unmasked sources train on every token
    assert (b.loss_mask[~plain] == 0).any()  # prompts of the instruction store are masked


# What locating a far sample may allocate: a batch and a few index arrays. An index over every
# window (2·10^6 windows: 16 MB) or a walk up to the position would show here (or time out), where a
# wall-clock bound would flake under load.
CONSTANT_WORK_BYTES = 8 * 2**20


@pytest.mark.timeout(120)  # a walk up to sample 10^12 never ends: it fails here
def test_resume_at_any_position_is_constant_time(stores: dict[str, Path]) -> None:
    s = _sampler([stores["plain"], stores["inst"]], [1.0, 1.0])
    near = s.batch(np.arange(8))  # warm caches
    with _peak_allocation() as peak:
        far = s.batch(micro_batch_ids(10**12, 8, 3))
    assert far.tokens.shape == near.tokens.shape == (8, SEQ + 1)
    assert peak[0] < CONSTANT_WORK_BYTES, f"locating sample 10^12 allocated {peak[0] / 2**20:.1f} MiB"


@contextmanager
def _peak_allocation() -> Iterator[list[int]]:
    """The peak of Python and numpy allocations inside (tracemalloc traces numpy's buffers too)."""
    peak = [0]
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def test_sampler_pickles_without_its_data(stores: dict[str, Path]) -> None:
    import pickle

    s = _sampler([stores["plain"]])
    blob = pickle.dumps(s)
    assert len(blob) < 2000  # paths and settings, not the memmapped tokens
    t = pickle.loads(blob)
    g = np.arange(10)
    assert np.array_equal(s.batch(g).tokens, t.batch(g).tokens)


@pytest.mark.timeout(120)
def test_open_and_first_batch_are_constant_time_on_a_huge_store(tmp_path: Path) -> None:
    """4·10^9 tokens (a sparse 8 GB file): nothing may read or index the whole store."""
    import json

    from hpcllm.data.store import StoreHeader

    n = 4 * 10**9
    root = tmp_path / "huge"
    root.mkdir()
    with open(root / "tokens.bin", "wb") as fh:
        fh.truncate(2 * n)  # sparse: no disk blocks, reads as token 0
    np.save(root / "doc_offsets.npy", np.array([0, n], dtype=np.int64))
    header = StoreHeader(
        dtype="uint16",
        vocab_size=257,
        eos_id=256,
        tokenizer="byte",
        tokenizer_fingerprint="byte-v1",
        n_tokens=n,
        n_docs=1,
        has_loss_mask=False,
    )
    (root / "header.json").write_text(json.dumps(header.to_json()))
    with _peak_allocation() as peak:
        s = Sampler([str(root)], [1.0], tokenizer="byte", seq_len=2048, seed=0, shuffle=True)
        batch = s.batch(micro_batch_ids(10**11, 8, 1))  # epoch 51 of ~2·10^6 windows
    assert batch.tokens.shape == (8, 2049) and not batch.tokens.any()
    assert peak[0] < CONSTANT_WORK_BYTES, f"open + far batch on 4e9 tokens allocated {peak[0] / 2**20:.1f} MiB"


def test_blend_epochs_advance_per_source(stores: dict[str, Path]) -> None:
    s = _sampler([stores["plain"], stores["inst"]], [1.0, 1.0])
    assert s.epoch_at(0) == [0, 0]
    n0, n1 = s.n_windows
    g = 2 * max(n0, n1) + 3 * 4096  # each source has had about g/2 samples
    src, epoch, _ = s.locate(np.array([g]))
    assert s.epoch_at(g)[int(src[0])] == int(epoch[0])
    assert min(s.epoch_at(g)) >= 1
