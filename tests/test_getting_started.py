"""docs/getting-started.md runs as written: every `$` command, in order, from a fresh directory.

The commands are taken from the page itself (each ```console block's lines starting with "$ "),
so a change of the guide is tested as it is, and a command the tool no longer accepts fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from docs_cog import mask_volatile, shown_output

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "getting-started.md"


def guide_commands(text: str) -> list[str]:
    """The `$ ` lines of the page's ```console blocks, in order."""
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_the_guide_has_the_tutorials_steps() -> None:
    commands = guide_commands(GUIDE.read_text())
    joined = "\n".join(commands)
    for step in (
        "hpcllm data demo",
        "hpcllm submit experiments/getting_started.yaml",
        "grep eval_loss",
        "hpcllm generate",
        "--instruct --prompt-weight",
        "hpcllm submit experiments/getting_started_finetune.yaml",
        "hpcllm ckpt export",
        "getting_started_60m.yaml",
    ):
        assert step in joined, step


def assert_shown_exactly(outputs: dict[str, str], start: str) -> None:
    """The guide shows the output of the command starting with ``start`` byte for byte, its timings
    aside (``mask_volatile``): generated text, checkpoint path, step and token count included. (The
    guide's generate sample is also docs/generate.md's: tests/test_docs.py.)"""
    command = next(c for c in outputs if c.startswith(start))
    shown = "\n".join(shown_output("docs/getting-started.md", command))
    assert mask_volatile(shown) == mask_volatile(outputs[command].rstrip("\n")), f"$ {command}\n{outputs[command]}"


@pytest.mark.integration
def test_every_command_of_the_guide_runs(tmp_path: Path) -> None:
    (tmp_path / "experiments").symlink_to(REPO / "experiments")  # the guide runs from a clone's root
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HPCLLM_ACCOUNT", None)
    outputs: dict[str, str] = {}
    for cmd in guide_commands(GUIDE.read_text()):
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"$ {cmd}\n{proc.stdout}\n{proc.stderr}"
        outputs[cmd] = proc.stdout + proc.stderr

    def output_of(start: str) -> str:
        return next(out for cmd, out in outputs.items() if cmd.startswith(start))

    corpus = "hpcllm data info data/demo --seq-len 128"
    missing = [line for line in shown_output("docs/getting-started.md", corpus) if line not in output_of(corpus)]
    assert not missing, (
        "the guide shows runs of the demo corpus made with Debian's python3.11-doc (`make demo-text` installs "
        f"it); this machine's corpus differs in {missing}, so every output below would differ too"
    )
    pretrain = next(p for p in (tmp_path / "results" / "getting_started" / "local").iterdir() if p.is_dir())
    summary = json.loads((pretrain / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_completed"] == 100
    losses = [r["loss"] for r in map(json.loads, (pretrain / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < 4.0, losses  # it learned: ln(257) = 5.55 is a uniform guess over the bytes
    assert "| 0.00013 | 1 |" in output_of("hpcllm collect -r results/getting_started")
    # Step 4: held-out documents evaluated at steps 50 and 100; the last eval loss reaches the summary.
    evals = [json.loads(line) for line in output_of("grep eval_loss").splitlines()]
    # The guide shows the eval lines up to their timing ("…}"): every figure before it to the last digit.
    shown = shown_output("docs/getting-started.md", "grep eval_loss results/getting_started/local/*/metrics.jsonl")
    for shown_line, line in zip(shown, output_of("grep eval_loss").splitlines(), strict=True):
        assert shown_line.endswith(", …}") and line.startswith(shown_line[: -len("…}")]), (shown_line, line)
    assert [e["step"] for e in evals] == [50, 100] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert summary["eval_loss"] == evals[1]["eval_loss"] > losses[-1]  # new text is harder than the batches
    assert_shown_exactly(outputs, "hpcllm generate results/getting_started/local")
    assert "loss_mask_dtype       │ float16" in output_of("hpcllm data info data/demo-qa")
    finetune = next(p for p in (tmp_path / "results" / "getting_started_finetune" / "local").iterdir() if p.is_dir())
    tuned = json.loads((finetune / "summary.json").read_text())
    assert tuned["status"] == "completed" and tuned["init_from"] == str(pretrain.resolve() / "checkpoints" / "step_100")
    assert_shown_exactly(outputs, "hpcllm generate results/getting_started_finetune")
    assert (tmp_path / "hf" / "getting_started" / "config.json").is_file()
    assert "rendered" in output_of("hpcllm submit experiments/getting_started_60m.yaml")
    assert (tmp_path / "results" / "getting_started_60m" / "leonardo").is_dir()
