"""``hpcllm data``: build token stores (prepare, demo), train a BPE tokenizer, inspect a store.

Thin: each command parses, calls one ``hpcllm.data`` function, prints with rich. numpy and the
data modules are imported inside the commands so ``hpcllm --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from hpcllm.cli.common import console, err_console, fail, finite, int64
from hpcllm.errors import HpcllmError

data_app = typer.Typer(help="Tokenize text into token stores and inspect them.", no_args_is_help=True)

_INPUT_HELP = "Input files, directories or globs: .txt (one document per file) or .jsonl, optionally .gz."


@contextmanager
def _byte_progress(label: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(on_start(total_bytes), advance(n_bytes)) for one rich bar of input bytes read.

    The bar appears at ``on_start``, once the inputs are known to exist, so an input error is
    not preceded by an empty bar.
    """
    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    task = bar.add_task(label, total=None)

    def on_start(total: int) -> None:
        bar.update(task, total=total)
        bar.start()

    try:
        yield on_start, (lambda n: bar.advance(task, n))
    finally:
        bar.stop()


def _print_header(path: Path, header: object, extra: dict[str, str] | None = None) -> None:
    table = Table(title=str(path), show_header=False)
    for key, value in header.__dict__.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    for key, value in (extra or {}).items():
        table.add_row(key, value)
    console.print(table)


def _say_removed(output: Path, removed: list[str]) -> None:
    """One line naming the temp folders of killed builds of ``output`` that were removed."""
    if removed:
        err_console.print(
            f"removed {len(removed)} temp folder(s) left by a killed build of {output}: {', '.join(removed)}",
            markup=False,
            soft_wrap=True,
        )


def _fields(text_key: str, prompt_key: str, response_key: str, prompt_weight: float = 0.0):  # -> Fields (lazy)
    from hpcllm.data.sources import Fields

    return Fields(text=text_key, prompt=prompt_key, response=response_key, prompt_weight=prompt_weight)


_PROMPT_WEIGHT_HELP = (
    "Loss weight in [0, 1] of prompt tokens (records may set their own prompt_weight): "
    "0 masks them out, 0.1 gives them a tenth of a response token's weight."
)


@data_app.command("prepare")
def prepare_cmd(
    inputs: list[str] = typer.Option(..., "--input", "-i", help=_INPUT_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="Store directory to create, e.g. data/<name>."),
    tokenizer: str = typer.Option("byte", help="'byte' or a tokenizer.json (see train-tokenizer)."),
    workers: int | None = typer.Option(
        None, min=1, callback=int64, help="Tokenizer processes; default: available cores."
    ),
    text_key: str = typer.Option("text", help=".jsonl key of a plain document's text."),
    prompt_key: str = typer.Option("prompt", help=".jsonl key of an instruction's prompt (loss-masked)."),
    response_key: str = typer.Option("response", help=".jsonl key of an instruction's response."),
    prompt_weight: float = typer.Option(0.0, min=0.0, max=1.0, callback=finite, help=_PROMPT_WEIGHT_HELP),
    overwrite: bool = typer.Option(False, help="Replace an existing store at --output."),
) -> None:
    """Tokenize text into a memory-mapped token store (streamed, on every core)."""
    from hpcllm.data.prepare import prepare

    try:
        with _byte_progress("tokenizing") as (on_start, advance):
            fields = _fields(text_key, prompt_key, response_key, prompt_weight)
            result = prepare(
                inputs,
                tokenizer,
                output,
                fields=fields,
                workers=workers,
                overwrite=overwrite,
                progress=advance,
                on_start=on_start,
            )
    except (HpcllmError, ValueError) as exc:
        fail(exc)
    _say_removed(result.output, result.removed)
    mb = result.input_bytes / 1e6
    _print_header(
        result.output,
        result.header,
        {"input": f"{mb:,.1f} MB in {result.seconds:.1f} s ({mb / max(result.seconds, 1e-9):,.1f} MB/s)"},
    )


