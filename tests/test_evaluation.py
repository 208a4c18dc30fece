"""Evaluation: the held-out split, the eval set, the eval pass, and the engine's eval lines.

The contract under test (docs/run-contract.md): metrics.jsonl eval lines carry ``step``,
``eval_loss`` and ``eval_ppl``; summary.json carries the final ``eval_loss`` and ``eval_ppl``; eval
never changes the training losses, with or without it and across a resume.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_support import make_store, run_engine, write_run

from hpcllm.config.evaluation import EvalConfig
from hpcllm.config.loader import validate
from hpcllm.config.training import DataConfig, TrainingConfig
from hpcllm.data.holdout import Holdout
from hpcllm.data.sampler import Sampler
from hpcllm.data.store import StoreWriter, TokenStore
from hpcllm.engine.data import build_eval_batches, build_train_loader
from hpcllm.engine.entry import run
from hpcllm.errors import ConfigError, HpcllmError
from hpcllm.rundir import EXIT_PREEMPTED, RunDir

HOLDOUT = {"fraction": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


@pytest.fixture(scope="module")
def many_docs(tmp_path_factory: pytest.TempPathFactory) -> TokenStore:
    """4000 short documents whose every token is the document's index (EOS = 4095): any window
    says which documents it was cut from. Byte-tokenizer fingerprint, so the engine's loader opens it."""
    from hpcllm.data.tokenizer import ByteTokenizer

    path = tmp_path_factory.mktemp("data") / "many"
    rng = np.random.default_rng(0)
    docs = [np.append(np.full(int(rng.integers(1, 9)), i), EOS).astype(np.int64) for i in range(4000)]
    with StoreWriter(
        path, vocab_size=4096, eos_id=EOS, tokenizer="byte", tokenizer_fingerprint=ByteTokenizer().fingerprint
    ) as w:
        w.add(docs)
        w.commit()
    return TokenStore.open(path)


EOS = 4095


def doc_ids(tokens: np.ndarray) -> set[int]:
    return set(np.unique(tokens).tolist()) - {EOS}


def stream(view: Any) -> np.ndarray:
    """The side's token stream, read from the store through the view."""
    return np.asarray(view.store.tokens[view.positions(np.arange(view.n_tokens))])


def lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in lines(run_dir) if "loss" in r]


def eval_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in lines(run_dir) if "eval_loss" in r]


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads(RunDir(run_dir).summary.read_text())


# --- the split --------------------------------------------------------------------------------


def heldout_loss_of_first_five(model: torch.nn.Module, store: Path) -> float:
    """The reference eval loss: the mean cross-entropy of ``model`` on the first five held-out
    sequences of 64 tokens, drawn by the sampler directly (not through the evaluator)."""
    sampler = Sampler(
        [str(store)], [1.0], tokenizer="byte", seq_len=64, seed=0, shuffle=True, holdout=Holdout(**HOLDOUT),
        side="heldout",
    )  # fmt: skip
    tokens = torch.from_numpy(sampler.batch(np.arange(5)).tokens)
    with torch.no_grad():
        logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).item()


def test_split_partitions_documents_and_keeps_each_side_in_order(many_docs: TokenStore) -> None:
    split = Holdout(0.1, seed=3)
    train, held = split.view(many_docs, "train"), split.view(many_docs, "heldout")
    held_ids, train_ids = doc_ids(stream(held)), doc_ids(stream(train))
    assert held_ids | train_ids == set(range(4000)) and not held_ids & train_ids
    # Each side's stream is its whole documents concatenated in store order.
    docs = [many_docs.document(i) for i in range(many_docs.n_docs)]
    assert np.array_equal(stream(held), np.concatenate([docs[i] for i in sorted(held_ids)]))
    assert np.array_equal(stream(train), np.concatenate([docs[i] for i in sorted(train_ids)]))
    # 10% of 4000 documents: a binomial count within 5 standard deviations (sd = 19).
    assert abs(len(held_ids) - 400) < 95 and held.n_docs == len(held_ids)


