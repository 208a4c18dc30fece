"""Real English text that is always available offline, for the demo, the README and the tests.

Python's standard library ships ~465 KB of its own reference documentation in
``pydoc_data.topics`` (what ``help("assert")`` prints). Where Debian's ``python3.11-doc`` package
is installed, its reStructuredText sources (~10 MB) are added. Never random tokens: a model that
learns from these shows a falling loss for the right reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from hpcllm.data.prepare import PrepareResult, prepare
from hpcllm.data.sources import Fields
from hpcllm.data.tokenizer import BYTE
from hpcllm.fsutil import atomic_write_text

# Debian's python3.X-doc packages put the documentation sources here.
DEBIAN_DOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")


def topics() -> dict[str, str]:
    import pydoc_data.topics  # stdlib, but only needed here

    return dict(sorted(pydoc_data.topics.topics.items()))


def debian_doc_files(root: Path | None = None) -> list[Path]:
    root = DEBIAN_DOC_SOURCES if root is None else root
    return sorted(root.rglob("*.txt")) if root.is_dir() else []


def records(instruct: bool, with_debian_docs: bool = True) -> Iterator[dict[str, str]]:
    """One JSON record per document; ``instruct`` frames each topic as a question and its answer."""
    for name, text in topics().items():
        if instruct:
            yield {
                "prompt": f"Question: what does the Python reference say about {name!r}?\nAnswer: ",
                "response": text,
            }
        else:
            yield {"text": text}
    if with_debian_docs and not instruct:
        for path in debian_doc_files():
            yield {"text": path.read_text(encoding="utf-8", errors="replace")}


def write_demo(
    output: str | Path,
    *,
    instruct: bool = False,
    overwrite: bool = False,
    with_debian_docs: bool = True,
    prompt_weight: float = 0.0,
) -> tuple[Path, PrepareResult]:
    """Write the corpus as ``<output>.jsonl`` next to the store, then prepare it with the byte
    tokenizer; ``prompt_weight`` is the loss weight of the questions of ``instruct`` data."""
    output = Path(output)
    corpus = output.with_name(output.name + ".jsonl")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records(instruct, with_debian_docs))
    atomic_write_text(corpus, text)
    return corpus, prepare(
        [str(corpus)], BYTE, output, workers=1, overwrite=overwrite, fields=Fields(prompt_weight=prompt_weight)
    )
