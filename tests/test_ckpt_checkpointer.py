"""Checkpointer in one process (world size 1, no process group): cadence, atomicity, fallback, RNG.

Multi-rank behaviour (resharding, exact resume, signals) is in test_ckpt_resume.py.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import CheckpointConfig
from hpcllm.engine.checkpoint import (
    LATEST,
    CheckpointCorrupt,
    Checkpointer,
    list_checkpoints,
    read_latest_pointer,
    verify_checkpoint,
)
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.state import TrainState
from hpcllm.errors import HpcllmError
from hpcllm.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


class CountingLoader:
    """Stands in for the data loader: its whole state is a global consumed-sample count."""

    def __init__(self) -> None:
        self.consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"consumed_samples": self.consumed}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.consumed = sd["consumed_samples"]


def make_state(seed: int = 0) -> TrainState:
    cfg = ModelConfig.from_name("tiny", seq_len=16)
    model = GPT(cfg)
    init_weights(model, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return TrainState(model, opt, sched, CountingLoader())


def train_step(state: TrainState) -> float:
    idx = torch.randint(0, state.model.cfg.vocab_size, (2, 16))
    loss = torch.nn.functional.cross_entropy(state.model(idx).flatten(0, 1), idx.roll(-1, 1).flatten())
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad()
    state.step += 1
    state.consumed_samples += 2
    state.loader.consumed += 2
    return loss.item()


def run_steps(state: TrainState, ckpt: Checkpointer, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        losses.append(train_step(state))
        ckpt.maybe_save(state)
    return losses


def assert_same_state(a: TrainState, b: TrainState) -> None:
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for k in sa["state"]:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa["state"][k][field], sb["state"][k][field]), (k, field)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    assert (a.step, a.consumed_samples, a.loader.consumed) == (b.step, b.consumed_samples, b.loader.consumed)


def test_roundtrip_restores_everything_and_training_continues_identically(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    torch.manual_seed(0)
    a = make_state()
    ckpt = Checkpointer(run, CheckpointConfig(every_steps=3))
    run_steps(a, ckpt, 3)
    ckpt.close()
    rng_at_save = torch.get_rng_state()

    b = make_state(seed=99)  # different init (and RNG use): everything must come from the checkpoint
    assert Checkpointer(run, CheckpointConfig()).load_latest(b)
    assert_same_state(a, b)
    assert torch.equal(torch.get_rng_state(), rng_at_save)
    losses_b = [train_step(b) for _ in range(3)]
    torch.set_rng_state(rng_at_save)
    losses_a = [train_step(a) for _ in range(3)]
    assert losses_a == losses_b  # bitwise: same weights, moments, LR, batches


def test_rng_states_are_restored(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    state = make_state()
    ckpt = Checkpointer(run, CheckpointConfig())
    state.step = 1
    ckpt.maybe_save(state, force=True)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    assert Checkpointer(run, CheckpointConfig()).load_latest(make_state())
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_no_checkpoint_returns_false(tmp_path: Path) -> None:
    state = make_state()
    assert not Checkpointer(RunDir(tmp_path), CheckpointConfig()).load_latest(state)
    assert state.step == 0


def test_every_steps_and_keep_last(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    state = make_state()
    ckpt = Checkpointer(run, CheckpointConfig(every_steps=2, keep_last=2))
    run_steps(state, ckpt, 7)
    assert [c.step for c in list_checkpoints(run.checkpoints)] == [4, 6]
    assert read_latest_pointer(run.checkpoints) == run.checkpoints / "step_6"
    ckpt.maybe_save(state, force=True)
    ckpt.maybe_save(state, force=True)  # same step twice: saved once
    assert [c.step for c in list_checkpoints(run.checkpoints)] == [6, 7]
    ts = list_checkpoints(run.checkpoints)[-1].trainer_state
    assert ts["step"] == 7 and ts["consumed_samples"] == 14 and ts["world_size"] == 1
    assert ModelConfig.model_validate(ts["model_config"]) == state.model.cfg


def test_every_minutes_uses_training_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("hpcllm.engine.checkpoint.time.monotonic", lambda: clock[0])
    run = RunDir(tmp_path)
    state = make_state()
    ckpt = Checkpointer(run, CheckpointConfig(every_minutes=2))
    for minutes in (0.5, 1.0, 1.5, 2.5, 3.0, 4.6):  # due at 2.5 (2 min after start) and 4.6
        clock[0] = 1000.0 + 60 * minutes
        state.step += 1
        ckpt.maybe_save(state)
    assert [c.step for c in list_checkpoints(run.checkpoints)] == [4, 6]


def _two_checkpoints(tmp_path: Path) -> tuple[RunDir, TrainState]:
    run = RunDir(tmp_path)
    state = make_state()
    ckpt = Checkpointer(run, CheckpointConfig(every_steps=2, keep_last=3))
    run_steps(state, ckpt, 4)
    return run, state


def _shard(path: Path) -> Path:
    return next(path.glob("*.distcp"))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: os.truncate(_shard(p), _shard(p).stat().st_size // 2), id="truncated-shard"),
        pytest.param(lambda p: (p / ".metadata").unlink(), id="metadata-deleted"),
        pytest.param(lambda p: _shard(p).unlink(), id="shard-deleted"),
        pytest.param(lambda p: (p / ".metadata").write_bytes(b"garbage"), id="metadata-garbage"),
        pytest.param(lambda p: (p / "trainer_state.json").write_text('{"step": 4'), id="trainer-state-torn"),
    ],
)
def test_corrupt_latest_falls_back_to_previous(tmp_path: Path, damage, caplog: pytest.LogCaptureFixture) -> None:
    run = RunDir(tmp_path)
    trained = make_state()
    ckpt = Checkpointer(run, CheckpointConfig(every_steps=2, keep_last=3))
    run_steps(trained, ckpt, 2)
    at_step_2 = copy.deepcopy(trained)  # what step_2 holds, kept apart from further training
    run_steps(trained, ckpt, 2)
    latest = run.checkpoints / "step_4"
    damage(latest)
    with pytest.raises(CheckpointCorrupt):
        verify_checkpoint(latest)
    state = make_state(seed=3)
    with caplog.at_level(logging.WARNING, logger="hpcllm.engine.checkpoint"):
        assert Checkpointer(run, CheckpointConfig()).load_latest(state)
    assert any(str(latest) in r.getMessage() for r in caplog.records), caplog.text
    # Everything is step 2's: weights, Adam moments, schedule, data position; none of step 4's.
    assert_same_state(state, at_step_2)
    assert not torch.equal(state.model.head.weight, trained.model.head.weight)


def test_checkpoint_of_other_data_is_an_error_not_skipped(tmp_path: Path) -> None:
    """Every older checkpoint has the same data setup: skipping to them would only hide the problem."""
    run, _ = _two_checkpoints(tmp_path)
    state = make_state()

    def refuse(sd: dict[str, int]) -> None:
        raise HpcllmError("the checkpoint's data position belongs to another data setup")

    state.loader.load_state_dict = refuse
    with pytest.raises(HpcllmError, match="another data setup"):
        Checkpointer(run, CheckpointConfig()).load_latest(state)


def test_pointer_to_missing_folder_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run, _ = _two_checkpoints(tmp_path)
    (run.checkpoints / LATEST).write_text("step_99\n")
    state = make_state()
    with caplog.at_level(logging.WARNING, logger="hpcllm.engine.checkpoint"):
        assert Checkpointer(run, CheckpointConfig()).load_latest(state)
    assert state.step == 4
    assert "step_99" in caplog.text


def test_async_save_snapshots_state_at_call_time(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    state = make_state()
    ckpt = Checkpointer(run, CheckpointConfig(async_save=True))
    run_steps(state, ckpt, 1)
    saved = {k: v.clone() for k, v in state.model.state_dict().items()}
    ckpt.maybe_save(state, force=True)
    train_step(state)  # training moves on while the save runs
    ckpt.close()
    restored = make_state(seed=8)
    assert Checkpointer(run, CheckpointConfig()).load_latest(restored)
    assert restored.step == 1
    for k, v in restored.model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_snapshot_copies_cpu_tensors_when_torch_has_no_copying_stager(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.checkpoint import staging

    from hpcllm.engine.checkpoint import _snapshot_if_needed

    monkeypatch.delattr(staging, "DefaultStager", raising=False)
    t = torch.ones(3)
    snap = _snapshot_if_needed({"model": {"w": t}, "optim": {"state": [t], "lr": 0.1}})
    t.add_(1)
    assert torch.equal(snap["model"]["w"], torch.ones(3)) and torch.equal(snap["optim"]["state"][0], torch.ones(3))
    assert snap["optim"]["lr"] == 0.1


# A child process saves one checkpoint, then dies by SIGKILL at a chosen point of the second save.
_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_ckpt_checkpointer import make_state, run_steps
    from hpcllm.config.training import CheckpointConfig
    from hpcllm.engine import checkpoint as ck
    from hpcllm.rundir import RunDir
    from pathlib import Path
    import torch.distributed.checkpoint as dcp

    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)

    state = make_state()
    c = ck.Checkpointer(RunDir(Path({run!r})), CheckpointConfig(every_steps=2))
    run_steps(state, c, 2)
    if {where!r} == "before-metadata":
        dcp.FileSystemWriter.finish = die      # shards written, .metadata not yet
    else:
        ck.atomic_write_text = die             # folder renamed, pointer not yet moved
    run_steps(state, c, 2)
    """
)


