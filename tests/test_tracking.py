"""Tracking: TensorBoard event files and the offline W&B run, read back and compared with metrics.jsonl."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from engine_support import make_store, write_run

from hpcllm.engine.entry import run
from hpcllm.rundir import RunDir

HOLDOUT = {"fraction": 0.25}
TB = {"tensorboard": True}  # the test helper's runs turn it off


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


def lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's event files, as TensorBoard itself reads them (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(RunDir(run_dir).tensorboard), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_mirrors_the_metrics(tmp_path: Path, store: Path) -> None:
    d = tmp_path / "r"
    cfg = write_run(
        d,
        store,
        train={"steps": 4},
        data={"path": str(store), "num_workers": 0, "holdout": HOLDOUT},
        eval={"every_steps": 2, "samples": 4},
        metrics={"cpu_peak_flops": 1e11},
        tracking=TB,
    )
    assert run(cfg) == 0
    tb = tensorboard_scalars(d)
    train = [r for r in lines(d) if "loss" in r]
    evals = [r for r in lines(d) if "eval_loss" in r]
    for key, tag in [
        ("loss", "train/loss"),
        ("lr", "train/lr"),
        ("grad_norm", "train/grad_norm"),
        ("tokens_per_s", "perf/tokens_per_s"),
        ("mfu", "perf/mfu"),
        ("mem_peak_gib", "perf/mem_peak_gib"),
        ("step_time_s", "perf/step_time_s"),
    ]:
        assert [s for s, _ in tb[tag]] == [1, 2, 3, 4], tag
        assert [v for _, v in tb[tag]] == pytest.approx([r[key] for r in train], rel=1e-6), tag  # float32
    assert tb["eval/loss"] == [(e["step"], pytest.approx(e["eval_loss"], rel=1e-6)) for e in evals]
    assert [s for s, _ in tb["eval/ppl"]] == [2, 4]


def test_tensorboard_shows_rerun_steps_once(tmp_path: Path, store: Path) -> None:
    """A crash after step 3 with a checkpoint at 2: the resumed attempt purges the lost step 3."""
    d = tmp_path / "r"
    cfg = write_run(d, store, train={"steps": 3}, checkpoint={"every_steps": 2, "at_end": False}, tracking=TB)
    assert run(cfg) == 0
    write_run(d, store, train={"steps": 5}, checkpoint={"every_steps": 2, "at_end": False}, tracking=TB)
    assert run(cfg) == 0
    assert [s for s, _ in tensorboard_scalars(d)["train/loss"]] == [1, 2, 3, 4, 5]
    # no MFU without a peak: the tag is absent rather than zero
    assert "perf/mfu" not in tensorboard_scalars(d)


def test_tensorboard_is_on_by_default_and_can_be_turned_off(tmp_path: Path, store: Path) -> None:
    from hpcllm.config.training import TrainingConfig

    assert TrainingConfig.model_validate({"data": {"path": "x"}}).tracking.tensorboard is True
    d = tmp_path / "r"
    assert run(write_run(d, store, train={"steps": 1}, tracking={"tensorboard": False})) == 0
    assert not RunDir(d).tensorboard.exists()


# --- Weights & Biases (offline) ---------------------------------------------------------------


def wandb_history(run_file: Path) -> list[dict[str, Any]]:
    """The ``history`` records of a W&B transaction log (``run-<id>.wandb``), decoded.

    The file is a 7-byte header (``:W&B``, magic, version) then LevelDB-log records in 32 KiB
    blocks: crc32 (4 bytes), length (2, little-endian), type (1: full, 2: first, 3: middle,
    4: last), payload; each whole payload is one ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, payload, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if kind == 0:  # zero padding at the end of a block
            pos += block - pos % block
            continue
        payload += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            payload = b""
            if record.WhichOneof("record_type") == "history":
                out.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return out


@pytest.mark.integration
def test_wandb_offline_run_holds_the_metrics(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb  # noqa: F401  (declared in the test extra: missing is a failure, not a skip)

    monkeypatch.setenv("WANDB_SILENT", "true")
    d = tmp_path / "r"
    cfg = write_run(
        d,
        store,
        train={"steps": 3},
        data={"path": str(store), "num_workers": 0, "holdout": HOLDOUT},
        eval={"samples": 4},
        tracking={"tensorboard": False, "wandb": {"project": "hpcllm-test"}},
    )
    assert run(cfg) == 0
    files = sorted((RunDir(d).path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1  # offline: nothing left the machine, everything is in the run directory
    history = wandb_history(files[0])
    train = [r for r in lines(d) if "loss" in r]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert losses == pytest.approx([r["loss"] for r in train])
    assert [h["_step"] for h in history if "train/loss" in h] == [1, 2, 3]
    final_eval = [h["eval/loss"] for h in history if "eval/loss" in h]
    assert final_eval == pytest.approx([json.loads(RunDir(d).summary.read_text())["eval_loss"]])