def test_split_is_deterministic_and_seeded_by_its_own_seed(many_docs: TokenStore) -> None:
    def held(fraction: float, seed: int = 0) -> set[int]:
        return doc_ids(stream(Holdout(fraction, seed).view(many_docs, "heldout")))

    assert held(0.1) == held(0.1)
    assert held(0.1, seed=1) != held(0.1)
    assert held(0.05) <= held(0.2)  # a threshold on a fixed hash: more held out = a superset


@pytest.mark.parametrize("side", ["train", "heldout"])
def test_view_windows_are_cut_from_the_side_stream(many_docs: TokenStore, side: str) -> None:
    """Every window, inside one run of documents or across the gap to the next (both paths)."""
    view = Holdout(0.3, seed=5).view(many_docs, side)  # type: ignore[arg-type]
    side_stream = stream(view)
    for seq_len in (4, 64):
        idx = np.arange(view.n_windows(seq_len))
        tokens, mask = view.windows(idx, seq_len)
        assert mask is None
        expected = np.stack([side_stream[w * seq_len : w * seq_len + seq_len + 1] for w in idx])
        assert np.array_equal(tokens, expected)


def test_training_never_reads_a_held_out_document(many_docs: TokenStore) -> None:
    data = DataConfig(sources=[{"path": str(many_docs.path)}], num_workers=0, holdout={"fraction": 0.1})
    loader = build_train_loader(
        data, seq_len=16, micro_batch_size=8, dp_rank=0, dp_size=1, seed=1, device=torch.device("cpu")
    )
    epoch = loader.sampler.n_windows[0] // 8
    batches = [next(loader) for _ in range(epoch)]
    seen = doc_ids(np.concatenate([b[k].numpy().ravel() for b in batches for k in ("input_ids", "labels")]))
    held = doc_ids(stream(Holdout(0.1).view(many_docs, "heldout")))
    assert not seen & held
    assert len(seen | held) > 3950  # an epoch reads every other document but for the last few windows


def test_a_checkpointed_position_refuses_another_split(store: Path) -> None:
    def loader(holdout: dict[str, Any] | None) -> Any:
        data = DataConfig(sources=[{"path": str(store)}], num_workers=0, holdout=holdout)
        return build_train_loader(
            data, seq_len=64, micro_batch_size=2, dp_rank=0, dp_size=1, seed=1, device=torch.device("cpu")
        )

    saved = loader(HOLDOUT).state_dict()
    with pytest.raises(HpcllmError, match="belongs to another data setup"):
        loader(None).load_state_dict(saved)
    with pytest.raises(HpcllmError, match="belongs to another data setup"):
        loader({"fraction": 0.25, "seed": 1}).load_state_dict(saved)
    loader(HOLDOUT).load_state_dict(saved)


# --- the eval set -----------------------------------------------------------------------------


@pytest.mark.parametrize(("dp_size", "mbs"), [(1, 4), (2, 3), (3, 1)], ids=["1x4", "2x3", "3x1"])
def test_eval_set_is_the_same_sequences_for_any_ranks_and_batch(store: Path, dp_size: int, mbs: int) -> None:
    data = DataConfig(sources=[{"path": str(store)}], holdout=HOLDOUT)
    cfg = EvalConfig(samples=7)
    expected = (
        Sampler(
            [str(store)],
            [1.0],
            tokenizer="byte",
            seq_len=64,
            seed=0,
            shuffle=True,
            holdout=Holdout(**HOLDOUT),
            side="heldout",
        )
        .batch(np.arange(7))
        .tokens
    )
    got, rounds = [], set()
    for rank in range(dp_size):
        batches = build_eval_batches(data, cfg, seq_len=64, micro_batch_size=mbs, dp_rank=rank, dp_size=dp_size)
        rounds.add(len(batches))
        for b in batches:
            for ids, labels, mask in zip(b["input_ids"], b["labels"], b["loss_mask"], strict=True):
                assert mask.min() == mask.max()  # a whole sequence counts, or none of it (padding)
                if mask[0] == 1:
                    got.append(torch.cat([ids, labels[-1:]]).numpy())
    assert len(rounds) == 1  # every rank runs the same number of forwards (collectives under FSDP)
    assert sorted(map(bytes, got)) == sorted(bytes(r) for r in expected.astype(np.int64))


