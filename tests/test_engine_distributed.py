"""Cross-rank reductions of the engine's metrics, on 2 real gloo processes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpcllm.engine.distributed import all_reduce_max, all_reduce_sum


def _worker(rank: int, store_path: str, results: mp.Queue[tuple[int, float, float]]) -> None:
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    try:
        peak = all_reduce_max(1.0 + 2.0 * rank, torch.device("cpu"))  # ranks hold 1.0 and 3.0
        total = all_reduce_sum(torch.tensor([1.0 + rank])).item()
        results.put((rank, peak, total))
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_peak_memory_is_the_max_over_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, str(tmp_path / "store"), results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    got = sorted(results.get(timeout=5) for _ in range(2))
    assert got == [(0, 3.0, 3.0), (1, 3.0, 3.0)]


def test_single_process_reductions_are_identity():
    assert all_reduce_max(2.5, torch.device("cpu")) == 2.5
