"""The engine's build_train_loader: the tensor contract, workers, and resume across DP sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpcllm.config.training import DataConfig
from hpcllm.engine.data import TrainLoader, build_train_loader
from hpcllm.errors import ConfigError, HpcllmError

SEQ = 32
CPU = torch.device("cpu")


def _cfg(*paths: Path, workers: int = 0, **kw: object) -> DataConfig:
    return DataConfig(sources=[{"path": str(p)} for p in paths], num_workers=workers, **kw)


def _loader(
    cfg: DataConfig, mbs: int = 2, rank: int = 0, dp: int = 1, seed: int = 5, device: torch.device = CPU
) -> TrainLoader:
    return build_train_loader(
        cfg, seq_len=SEQ, micro_batch_size=mbs, dp_rank=rank, dp_size=dp, seed=seed, device=device
    )


def _take(loader: TrainLoader, n: int) -> list[torch.Tensor]:
    return [next(loader)["input_ids"] for _ in range(n)]


def test_batch_contract(stores: dict[str, Path]) -> None:
    loader = _loader(_cfg(stores["plain"]), mbs=3)
    b = next(loader)
    assert set(b) == {"input_ids", "labels", "loss_mask"}
    assert b["input_ids"].shape == b["labels"].shape == (3, SEQ)
    assert b["input_ids"].dtype == b["labels"].dtype == torch.int64
    assert b["loss_mask"] is None
    assert torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1])  # labels = inputs shifted by one
    assert loader.vocab_size == 257 and int(b["labels"].max()) < 257


def test_loss_mask_from_instruction_store(stores: dict[str, Path]) -> None:
    b = next(_loader(_cfg(stores["inst"], shuffle=False), mbs=8))
    mask = b["loss_mask"]
    assert mask is not None and mask.dtype == torch.float32 and mask.shape == (8, SEQ)
    # the first document opens with its prompt ("Question: ..."): its labels are masked out
    prompt = "Question: what does the Python reference say about"
    assert bytes(b["input_ids"][0].tolist()).decode() == prompt[:SEQ]
    assert float(mask[0].sum()) == 0 and float(mask[-1].sum()) == SEQ


def test_fractional_loss_weights_reach_the_batch(stores: dict[str, Path], tmp_path: Path) -> None:
    from hpcllm.data.demo import write_demo

    write_demo(tmp_path / "qa", instruct=True, with_debian_docs=False, prompt_weight=0.25)
    weighted = next(_loader(_cfg(tmp_path / "qa", shuffle=False), mbs=8))["loss_mask"]
    masked = next(_loader(_cfg(stores["inst"], shuffle=False), mbs=8))["loss_mask"]
    assert weighted is not None and weighted.dtype == torch.float32
    # Same text and order: where the 0/1 store masks a prompt token, the weighted store has 0.25.
    assert torch.equal(weighted, torch.where(masked == 0, torch.tensor(0.25), masked))
    assert float(masked[0].sum()) == 0  # the first window is all prompt


def test_workers_give_the_same_stream(stores: dict[str, Path]) -> None:
    a = _take(_loader(_cfg(stores["plain"], workers=0)), 4)
    b = _take(_loader(_cfg(stores["plain"], workers=2)), 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_resume_gives_the_batches_of_an_uninterrupted_run(stores: dict[str, Path]) -> None:
    cfg = _cfg(stores["plain"], workers=1)
    straight = _take(_loader(cfg), 6)
    first = _loader(cfg)
    _take(first, 3)  # the worker has prefetched more than 3: the state must count returned batches only
    state = first.state_dict()
    resumed = _loader(cfg)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(straight[3:], _take(resumed, 3), strict=True))


@pytest.mark.parametrize("dp_before,dp_after", [(2, 1), (2, 4), (4, 3)])
def test_resume_on_another_dp_size_skips_and_repeats_nothing(
    stores: dict[str, Path], dp_before: int, dp_after: int
) -> None:
    cfg = _cfg(stores["plain"])
    mbs = 2
    total = 24  # samples in the reference stream
    reference = torch.cat(_take(_loader(cfg, mbs=total), 1))  # one rank, one big micro-batch
    before = [_loader(cfg, mbs, r, dp_before) for r in range(dp_before)]
    got: list[torch.Tensor] = []
    for _ in range(2):
        got += [next(ld)["input_ids"] for ld in before]
    state = before[0].state_dict()
    assert all(ld.state_dict() == state for ld in before)  # every rank saves the same state
    after = [_loader(cfg, mbs, r, dp_after) for r in range(dp_after)]
    for ld in after:
        ld.load_state_dict(state)
    while sum(len(t) for t in got) < total:
        got += [next(ld)["input_ids"] for ld in after]
    assert torch.equal(torch.cat(got)[:total], reference)


def test_state_is_rejected_for_other_data(stores: dict[str, Path]) -> None:
    state = _loader(_cfg(stores["plain"])).state_dict()
    other = _loader(_cfg(stores["inst"]))
    with pytest.raises(HpcllmError, match="another data setup"):
        other.load_state_dict(state)
    with pytest.raises(HpcllmError, match="another data setup"):
        build_train_loader(
            _cfg(stores["plain"]), seq_len=SEQ * 2, micro_batch_size=2, dp_rank=0, dp_size=1, seed=5, device=CPU
        ).load_state_dict(state)


def test_shuffle_option_is_honoured(stores: dict[str, Path]) -> None:
    ordered = next(_loader(_cfg(stores["plain"], shuffle=False), mbs=2))["input_ids"]
    labels = next(_loader(_cfg(stores["plain"], shuffle=False), mbs=2))["labels"]
    assert labels[0, -1] == ordered[1, 0]  # consecutive windows: sequential order
    shuffled = next(_loader(_cfg(stores["plain"]), mbs=2))["input_ids"]
    assert not torch.equal(ordered, shuffled)


def test_blend_weights_are_honoured(stores: dict[str, Path]) -> None:
    cfg = DataConfig(
        sources=[{"path": str(stores["plain"]), "weight": 3}, {"path": str(stores["inst"]), "weight": 1}], num_workers=0
    )
    b = next(_loader(cfg, mbs=64))
    assert b["loss_mask"] is not None
    fully_trained = (b["loss_mask"] == 1).all(dim=1).float().mean()
    assert 0.6 <= float(fully_trained) <= 1.0  # 3/4 of rows come from the unmasked store


def test_tokenizer_mismatch_is_a_clear_error(stores: dict[str, Path], tmp_path: Path) -> None:
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"model": {"type": "BPE", "vocab": {}}}')
    with pytest.raises(ConfigError, match=f"{stores['plain']}: written with tokenizer 'byte'"):
        _loader(_cfg(stores["plain"], tokenizer=str(tok)))


def test_store_too_small_for_seq_len(tmp_path: Path, stores: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="cannot fill one sample"):
        build_train_loader(
            _cfg(stores["plain"]), seq_len=10**7, micro_batch_size=1, dp_rank=0, dp_size=1, seed=0, device=CPU
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_the_cpu_stream(stores: dict[str, Path]) -> None:
    loader = _loader(_cfg(stores["inst"], workers=1), mbs=4, device=torch.device("cuda"))
    b = next(loader)
    assert all(t.is_cuda for t in b.values() if t is not None)
    cpu = next(_loader(_cfg(stores["inst"], workers=1), mbs=4))
    loader2 = _loader(_cfg(stores["inst"], workers=1), mbs=4, device=torch.device("cuda"))
    assert torch.equal(next(loader2)["input_ids"].cpu(), cpu["input_ids"])