def test_eval_set_larger_than_the_held_out_data_is_a_config_error(store: Path) -> None:
    data = DataConfig(sources=[{"path": str(store)}], holdout={"fraction": 0.05})
    with pytest.raises(
        ConfigError,
        match=r"eval.samples: 5000 sequences take 5000 from the held-out documents of .*"
        r"lower eval.samples or raise data.holdout.fraction",
    ):
        build_eval_batches(data, EvalConfig(samples=5000), seq_len=64, micro_batch_size=2, dp_rank=0, dp_size=1)


def test_eval_needs_data_to_evaluate_on(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run.yaml: .*eval: needs data to evaluate on: set data.holdout"):
        validate(TrainingConfig, {"data": {"path": "x"}, "eval": {"every_steps": 5}}, "run.yaml")
    cfg = validate(TrainingConfig, {"data": {"path": "x"}, "eval": {"path": "heldout-store"}}, "run.yaml")
    assert cfg.eval is not None and cfg.eval.sources is not None and cfg.eval.sources[0].path == "heldout-store"


def test_evaluator_loss_is_the_mean_token_cross_entropy(store: Path) -> None:
    """Against an independent computation: F.cross_entropy's mean over the same sequences."""
    from hpcllm.config.model import ModelConfig
    from hpcllm.engine.evaluate import Evaluator
    from hpcllm.engine.model import GPT, init_weights

    torch.manual_seed(0)
    model = GPT(ModelConfig.from_name("tiny", seq_len=64))
    init_weights(model, 7)
    data = DataConfig(sources=[{"path": str(store)}], holdout=HOLDOUT)
    cfg = EvalConfig(samples=5)
    batches = build_eval_batches(data, cfg, seq_len=64, micro_batch_size=2, dp_rank=0, dp_size=1)
    result = Evaluator(cfg, batches, torch.device("cpu")).evaluate(model, step=3)
    expected = heldout_loss_of_first_five(model, store)
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
    assert (result.step, result.samples, result.tokens) == (3, 5, 5 * 64)
    assert model.training  # put back in training mode


# --- the engine -------------------------------------------------------------------------------


def _run(root: Path, name: str, store: Path, **overrides: Any) -> Path:
    d = root / name
    sections: dict[str, Any] = {
        "train": {"steps": 5, "micro_batch_size": 2},
        "data": {"path": str(store), "num_workers": 0, "holdout": HOLDOUT},
        "checkpoint": {"at_end": False},
        "tracking": {"tensorboard": False},
    }
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value}
    cfg = write_run(d, store, **sections)
    assert run(cfg) == 0, summary(d).get("error")
    return d


def test_eval_lines_and_summary_follow_the_contract(tmp_path: Path, store: Path) -> None:
    d = _run(tmp_path, "eval", store, eval={"every_steps": 2, "samples": 6}, train={"steps": 5, "log_every": 5})
    evals = eval_lines(d)
    # every 2 steps whatever train.log_every says, plus the end of training
    assert [e["step"] for e in evals] == [2, 4, 5]
    for e in evals:
        assert {
            "step",
            "eval_loss",
            "eval_ppl",
            "eval_samples",
            "eval_tokens",
            "eval_time_s",
            "restart",
            "rerun",
        } == set(e)
        assert e["eval_ppl"] == pytest.approx(math.exp(e["eval_loss"]))
        assert e["eval_samples"] == 6 and e["eval_tokens"] == 6 * 64
    s = summary(d)
    assert (s["eval_loss"], s["eval_ppl"], s["eval_step"]) == (evals[-1]["eval_loss"], evals[-1]["eval_ppl"], 5)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]  # the model learns