@pytest.mark.parametrize("where", ["before-metadata", "before-pointer"])
def test_kill_during_save_keeps_pointer_on_a_complete_checkpoint(tmp_path: Path, where: str) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()  # the engine's run folder exists; a checkpointer never creates it
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), run=str(run.path), where=where)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert read_latest_pointer(run.checkpoints) == run.checkpoints / "step_2"
    verify_checkpoint(run.checkpoints / "step_2")
    state = make_state(seed=4)
    Checkpointer(run, CheckpointConfig()).load_latest(state)
    # The pointer is the commit point: resume follows it even if step_4 was already renamed.
    assert state.step == 2
    assert not list(run.checkpoints.glob(".tmp_*")), "the interrupted save was not cleaned up"


def test_checkpoint_of_another_architecture_is_an_error_and_leaves_state_fresh(tmp_path: Path) -> None:
    """A changed model in run.yaml must not resume silently from step 0 with a moved data position."""
    run, _ = _two_checkpoints(tmp_path)
    cfg = ModelConfig.from_name("tiny", seq_len=16, n_layers=3)
    model = GPT(cfg)
    init_weights(model, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    other = TrainState(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), CountingLoader())
    with pytest.raises(HpcllmError, match=r"cannot be loaded into this run's model/optimizer \(.*blocks\.2"):
        Checkpointer(run, CheckpointConfig()).load_latest(other)
    assert other.step == 0 and other.loader.consumed == 0


