"""Two real gloo ranks read disjoint slices whose union is the one-rank stream, and resume on one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from hpcllm.config.training import DataConfig
from hpcllm.data.demo import write_demo
from hpcllm.engine.data import TrainLoader, build_train_loader

SEQ, MBS, STEPS = 32, 2, 3


def _rank(rank: int, world: int, store: str, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loader = build_train_loader(
            DataConfig(path=store, num_workers=1),
            seq_len=SEQ,
            micro_batch_size=MBS,
            dp_rank=dist.get_rank(),
            dp_size=dist.get_world_size(),
            seed=11,
            device=torch.device("cpu"),
        )
        mine = torch.stack([next(loader)["input_ids"] for _ in range(STEPS)])  # (STEPS, MBS, SEQ)
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        if rank == 0:
            torch.save({"batches": torch.stack(gathered), "state": loader.state_dict()}, out)
        loader.close()
    finally:
        dist.destroy_process_group()


def _one_rank_loader(store: Path) -> TrainLoader:
    """The stream of one rank that takes both ranks' micro-batches: what the 2-rank run must split."""
    return build_train_loader(
        DataConfig(path=str(store), num_workers=0),
        seq_len=SEQ,
        micro_batch_size=2 * MBS,
        dp_rank=0,
        dp_size=1,
        seed=11,
        device=torch.device("cpu"),
    )


@pytest.mark.integration
def test_two_gloo_ranks_split_the_stream_and_resume_on_one(tmp_path: Path) -> None:
    store = tmp_path / "demo"
    write_demo(store, with_debian_docs=False)
    out = tmp_path / "out.pt"
    tmp.spawn(_rank, args=(2, str(store), str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    result = torch.load(out)
    batches = result["batches"]  # (rank, step, MBS, SEQ)
    single = _one_rank_loader(store)
    for step in range(STEPS):
        expected = next(single)["input_ids"]
        assert torch.equal(torch.cat([batches[0, step], batches[1, step]]), expected)
    rows = {tuple(r.tolist()) for r in batches.reshape(-1, SEQ)}
    assert len(rows) == 2 * STEPS * MBS  # disjoint: no window twice
    # the 2-rank checkpoint state resumes a 1-rank run right after the last sample it consumed
    resumed = _one_rank_loader(store)
    resumed.load_state_dict(result["state"])
    assert result["state"]["consumed_samples"] == 2 * STEPS * MBS
    assert torch.equal(next(resumed)["input_ids"], next(single)["input_ids"])
