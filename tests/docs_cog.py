"""What the docs show of a command's output, made by running it (cog: https://nedbatchelder.com/code/cog).

A doc marks a block with ``<!-- [[[cog show("hpcllm model info 60m", rows=[...]) ]]] -->`` ...
``<!-- [[[end]]] -->``; ``make docs`` writes the output in between, and ``tests/test_docs.py`` runs
``cog --check``, so a change that alters a shown output fails until the doc is regenerated. Only
outputs that do not depend on timing are shown this way (a speed or a wall time is not).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 100  # the terminal the docs' tables are drawn for


def output_of(command: str) -> str:
    """stdout of ``command`` (an ``hpcllm ...`` line or a shell one), from the repository's root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCLLM_")}
    env.update(COLUMNS=str(WIDTH), NO_COLOR="1", TERM="dumb")
    args = shlex.split(command)
    if args[0] == "hpcllm":
        args = [sys.executable, "-c", "from hpcllm.cli import main; main()", *args[1:]]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # diff exits 1 when files differ
        raise RuntimeError(f"{command}: exit {proc.returncode}\n{proc.stderr}")
    return proc.stdout


def show(command: str, rows: list[str] | None = None, *, prompt: bool = True) -> None:
    """A ```console block with ``$ command`` and its output; ``rows``: only the lines holding one of these."""
    import cog  # cogapp's module for the generator's output; the helpers below need no cog

    lines = output_of(command).rstrip("\n").splitlines()
    if rows is not None:
        lines = [line for line in lines if any(r in line for r in rows)]
    cog.outl("```console")
    if prompt:
        cog.outl(f"$ {command}")
    for line in lines:
        cog.outl(line.rstrip())
    cog.outl("```")


def _flatten(doc: object, prefix: str = "") -> dict[str, object]:
    if isinstance(doc, dict):
        out: dict[str, object] = {}
        for key, value in doc.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): doc}


def settings_diff(a: str, b: str) -> list[str]:
    """The settings (dotted keys) in which YAML file ``b`` differs from ``a``, comments aside."""
    import yaml

    left, right = (_flatten(yaml.safe_load((ROOT / p).read_text())) for p in (a, b))
    return [
        f"{key}: {left.get(key, '(unset)')} -> {right.get(key, '(unset)')}"
        for key in sorted(set(left) | set(right))
        if left.get(key) != right.get(key)
    ]


def show_settings_diff(a: str, b: str) -> None:
    import cog

    lines = settings_diff(a, b)
    cog.outl(f"`{b}` differs from `{a}` in {len(lines)} settings (comments aside):")
    cog.outl("")
    cog.outl("```")
    for line in lines:
        cog.outl(line)
    cog.outl("```")


def show_collect_sample(rows: list[str], summary_keys: tuple[str, ...] = ("eval_loss", "eval_ppl")) -> None:
    """``collect``'s default table as it is today, over ``rows`` measured once (their samples/s and wall
    time depend on the machine and its load, so they are data in the doc, not re-run): the header is
    computed for runs whose summaries hold ``summary_keys`` and whose grid sweeps only what the seed's
    columns show (experiments/smoke.yaml); a row whose cell count differs from the header's fails."""
    import cog

    from hpcllm.collect import columns as cols
    from hpcllm.collect.records import RunRecord
    from hpcllm.rundir import RunDir

    record = RunRecord(RunDir(ROOT / "no-such-run"), dict.fromkeys(summary_keys, 1.0))
    headers = [c.header for c in cols.resolve("default", [record])]
    for row in rows:
        if row.count("|") != len(headers) + 1:
            raise ValueError(f"a sample row has {row.count('|') - 1} cells, the header {len(headers)}: {row}")
    cog.outl("```")
    cog.outl("$ hpcllm collect -r results")
    cog.outl("| " + " | ".join(headers) + " |")
    cog.outl("|" + "---|" * len(headers))
    for row in rows:
        cog.outl(row)
    cog.outl("```")


# What a shown output may differ in from a run of its command, and nothing else (a sample is data of
# one real run; every other byte of it must come out of the next run the same):
_VOLATILE = (
    # how long the command took
    (re.compile(r"\b\d+\.\d+ s \(\d+ tokens/s\)"), "<seconds> s (<rate> tokens/s)"),
    # the 8 hex digits of a run id: they hash the resolved config, whose data path is absolute, so
    # they depend on the folder the guide runs in (the readable part before them is compared)
    (re.compile(r"(-seq\d+-)[0-9a-f]{8}\b"), r"\1<digest>"),
)


def mask_volatile(text: str) -> str:
    """``text`` with the fields of ``_VOLATILE`` replaced by placeholders and each line's trailing blanks
    dropped (a doc cannot keep them: ``show`` strips them too); compare the rest byte for byte."""
    for pattern, placeholder in _VOLATILE:
        text = pattern.sub(placeholder, text)
    return "\n".join(line.rstrip() for line in text.rstrip("\n").splitlines())


def shown_output(doc: str, command: str) -> list[str]:
    """The lines a doc shows as ``command``'s output: the plain ``` block after the one with ``$ command``."""
    text = (ROOT / doc).read_text()
    after = text[text.index(f"$ {command}\n") :]
    block = after[after.index("```\n```\n") + len("```\n```\n") :]
    return block[: block.index("```")].rstrip("\n").splitlines()


def show_as_in(doc: str, command: str) -> None:
    """``command`` and the output ``doc`` shows for it: one sample, shown the same in two docs."""
    import cog

    cog.outl("```console")
    cog.outl(f"$ {command}")
    for line in shown_output(doc, command):
        cog.outl(line.rstrip())
    cog.outl("```")
