"""Checkpoints are data, never code: DCP's index is read by a restricted unpickler, and the
``latest`` pointer may name only a step folder of its own ``checkpoints/``."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from test_ckpt_export import trained_run
from typer.testing import CliRunner

from hpcllm.checkpoint_layout import LATEST, CheckpointCorrupt, read_latest_pointer
from hpcllm.cli.ckpt import ckpt_app
from hpcllm.config.model import ModelConfig
from hpcllm.engine.checkpoint_find import resolve_checkpoint, verify_checkpoint
from hpcllm.engine.dcp_metadata import MetadataRefused, read_metadata
from hpcllm.engine.export import load_model_state
from hpcllm.errors import ConfigError

runner = CliRunner()


class _Exploit:
    """Unpickling this runs ``exec``: it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    run, _ = trained_run(tmp_path_factory.mktemp("ckpt"), ModelConfig.from_name("tiny", seq_len=16), steps=2)
    return run


def test_real_metadata_reads_and_loads(run) -> None:  # type: ignore[no-untyped-def]
    latest = read_latest_pointer(run.checkpoints)
    assert latest is not None
    meta = read_metadata(latest)
    assert any(k.startswith("model.") for k in meta.state_dict_metadata)
    verify_checkpoint(latest)
    weights = load_model_state(latest)  # DCP's load through the safe reader
    assert weights and all(isinstance(t, torch.Tensor) for t in weights.values())


def _crafted_copy(run, tmp_path: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """A copy of the run whose latest checkpoint's index runs code; (run path, marker path)."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    marker = tmp_path / "marker"
    latest = read_latest_pointer(copy / "checkpoints")
    assert latest is not None
    (latest / ".metadata").write_bytes(pickle.dumps(_Exploit(marker)))
    return copy, marker


def test_crafted_metadata_is_refused_without_running(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    copy, marker = _crafted_copy(run, tmp_path)
    latest = read_latest_pointer(copy / "checkpoints")
    assert latest is not None
    with pytest.raises(MetadataRefused, match=r"builtins\.exec"):
        read_metadata(latest)
    with pytest.raises(CheckpointCorrupt):
        verify_checkpoint(latest)
    with pytest.raises(ConfigError, match="refused"):
        resolve_checkpoint(str(copy), "init_from")
    res = runner.invoke(ckpt_app, ["ls", str(copy), "--verify"])
    assert res.exit_code == 0 and "refused" in res.output, res.output
    res = runner.invoke(ckpt_app, ["export", str(copy), "-o", str(tmp_path / "out.pt")])
    assert res.exit_code == 2, res.output
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert not (tmp_path / "out.pt").exists()


def test_other_globals_refused(tmp_path: Path) -> None:
    import os

    step = tmp_path / "step_1"
    step.mkdir()
    for payload in (pickle.dumps(os.system), pickle.dumps({"a": getattr}), pickle.dumps([1, 2])):
        (step / ".metadata").write_bytes(payload)
        with pytest.raises(MetadataRefused):
            read_metadata(step)
    (step / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointCorrupt):
        read_metadata(step)


@pytest.mark.parametrize(
    "pointer", ["../../other/checkpoints/step_2", "/etc", "step_2/../../x", "", "step_x", "step_2\nstep_1"]
)
def test_latest_must_name_a_step_folder_here(run, tmp_path: Path, pointer: str) -> None:  # type: ignore[no-untyped-def]
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / "checkpoints" / LATEST).write_text(pointer + "\n")
    with pytest.raises(CheckpointCorrupt):
        read_latest_pointer(copy / "checkpoints")
    res = runner.invoke(ckpt_app, ["export", str(copy), "-o", str(tmp_path / "out.pt")])
    assert res.exit_code == 2 and "latest" in res.output, res.output
    assert not (tmp_path / "out.pt").exists()


def test_latest_through_a_link_out_is_refused(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run.path, other)
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / "checkpoints" / "step_99").symlink_to(other / "checkpoints" / "step_2")
    (copy / "checkpoints" / LATEST).write_text("step_99\n")
    with pytest.raises(CheckpointCorrupt, match="outside"):
        read_latest_pointer(copy / "checkpoints")


def test_latest_as_fifo_does_not_block(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / "checkpoints" / LATEST).unlink()
    os.mkfifo(copy / "checkpoints" / LATEST)
    with pytest.raises(CheckpointCorrupt, match="FIFO"):
        read_latest_pointer(copy / "checkpoints")


@pytest.mark.parametrize("damage", ["metadata_missing", "metadata_fifo", "shard_truncated"])
@pytest.mark.parametrize("named", ["run", "step"])
def test_an_incomplete_checkpoint_is_named_for_what_it_lacks(run, tmp_path: Path, damage: str, named: str) -> None:  # type: ignore[no-untyped-def]
    """Not "'latest' names step_2, which is missing" for a folder that is there, and a step folder
    named directly is verified like a run's latest (a truncated shard was loaded unchecked)."""
    import os
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    step = copy / "checkpoints" / "step_2"
    if damage == "shard_truncated":
        for shard in step.glob("*.distcp"):
            os.truncate(shard, 10)
    else:
        (step / ".metadata").unlink()
        if damage == "metadata_fifo":
            os.mkfifo(step / ".metadata")
    spec = str(copy if named == "run" else step)
    expected = "truncated" if damage == "shard_truncated" else "metadata"
    if named == "step" and damage != "shard_truncated":
        expected = "not a run directory"  # no .metadata: the folder is no checkpoint folder at all
    with pytest.raises(ConfigError, match=expected) as exc:
        resolve_checkpoint(spec, "init_from")
    assert "which is missing" not in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("recorded", [[1], {"n_layers": "two"}, {"d_model": -1}])
def test_a_damaged_recorded_architecture_is_one_line(run, tmp_path: Path, recorded: object) -> None:  # type: ignore[no-untyped-def]
    """trainer_state.json's model_config of the wrong shape was a pydantic ValidationError (an internal
    error in `generate` and `ckpt export --format hf`): one line naming the file and the field."""
    import json
    import shutil

    from hpcllm.engine.export import checkpoint_model_config

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    step = copy / "checkpoints" / "step_2"
    state = json.loads((step / "trainer_state.json").read_text())
    state["model_config"] = recorded if isinstance(recorded, list) else {**state["model_config"], **recorded}
    (step / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match=r"trainer_state\.json: model_config: ") as exc:
        checkpoint_model_config(step, run)
    assert "\n" not in str(exc.value)