def test_eval_does_not_change_training(tmp_path: Path, store: Path) -> None:
    """Same training losses with and without eval, and with eval across a stop and resume."""
    plain = _run(tmp_path, "plain", store)
    with_eval = _run(tmp_path, "with-eval", store, eval={"every_steps": 1, "samples": 6})
    assert train_losses(with_eval) == train_losses(plain)

    d = tmp_path / "resumed"
    cfg = write_run(
        d,
        store,
        train={"steps": 5, "micro_batch_size": 2},
        data={"path": str(store), "num_workers": 0, "holdout": HOLDOUT},
        checkpoint={"at_end": False, "every_steps": 1},
        tracking={"tensorboard": False},
        eval={"every_steps": 1, "samples": 6},
    )
    RunDir(d).stop_file.touch()
    assert run(cfg) == EXIT_PREEMPTED  # stops after step 1 with a checkpoint
    RunDir(d).stop_file.unlink()
    assert run(cfg) == 0
    assert train_losses(d) == train_losses(plain)
    assert [(e["step"], e["eval_loss"]) for e in eval_lines(d)] == [
        (e["step"], e["eval_loss"]) for e in eval_lines(with_eval)
    ]


def test_a_run_resumed_at_its_end_still_reports_its_eval(tmp_path: Path, store: Path) -> None:
    d = tmp_path / "r"
    cfg = write_run(
        d,
        store,
        train={"steps": 2},
        data={"path": str(store), "num_workers": 0, "holdout": HOLDOUT},
        checkpoint={"at_end": True},
        tracking={"tensorboard": False},
        eval={"samples": 4},
    )
    assert run(cfg) == 0
    first = summary(d)["eval_loss"]
    assert run(cfg) == 0  # nothing left to train: resumes at step 2
    assert summary(d)["eval_loss"] == first
    assert [(e["step"], e["rerun"]) for e in eval_lines(d)] == [(2, False), (2, True)]


@pytest.mark.integration
def test_eval_on_two_fsdp_ranks_matches_the_saved_weights(tmp_path: Path, store: Path) -> None:
    """Distributed eval (FSDP2, padded last round) = an independent single-process computation.

    The same two-rank run (one torchrun start is the expensive part) also profiles: a trace per rank.
    """
    from hpcllm.config.model import ModelConfig
    from hpcllm.engine.export import load_model_state
    from hpcllm.engine.model import GPT

    d = tmp_path / "r"
    cfg = write_run(
        d,
        store,
        train={"steps": 2, "micro_batch_size": 1},
        data={"path": str(store), "num_workers": 0, "holdout": HOLDOUT},
        checkpoint={"at_end": True},
        tracking={"tensorboard": False},
        eval={"samples": 5},
        parallel={"precision": "FP_32", "sharding": "FULL_SHARD"},
        profile={"start_step": 2, "steps": 1},
    )
    proc = run_engine(cfg, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        events = json.loads(RunDir(d).profile_trace(rank, 2, 2).read_text())["traceEvents"]
        assert [e["name"] for e in events if e["name"].startswith("hpcllm.step")] == ["hpcllm.step 2"]
    model = GPT(ModelConfig.from_name("tiny", seq_len=64))
    model.load_state_dict(load_model_state(RunDir(d).checkpoints / "step_2"), strict=True)  # RoPE: buffers
    expected = heldout_loss_of_first_five(model, store)
    assert summary(d)["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_status_reads_the_last_training_line_not_the_eval_line(tmp_path: Path) -> None:
    from hpcllm.launch.progress import last_metrics, last_step

    rd = RunDir(tmp_path)
    rd.metrics.write_text('{"step": 4, "loss": 2.5}\n{"step": 4, "eval_loss": 2.7, "eval_ppl": 14.9}\n')
    assert last_metrics(rd) == {"step": 4, "loss": 2.5} and last_step(rd) == 4
