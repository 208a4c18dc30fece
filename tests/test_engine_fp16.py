"""FP_16 with dynamic loss scaling: the scale policy, skipped steps, and the scale across a resume.

Multi-rank behaviour (an overflow in one rank's gradient shard skips the step on every rank) is
checked by tests/engine_fsdp_probe.py under torchrun.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_support import make_store, write_run

from hpcllm.config.loader import load_model
from hpcllm.config.training import LossScaleConfig, ParallelConfig, TrainingConfig
from hpcllm.engine.entry import run
from hpcllm.engine.export import load_model_state
from hpcllm.engine.loss_scale import DynamicLossScaler, build_loss_scaler
from hpcllm.engine.model import GPT, init_weights
from hpcllm.errors import HpcllmError
from hpcllm.rundir import RunDir


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]


# --- the scale policy --------------------------------------------------------------------------


def test_scale_policy_matches_torch_grad_scaler() -> None:
    """Same scale after every step as torch.amp.GradScaler on the same finite/inf/NaN gradients."""
    pattern = [1.0, math.inf, 1.0, 1.0, 1.0, math.nan, 1.0, 1.0, 1.0, 1.0, 1.0, math.inf, 1.0]
    cfg = LossScaleConfig(init_scale=2.0**10, growth_interval=3)
    ours = DynamicLossScaler(cfg)
    param = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([param], lr=0.1)
    ref = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    ours_scales, ref_scales, ours_skips = [], [], []
    for g in pattern:
        ref.scale(param.sum())  # initialises the reference's scale tensor
        param.grad = torch.full_like(param, g * ref.get_scale())
        ref.step(opt)
        ref.update()
        ref_scales.append(ref.get_scale())
        ours_skips.append(ours.update(g))
        ours_scales.append(ours.scale)
    assert ours_scales == ref_scales
    assert ours_skips == [not math.isfinite(g) for g in pattern]


def test_unscale_divides_every_gradient_by_the_scale() -> None:
    scaler = DynamicLossScaler(LossScaleConfig(init_scale=1024.0))
    params = [
        torch.nn.Parameter(torch.zeros(3)),
        torch.nn.Parameter(torch.zeros(2)),
        torch.nn.Parameter(torch.zeros(1)),
    ]
    params[0].grad = torch.tensor([1024.0, -2048.0, 512.0])
    params[1].grad = torch.tensor([3072.0, 0.0])
    scaler.unscale_(params)  # the third has no gradient: left alone
    assert params[0].grad.tolist() == [1.0, -2.0, 0.5] and params[1].grad.tolist() == [3.0, 0.0]


def test_overflow_below_the_minimum_scale_fails_instead_of_skipping_forever() -> None:
    scaler = DynamicLossScaler(LossScaleConfig(init_scale=4.0, min_scale=2.0))
    assert scaler.update(math.inf) is True and scaler.scale == 2.0
    with pytest.raises(HpcllmError, match=r"still overflow at loss scale 2 .*min_scale is 2.*BF_16"):
        scaler.update(math.nan)


def test_scaler_exists_for_fp16_only_and_settings_need_fp16() -> None:
    assert build_loss_scaler(ParallelConfig(precision="BF_16")) is None
    assert build_loss_scaler(ParallelConfig(precision="FP_32")) is None
    assert build_loss_scaler(ParallelConfig(precision="FP_16")).scale == 2.0**16
    custom = ParallelConfig(precision="FP_16", loss_scale={"init_scale": 8.0})
    assert build_loss_scaler(custom).scale == 8.0
    with pytest.raises(ValueError, match="loss_scale is only used with precision: FP_16 \\(got precision BF_16\\)"):
        ParallelConfig(precision="BF_16", loss_scale={"init_scale": 8.0})
    with pytest.raises(ValueError, match=re.escape("init_scale 0.5 is below min_scale 1")):
        LossScaleConfig(init_scale=0.5)


# --- the engine --------------------------------------------------------------------------------


def fp16_run(run_dir: Path, store: Path, steps: int, log_every: int = 1, **loss_scale: float) -> Path:
    return write_run(
        run_dir,
        store,
        train={"steps": steps, "log_every": log_every},
        parallel={"precision": "FP_16", "loss_scale": loss_scale},
        checkpoint={"at_end": True},
    )


def test_overflowing_steps_are_skipped_logged_and_leave_the_weights_alone(tmp_path: Path, store: Path) -> None:
    # A scale of 2^40 overflows fp16 gradients (max 65504) for sure: every early step is skipped
    # and halves the scale, until gradients fit; then training proceeds.
    d = tmp_path / "r"
    assert run(fp16_run(d, store, steps=24, init_scale=2.0**40)) == 0
    rows = metrics(d)
    skipped = [r["skipped"] for r in rows]
    n = skipped.index(False)
    assert n >= 10 and not any(skipped[n:]), skipped  # 2^40 -> at most 2^30 before fp16 holds the grads
    assert [r["loss_scale"] for r in rows[: n + 1]] == [2.0**40 / 2**i for i in range(n + 1)]
    assert all(not math.isfinite(r["grad_norm"]) for r in rows[:n])
    assert all(math.isfinite(r["grad_norm"]) for r in rows[n:])
    summary = json.loads(RunDir(d).summary.read_text())
    assert summary["skipped_steps"] == n and summary["status"] == "completed"
    assert rows[-1]["loss"] < rows[0]["loss"]  # it did train after the skips

    # A run made only of skipped steps ends with exactly its initial weights and no optimizer state.
    # Skipped steps are logged even between log_every steps (here only step 2 would be).
    d2 = tmp_path / "all-skipped"
    assert run(fp16_run(d2, store, steps=3, log_every=2, init_scale=2.0**40)) == 0
    assert [(r["step"], r["skipped"]) for r in metrics(d2)] == [(1, True), (2, True), (3, True)]
    cfg = load_model(TrainingConfig, RunDir(d2).config)
    initial = GPT(cfg.model)
    init_weights(initial, cfg.seed)
    saved = load_model_state(RunDir(d2).checkpoints / "step_3")
    for name, tensor in initial.state_dict().items():
        assert torch.equal(saved[name], tensor), name
    trainer = json.loads((RunDir(d2).checkpoints / "step_3" / "trainer_state.json").read_text())
    assert trainer["loss_scaler"] == {"scale": 2.0**37, "good_steps": 0}


def test_resume_continues_with_the_saved_loss_scale(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dict(init_scale=2.0**30, growth_interval=3)
    ref = tmp_path / "ref"
    assert run(fp16_run(ref, store, steps=12, **settings)) == 0
    d = tmp_path / "split"
    assert run(fp16_run(d, store, steps=6, **settings)) == 0
    fp16_run(d, store, steps=12, **settings)
    monkeypatch.setenv("HPCLLM_RESTART_COUNT", "1")
    assert run(RunDir(d).config) == 0
    want, got = metrics(ref), metrics(d)
    assert [r["step"] for r in got] == list(range(1, 13))
    # The scale went down (skips) and up (growth) before step 6, so a scaler that restarted from
    # init_scale would skip again after the resume; a restored one repeats the reference exactly.
    assert len({r["loss_scale"] for r in want[:6]}) > 2
    assert [(r["loss_scale"], r["skipped"]) for r in got] == [(r["loss_scale"], r["skipped"]) for r in want]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-6)
