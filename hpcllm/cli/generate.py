"""``hpcllm generate``: what a trained model writes, from any of its run's checkpoints.

Thin: resolve the checkpoint, load it with ``hpcllm.engine.generate`` (torch is imported inside
the command, so ``hpcllm --help`` stays torch-free), print the text. The text goes to stdout and
everything else to stderr, so ``hpcllm generate ... > out.txt`` keeps only the text.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.text import Text

from hpcllm.cli.common import console, err_console, fail, finite, int64, missing_path_message
from hpcllm.errors import HpcllmError


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def generate(
    run_dir: Path = typer.Argument(..., help="Run directory (or a folder holding one run, or a step_<N> folder)."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text the model continues."),
    step: int | None = typer.Option(
        None, "--step", min=0, callback=int64, help="Checkpoint step; default: the latest."
    ),
    max_new_tokens: int = typer.Option(
        100, "--max-new-tokens", "-n", min=1, callback=int64, help="Tokens to add at most."
    ),
    temperature: float = typer.Option(
        0.8, min=0.0, callback=finite, help="Softmax temperature; 0 = greedy (always the most likely)."
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", min=1, callback=int64, help="Sample among the k most likely tokens only."
    ),
    top_p: float = typer.Option(
        1.0,
        "--top-p",
        min=0.0,
        max=1.0,
        callback=finite,
        help="Sample among the most likely tokens whose probabilities add up to p.",
    ),
    seed: int = typer.Option(
        0, callback=int64, help="Seed of the sampling: the same seed gives the same text (same device)."
    ),
    tokenizer: str | None = typer.Option(None, help="'byte' or a tokenizer.json; default: the run's data.tokenizer."),
    device: Device = typer.Option(Device.auto, help="auto: a GPU if there is one."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: prompt, text, token ids, checkpoint."),
) -> None:
    """Continue PROMPT with a checkpoint of RUN_DIR (saved by any number of ranks), on one device."""
    if not run_dir.exists():  # said before torch is imported, and not as "not a run directory"
        fail(HpcllmError(missing_path_message(run_dir, "a run directory (`hpcllm status` lists them)")))
    from hpcllm.engine.generate import Sampling, load_generator

    spec = str(run_dir) if step is None else f"{run_dir}@{step}"
    try:
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        with err_console.status(Text(f"loading {spec} ...")):
            gen = load_generator(spec, tokenizer=tokenizer, device=device.value)
        with err_console.status(f"generating up to {max_new_tokens} tokens ..."):
            out = gen.generate(prompt, max_new_tokens, sampling)
    except HpcllmError as exc:
        fail(exc)
    if as_json:
        record = {
            "checkpoint": str(gen.checkpoint),
            "step": gen.step,
            "prompt": prompt,
            "text": out.text,
            "prompt_ids": out.prompt_ids,
            "ids": out.ids,
            "stopped_at_eos": out.stopped_at_eos,
        }
        typer.echo(json.dumps(record))  # one line, unwrapped: for scripts
        return
    console.print(prompt + out.text, markup=False, highlight=False, soft_wrap=True)
    rate = len(out.ids) / max(out.seconds, 1e-9)
    err_console.print(
        f"[dim]{gen.checkpoint} (step {gen.step}) on {gen.device.type}: {len(out.ids)} tokens in "
        f"{out.seconds:.2f} s ({rate:.0f} tokens/s){', stopped at EOS' if out.stopped_at_eos else ''}[/]",
        highlight=False,
        soft_wrap=True,
    )