def test_optimizer_settings_come_from_the_config_not_the_checkpoint(tmp_path: Path) -> None:
    run, _ = _two_checkpoints(tmp_path)
    state = make_state(seed=5)
    for group in state.optimizer.param_groups:
        group.update(weight_decay=0.0, betas=(0.8, 0.99), eps=1e-6)
    assert Checkpointer(run, CheckpointConfig()).load_latest(state)
    assert state.step == 4
    assert all(
        (g["weight_decay"], g["betas"], g["eps"]) == (0.0, (0.8, 0.99), 1e-6) for g in state.optimizer.param_groups
    )
    assert state.optimizer.state  # the moments themselves were restored


def test_damaged_rng_file_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run, _ = _two_checkpoints(tmp_path)
    rng = run.checkpoints / "step_4" / "rng_rank0.pt"
    os.truncate(rng, 100)
    state = make_state(seed=3)
    with caplog.at_level(logging.WARNING, logger="hpcllm.engine.checkpoint"):
        assert Checkpointer(run, CheckpointConfig()).load_latest(state)
    assert state.step == 4 and "rng_rank0.pt: unreadable" in caplog.text


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    run, _ = _two_checkpoints(tmp_path)
    for step in (2, 4):
        (run.checkpoints / f"step_{step}" / ".metadata").unlink()
    with pytest.raises(HpcllmError, match=r"none of the 2 checkpoints is usable.*--no-resume"):
        Checkpointer(run, CheckpointConfig()).load_latest(make_state())