@data_app.command("train-tokenizer")
def train_tokenizer_cmd(
    inputs: list[str] = typer.Option(..., "--input", "-i", help=_INPUT_HELP),
    vocab_size: int = typer.Option(
        ..., min=257, callback=int64, help="Vocabulary size including the 256 bytes and <|endoftext|>."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="tokenizer.json path, or a directory for it."),
    min_frequency: int = typer.Option(2, min=1, callback=int64, help="Merge only pairs seen at least this often."),
    text_key: str = typer.Option("text", help=".jsonl key of a plain document's text."),
    prompt_key: str = typer.Option("prompt", help=".jsonl key of an instruction's prompt."),
    response_key: str = typer.Option("response", help=".jsonl key of an instruction's response."),
) -> None:
    """Train a byte-level BPE offline (tokenizers library) and save tokenizer.json."""
    from hpcllm.data.bpe import train_bpe
    from hpcllm.data.sources import expand_inputs, total_bytes

    try:
        total = total_bytes(expand_inputs(inputs))
        with _byte_progress("training BPE") as (on_start, advance):
            on_start(total)
            path = train_bpe(
                inputs,
                vocab_size,
                output,
                min_frequency=min_frequency,
                progress=advance,
                fields=_fields(text_key, prompt_key, response_key),
            )
    except HpcllmError as exc:
        fail(exc)
    console.print(
        f"wrote [bold]{path}[/] (vocab {vocab_size:,}); use it with "
        f"`hpcllm data prepare --tokenizer {path}` and `data.tokenizer: {path}` in run.yaml"
    )


@data_app.command("demo")
def demo_cmd(
    output: Path = typer.Option(Path("data/demo"), "--output", "-o", help="Store directory to (re)create."),
    instruct: bool = typer.Option(False, help="Question/answer pairs with a loss mask on the questions."),
    prompt_weight: float = typer.Option(
        0.0, min=0.0, max=1.0, callback=finite, help="--instruct: " + _PROMPT_WEIGHT_HELP
    ),
    debian_docs: bool = typer.Option(
        True, help="Add Python's docs from Debian's python3.11-doc package when it is installed."
    ),
) -> None:
    """Write real English text (Python's reference docs, offline) and tokenize it with the byte tokenizer."""
    from hpcllm.data.demo import write_demo

    try:
        corpus, result = write_demo(
            output, instruct=instruct, overwrite=True, with_debian_docs=debian_docs, prompt_weight=prompt_weight
        )
    except HpcllmError as exc:
        fail(exc)
    _say_removed(result.output, result.removed)
    _print_header(result.output, result.header, {"text": str(corpus)})


@data_app.command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="A store directory."),
    seq_len: int | None = typer.Option(None, min=1, callback=int64, help="Also count samples of this length."),
    show: int = typer.Option(
        200, min=0, callback=int64, help="Decode this many tokens of the first document (byte stores)."
    ),
    verify: bool = typer.Option(False, help="Also scan every token (O(size)): ids, EOS, mask values."),
) -> None:
    """Check a store against its header and summarise it."""
    from hpcllm.data.store import TokenStore

    try:
        store = TokenStore.open(path)
        if verify:
            bar = Progress(TextColumn("[bold]verifying"), BarColumn(), TimeRemainingColumn(), console=err_console)
            with bar:
                task = bar.add_task("verify", total=store.n_tokens)
                store.verify(progress=lambda n: bar.advance(task, n))
            console.print(f"[green]verified[/] {store.n_tokens:,} tokens, {store.n_docs:,} documents")
    except HpcllmError as exc:
        fail(exc)
    extra = {}
    if seq_len:
        extra[f"samples @ seq_len {seq_len}"] = f"{store.n_windows(seq_len):,}"
    _print_header(path, store.header, extra)
    if show and store.header.tokenizer == "byte" and store.n_docs:
        doc = store.document(0)[:show]
        console.print(
            bytes(int(t) for t in doc if t < 256).decode("utf-8", errors="replace"), markup=False, highlight=False
        )
