"""``hpcllm ckpt ls/export``: the exports load where users take them (torch.load, transformers)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_ckpt_checkpointer import CountingLoader, run_steps
from typer.testing import CliRunner

from hpcllm.cli.ckpt import ckpt_app
from hpcllm.config.model import ModelConfig
from hpcllm.config.training import CheckpointConfig
from hpcllm.engine.checkpoint import Checkpointer
from hpcllm.engine.export import export_hf
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.state import TrainState
from hpcllm.errors import HpcllmError
from hpcllm.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def trained_run(tmp_path: Path, cfg: ModelConfig, steps: int = 2) -> tuple[RunDir, GPT]:
    """A run directory whose latest checkpoint holds ``cfg`` trained for a few steps."""
    torch.manual_seed(0)
    model = GPT(cfg)
    init_weights(model, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = TrainState(model, opt, sched, CountingLoader())
    run = RunDir(tmp_path / "run")
    run.path.mkdir()  # the engine's run folder exists; a checkpointer never creates it
    ckpt = Checkpointer(run, CheckpointConfig(every_steps=1, keep_last=3))
    run_steps(state, ckpt, steps)
    ckpt.close()
    return run, model


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": False, "n_kv_heads": 1}, {"tie_embeddings": False, "n_kv_heads": None}],
    ids=["tiny-gqa-tied", "mqa-untied", "mha-untied"],
)
def test_hf_export_matches_engine_logits(tmp_path: Path, overrides: dict) -> None:
    from transformers import LlamaForCausalLM

    cfg = ModelConfig.from_name("tiny", seq_len=16, **overrides)
    run, model = trained_run(tmp_path, cfg)
    out = tmp_path / "hf"
    res = runner.invoke(ckpt_app, ["export", str(run.path), "--format", "hf", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.json", "model.safetensors"):  # readable by the group and others, as the umask allows
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask, name
    hf = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    # Same math in fp32; differences come from op order (fused SDPA vs eager softmax, RMSNorm).
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_hf_export_rejects_non_llama_configs(tmp_path: Path) -> None:
    cfg = ModelConfig.from_name("tiny", activation="gelu", norm="layernorm", seq_len=16)
    with pytest.raises(
        HpcllmError, match=r"model.norm = 'layernorm' \(Llama needs 'rmsnorm'\); model.activation = 'gelu'"
    ):
        export_hf(tmp_path / "nowhere", tmp_path / "out", cfg)


def test_torch_export_is_the_model_state_dict(tmp_path: Path) -> None:
    run, model = trained_run(tmp_path, ModelConfig.from_name("tiny", seq_len=16))
    out = tmp_path / "model.pt"
    res = runner.invoke(ckpt_app, ["export", str(run.path), "--format", "torch", "-o", str(out)])
    assert res.exit_code == 0, res.output
    sd = torch.load(out, weights_only=True)
    expected = model.state_dict()
    assert sd.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(sd[k], v), k
    GPT(model.cfg).load_state_dict(sd)  # loads into a fresh engine model as is

    full = tmp_path / "full.pt"
    res = runner.invoke(ckpt_app, ["export", str(run.path), "-o", str(full), "--with-optimizer", "--step", "1"])
    assert res.exit_code == 0, res.output
    state = torch.load(full, weights_only=False)
    assert set(state) == {"model", "optim"} and "state" in state["optim"]


def _ls_rows(output: str) -> dict[str, str]:
    """Table rows of `ckpt ls` by step (cli/listing's layout: no vertical rules, columns apart by spaces)."""
    return {line.split()[0]: line for line in output.splitlines() if line.split() and line.split()[0].isdigit()}


def test_ls_shows_steps_latest_and_corruption(tmp_path: Path) -> None:
    run, _ = trained_run(tmp_path, ModelConfig.from_name("tiny", seq_len=16), steps=3)
    (run.checkpoints / "step_2" / ".metadata").unlink()
    shard = next((run.checkpoints / "step_1").glob("*.distcp"))
    os.truncate(shard, shard.stat().st_size // 2)  # only DCP's index can tell
    (run.checkpoints / ".tmp_step_4").mkdir()
    res = runner.invoke(ckpt_app, ["ls", str(run.path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = _ls_rows(res.output)
    assert set(rows) == {"1", "2", "3"}, res.output
    assert "complete" in rows["1"] and "corrupt: missing DCP metadata" in rows["2"] and "(latest)" in rows["3"]
    assert "incomplete: .tmp_step_4" in res.output
    assert "`--verify` does" in res.output
    res = runner.invoke(ckpt_app, ["ls", str(run.path), "--verify"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = _ls_rows(res.output)
    assert "corrupt: shard" in rows["1"] and "is truncated" in rows["1"]
    assert "corrupt" in rows["2"] and "ok" in rows["3"] and "(latest)" in rows["3"]


def test_ls_runs_without_torch(tmp_path: Path) -> None:
    """A login node may have no torch: `ckpt ls` lists from the checkpoint files alone."""
    run, _ = trained_run(tmp_path, ModelConfig.from_name("tiny", seq_len=16), steps=2)
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom hpcllm.cli import app\n"
        "res = CliRunner().invoke(app, ['ckpt', 'ls', sys.argv[1]], env={'COLUMNS': '200'})\n"
        "print(res.output)\nprint('exit', res.exit_code, 'torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(run.path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.strip().splitlines()[-1] == "exit 0 False", proc.stdout + proc.stderr
    rows = _ls_rows(proc.stdout)
    assert set(rows) == {"1", "2"} and "complete" in rows["1"] and "(latest)" in rows["2"]
    cells = {step: re.split(r"\s{2,}", row.strip()) for step, row in rows.items()}
    assert [cells["1"][1], cells["2"][1]] == ["2", "4"]  # consumed samples, from trainer_state.json
    assert cells["2"][2] == "1"  # written by one rank


def test_export_errors_are_clear(tmp_path: Path) -> None:
    res = runner.invoke(ckpt_app, ["export", str(tmp_path), "-o", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "no checkpoints/ folder" in res.output
    run, _ = trained_run(tmp_path, ModelConfig.from_name("tiny", seq_len=16), steps=1)
    res = runner.invoke(ckpt_app, ["export", str(run.path), "-o", str(tmp_path / "x"), "--step", "7"])
    assert res.exit_code == 2 and "no checkpoint step_7; complete checkpoints at steps: 1" in res.output


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, hpcllm.cli.ckpt; sys.exit('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from hpcllm.checkpoint_layout import read_latest_pointer
from hpcllm.engine.export import checkpoint_model_config, export_hf, export_torch
from hpcllm.errors import StorageWriteError
from hpcllm.rundir import RunDir
run, out = RunDir(Path(sys.argv[1])), Path(sys.argv[2])
ckpt = read_latest_pointer(run.checkpoints)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
config = checkpoint_model_config(ckpt, run)
exports = {"m.pt": lambda o: export_torch(ckpt, o), "hf": lambda o: export_hf(ckpt, o, config)}
for name, export in exports.items():
    try:
        export(out / name)
    except StorageWriteError as exc:
        print(exc)
    else:
        print("no error")
"""


def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """torch's and safetensors' native writers raise their own errors for a full disk (an internal
    error before, with a torn file at the output path): one line naming the output, nothing left."""
    run, _ = trained_run(tmp_path, ModelConfig.from_name("tiny", seq_len=16))
    out = tmp_path / "exports"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(run.path), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    for line, name in zip(lines, ("m.pt", "hf"), strict=True):
        assert line.startswith(f"{out / name}: cannot write (") and "free there" in line, line
    assert list(out.iterdir()) == []  # neither a torn export nor a temp file
