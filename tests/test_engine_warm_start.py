"""Warm start (``init_from``): weights only, from any run/step/rank count, checked architecture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from engine_support import make_store, run_engine, write_run

from hpcllm.config.loader import load_model
from hpcllm.config.training import TrainingConfig
from hpcllm.engine.checkpoint_find import resolve_checkpoint
from hpcllm.engine.data import build_train_loader
from hpcllm.engine.entry import run
from hpcllm.engine.export import load_model_state
from hpcllm.engine.model import GPT
from hpcllm.engine.optim import lr_at
from hpcllm.errors import ConfigError
from hpcllm.rundir import RunDir


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {"plain": make_store(root / "plain"), "masked": make_store(root / "masked", with_mask=True)}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Path]) -> Path:
    """A pretraining run of 6 steps with checkpoints at steps 3 and 6."""
    d = tmp_path_factory.mktemp("source") / "pretrain"
    cfg = write_run(
        d,
        data["plain"],
        train={"steps": 6},
        optim={"lr": 3e-3},
        checkpoint={"every_steps": 3, "at_end": True, "keep_last": 3},
    )
    assert run(cfg) == 0
    return d


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]


def first_step_loss(run_dir: Path, weights: dict[str, torch.Tensor]) -> float:
    """The loss of a run's first step computed outside the train loop: ``weights`` on the first
    global batch of the run's own data (the sampler's stream from sample 0), weighted mean CE."""
    cfg = load_model(TrainingConfig, RunDir(run_dir).config)
    model = GPT(cfg.model)
    model.load_state_dict(weights)
    gbs = json.loads(RunDir(run_dir).summary.read_text())["global_batch_size"]  # all ranks' samples
    loader = build_train_loader(
        cfg.data,
        seq_len=cfg.model.seq_len,
        micro_batch_size=gbs,
        dp_rank=0,
        dp_size=1,
        seed=cfg.seed,
        device=torch.device("cpu"),
    )
    batch = next(loader)
    with torch.no_grad():
        ce = F.cross_entropy(model(batch["input_ids"]).flatten(0, 1), batch["labels"].reshape(-1), reduction="none")
    w = batch["loss_mask"].reshape(-1) if batch["loss_mask"] is not None else torch.ones_like(ce)
    return float((ce * w).sum() / w.sum())


def test_warm_start_takes_weights_only(tmp_path: Path, data: dict[str, Path], source: Path) -> None:
    """Other data (a loss mask), fresh schedule, fresh optimizer, fresh data position."""
    d = tmp_path / "finetune"
    cfg = write_run(
        d,
        data["masked"],
        init_from=f"{source}@3",
        train={"steps": 3, "grad_clip": None},
        schedule={"name": "linear", "warmup_steps": 2, "min_lr_ratio": 0.0},
        optim={"lr": 1e-3, "weight_decay": 0.0, "eps": 1e-12},
        checkpoint={"every_steps": 1, "keep_last": 5},
    )
    assert run(cfg) == 0
    step3 = source / "checkpoints" / "step_3"
    rows = metrics(d)
    # Step 1 ran with the source's step-3 weights on the fine-tune data's first batch.
    assert rows[0]["loss"] == pytest.approx(first_step_loss(d, load_model_state(step3)), rel=1e-5)
    # The schedule starts over (warmup), it does not continue the source's.
    schedule = load_model(TrainingConfig, RunDir(d).config).schedule
    assert [r["lr"] for r in rows] == pytest.approx(
        [lr_at(s, base_lr=1e-3, total_steps=3, cfg=schedule) for s in range(3)]
    )
    # Fresh AdamW: its first update is lr·g/(|g| + eps) = ±lr for every weight with a gradient
    # (m = g, v = g² after bias correction; eps matters only for |g| ~ 1e-10). Moments carried over
    # from the source would mix in its gradients and give other step sizes.
    before, after = load_model_state(step3), load_model_state(d / "checkpoints" / "step_1")
    delta = torch.cat([(after[k] - before[k]).abs().flatten() for k in before])
    ratio = delta[delta > 0] / rows[0]["lr"]
    assert ratio.numel() > 0.5 * delta.numel()
    assert ((ratio - 1).abs() < 1e-3).float().mean() > 0.999 and ((ratio - 1).abs() < 1e-2).all()
    trainer = json.loads((d / "checkpoints" / "step_1" / "trainer_state.json").read_text())
    assert trainer["step"] == 1 and trainer["loader"]["consumed_samples"] == 2  # from sample 0 on
    assert trainer["init_from"] == str(step3)
    assert json.loads(RunDir(d).summary.read_text())["init_from"] == str(step3)

    # A restart resumes the fine-tune's own checkpoint (its weights, its step), not the source.
    write_run(
        d,
        data["masked"],
        init_from=f"{source}@3",
        train={"steps": 4, "grad_clip": None},
        schedule={"name": "linear", "warmup_steps": 2, "min_lr_ratio": 0.0},
        optim={"lr": 1e-3, "weight_decay": 0.0, "eps": 1e-12},
        checkpoint={"every_steps": 1, "keep_last": 5},
    )
    assert run(cfg) == 0
    assert [r["step"] for r in metrics(d)] == [1, 2, 3, 4]
    assert json.loads(RunDir(d).summary.read_text())["init_from"] == str(step3)


def test_architecture_mismatch_is_one_clear_error(tmp_path: Path, data: dict[str, Path], source: Path) -> None:
    cfg = write_run(
        tmp_path / "deeper",
        data["plain"],
        init_from=str(source),
        model={"preset": "tiny", "seq_len": 64, "n_layers": 3, "tie_embeddings": False},
    )
    assert run(cfg) == 2
    error = json.loads((tmp_path / "deeper" / "summary.json").read_text())["error"]
    assert f"init_from: {source}/checkpoints/step_6 holds another architecture: " in error
    assert "n_layers 3 (checkpoint: 2), tie_embeddings False (checkpoint: True)" in error
    # A checkpoint that does not record its architecture is checked tensor by tensor.
    bare = tmp_path / "bare"
    shutil.copytree(source / "checkpoints" / "step_6", bare)
    state = json.loads((bare / "trainer_state.json").read_text())
    state["model_config"] = None
    (bare / "trainer_state.json").write_text(json.dumps(state))
    proc = run_engine(
        write_run(
            tmp_path / "wider",
            data["plain"],
            init_from=str(bare),
            model={"preset": "tiny", "seq_len": 64, "d_model": 128},
        )
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"init_from: {bare} does not fit this run's model: tok_emb.weight [512, 128] (checkpoint: [512, 64])"
        in proc.stderr
    )
    # A longer context is allowed with RoPE (no position table): the weights carry over.
    longer = write_run(
        tmp_path / "longer",
        data["plain"],
        init_from=str(source),
        train={"steps": 1},
        model={"preset": "tiny", "seq_len": 96},
    )
    assert run(longer) == 0


def test_checkpoint_references_resolve_like_the_docs_say(tmp_path: Path, source: Path) -> None:
    ckpts = source / "checkpoints"
    assert resolve_checkpoint(str(source), "k") == ckpts / "step_6"  # run dir: latest
    assert resolve_checkpoint(f"{source}@3", "k") == ckpts / "step_3"  # run dir @ step
    assert resolve_checkpoint(str(ckpts), "k") == ckpts / "step_6"  # checkpoints/
    assert resolve_checkpoint(str(ckpts / "step_3"), "k") == ckpts / "step_3"  # a step folder
    assert resolve_checkpoint(str(source.parent), "k") == ckpts / "step_6"  # folder with one run
    with pytest.raises(
        ConfigError, match=r"k: '.*@4': no checkpoint at step 4 in .*; complete checkpoints at steps: 3, 6"
    ):
        resolve_checkpoint(f"{source}@4", "k")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "run.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="is a run directory without checkpoints yet"):
        resolve_checkpoint(str(tmp_path / "a"), "k")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "run.yaml").write_text("{}")
    with pytest.raises(ConfigError, match=r"k: '.*' is not a run directory but holds 2 runs \(a, b\); name one"):
        resolve_checkpoint(str(tmp_path), "k")
    with pytest.raises(ConfigError, match="is not a run directory, checkpoints directory or checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "nowhere"), "k")


@pytest.mark.integration
def test_warm_start_from_two_ranks_on_one_and_from_one_on_two(
    tmp_path: Path, data: dict[str, Path], source: Path
) -> None:
    """DCP re-slices the weights for any rank count, as for a resume."""
    two = tmp_path / "two-rank-source"
    proc = run_engine(
        write_run(two, data["plain"], train={"steps": 2, "micro_batch_size": 1}, checkpoint={"at_end": True}), nproc=2
    )
    assert proc.returncode == 0, proc.stderr
    one = tmp_path / "on-one"
    assert run(write_run(one, data["masked"], init_from=str(two), train={"steps": 1})) == 0
    assert metrics(one)[0]["loss"] == pytest.approx(
        first_step_loss(one, load_model_state(two / "checkpoints" / "step_2")), rel=1e-5
    )
    on_two = tmp_path / "on-two"
    proc = run_engine(
        write_run(on_two, data["masked"], init_from=str(source), train={"steps": 1, "micro_batch_size": 1}), nproc=2
    )
    assert proc.returncode == 0, proc.stderr
    assert metrics(on_two)[0]["loss"] == pytest.approx(
        first_step_loss(on_two, load_model_state(source / "checkpoints" / "step_6")), rel=1e-5
    )
