"""What every command's ``--help`` shares: real examples at the end, and flags shown as flags.

Examples are data, one place for all commands (``tests/test_cli_help.py`` parses every one with
the command it belongs to, so an example whose option is renamed or removed fails the suite). Each entry: the command's
path (``("ckpt", "export")``) -> example command lines.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer
import typer.core
from rich.markup import escape

EXAMPLES: dict[tuple[str, ...], list[str]] = {
    ("submit",): [
        "hpcllm submit experiments/getting_started.yaml -c local",
        "hpcllm submit experiments/scaling_2.7b.yaml -c leonardo -A AIFAC_L01_028 --dry-run",
        "hpcllm submit experiments/scaling_2.7b.yaml -c leonardo --preflight --spare-nodes 1 --over-budget",
    ],
    ("plan",): [
        "hpcllm plan experiments/scaling_2.7b.yaml -c leonardo -A AIFAC_L01_028",
        "hpcllm plan experiments/scaling_2.7b.yaml -c leonardo -r results --mfu 0.4",
    ],
    ("status",): ["hpcllm status", "hpcllm status -r results/getting_started/local --format json"],
    ("cancel",): ["hpcllm cancel tiny-n1x2-mbs8-ga1-fs-acnone-seq128-332ada07 -r results"],
    ("logs",): ["hpcllm logs tiny-n1x2-mbs8 -n 100", "hpcllm logs 60m-n1x1 -r results/getting_started"],
    ("collect",): [
        "hpcllm collect -r results --format csv -o scaling.csv",
        "hpcllm collect -k gpus,samples_per_s,mfu,run --where 'gpus >= 16' --sort -mfu",
        "hpcllm collect -r results --fits",
    ],
    ("report",): ["hpcllm report -r results -o report.html"],
    ("schema",): ["hpcllm schema experiment > experiment.schema.json"],
    ("doctor",): [
        "hpcllm doctor -c leonardo -A AIFAC_L01_028 --experiment experiments/scaling_2.7b.yaml",
        "hpcllm doctor -c marenostrum5 -A ehpc01 --gpu",
    ],
    ("generate",): ["hpcllm generate results/getting_started/local/60m-n1x1-… -p 'Once upon a time' -n 40"],
    ("explore-batch",): [
        "hpcllm explore-batch experiments/scaling_2.7b.yaml -c leonardo --dry-run",
        "hpcllm explore-batch experiments/scaling_2.7b.yaml -c leonardo --apply -o tuned.yaml",
    ],
    ("clusters",): ["hpcllm clusters", "hpcllm clusters show leonardo"],
    ("clusters", "show"): ["hpcllm clusters show marenostrum5"],
    ("data", "demo"): ["hpcllm data demo --output data/demo"],
    ("data", "prepare"): ["hpcllm data prepare --input corpus.jsonl --output data/corpus --tokenizer byte"],
    ("data", "train-tokenizer"): [
        "hpcllm data train-tokenizer --input corpus.jsonl --output tok.json --vocab-size 8192"
    ],
    ("data", "info"): ["hpcllm data info data/demo --seq-len 128"],
    ("ckpt", "ls"): ["hpcllm ckpt ls results/getting_started/local/60m-n1x1-… --verify"],
    ("ckpt", "export"): ["hpcllm ckpt export results/getting_started/local/60m-n1x1-… --format hf -o hf/60m"],
    ("model", "list"): ["hpcllm model list"],
    ("model", "info"): [
        "hpcllm model info 60m",
        "hpcllm model info 2.7b --mbs 2 --gpus 8 --cluster leonardo",
        "hpcllm model info 28b --tp 4 --gpus 64 --cluster leonardo",
    ],
    ("search", "run"): ["hpcllm search run experiments/smoke.yaml -c local --wait"],
    ("search", "status"): ["hpcllm search status experiments/smoke.yaml -c local"],
    ("env", "pack"): ["hpcllm env pack -o wheelhouse --python-version 3.11", "hpcllm env pack --train -o wheelhouse"],
}


def epilog(path: tuple[str, ...]) -> str | None:
    """The examples of one command as a help epilog (rich markup: one example a line)."""
    lines = EXAMPLES.get(path)
    if not lines:
        return None
    body = "\n\n".join(f"  [bold]$[/] {escape(line)}" for line in lines)
    return f"[bold]Examples[/]\n\n{body}"


def reflowed(doc: str) -> str:
    """A docstring with each paragraph on one line: the command list shows a docstring's line breaks
    as they are (mid-sentence at 100 columns); rich wraps one-line paragraphs to the terminal."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def add_examples(app: typer.Typer, prefix: tuple[str, ...] = ()) -> None:
    """Give every command of ``app`` (and of its sub-apps) its examples, where it has none, and its
    docstring as one-line paragraphs (``reflowed``)."""
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else "")
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.help = reflowed(info.callback.__doc__)
        if info.epilog is None:
            info.epilog = epilog((*prefix, name))
    for group in app.registered_groups:
        sub = group.typer_instance
        group_name = group.name or (sub.info.name if sub else None)
        if sub is None or not isinstance(group_name, str):
            continue
        name = group_name
        text = epilog((*prefix, name))
        if text and (sub.info.epilog is None or isinstance(sub.info.epilog, typer.models.DefaultPlaceholder)):
            sub.info.epilog = text
        add_examples(sub, (*prefix, name))


def show_flags_without_a_type() -> None:
    """A flag takes no value, yet typer's help prints ``<bool>`` beside it (and ``--dry-run true``
    is then an error): show no type for flags. Options that take a value keep theirs."""
    original = typer.core.TyperOption.display_type_rich
    if getattr(original, "_hpcllm_flags", False):
        return

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        if self.is_flag and not self.count:
            return None
        return original(self, ctx)

    display_type_rich._hpcllm_flags = True  # type: ignore[attr-defined]
    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
