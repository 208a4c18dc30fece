"""Tokenizer throughput and peak memory of `hpcllm data prepare` on a few-hundred-MB input.

    .venv/bin/python benchmarks/data_tokenize.py --size-mb 300 --workdir /tmp/hpcllm-bench

The input is real English text (Python's reference documentation from ``pydoc_data``), repeated
until it reaches ``--size-mb``: the work per byte is that of real text, and no data set needs to be
downloaded. A byte-level BPE is trained on one copy of it first. Each ``prepare`` runs in a fresh
process so its peak RSS (main process, and the largest worker) is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpcllm.data.bpe import train_bpe
from hpcllm.data.demo import records
from hpcllm.data.prepare import available_cores, prepare


def write_corpus(path: Path, size_mb: int) -> int:
    """Repeat the demo records into ``path`` until it holds ``size_mb`` MB; streams, O(1) memory."""
    block = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records(instruct=False)).encode()
    target = size_mb * 1_000_000
    with open(path, "wb") as fh:
        written = 0
        while written == 0 or written < target:
            fh.write(block)
            written += len(block)
    return written


def _run(inputs: list[str], tokenizer: str, output: str, workers: int, q: mp.Queue) -> None:
    res = prepare(inputs, tokenizer, output, workers=workers, overwrite=True)
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    q.put(
        {
            "seconds": res.seconds,
            "input_bytes": res.input_bytes,
            "tokens": res.header.n_tokens,
            "rss_main_mib": me.ru_maxrss / 1024,
            "rss_worker_mib": kids.ru_maxrss / 1024,
            # CPU time, so that a figure taken on a shared, busy machine can still be read
            "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
            "load": os.getloadavg()[0],
        }
    )


def measure(inputs: list[str], tokenizer: str, output: Path, workers: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(inputs, tokenizer, str(output), workers, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hpcllm-bench-tokenize"))
    ap.add_argument("--keep", action="store_true", help="Keep the corpus and stores.")
    args = ap.parse_args()
    console = Console(width=180)
    args.workdir.mkdir(parents=True, exist_ok=True)
    one = args.workdir / "one_copy.jsonl"
    write_corpus(one, 0)
    t0 = time.perf_counter()
    tok = train_bpe([str(one)], args.vocab_size, args.workdir)
    console.print(
        f"trained BPE (vocab {args.vocab_size}) on {one.stat().st_size / 1e6:.2f} MB in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    corpus = args.workdir / "corpus.jsonl"
    if corpus.exists() and corpus.stat().st_size >= args.size_mb * 1_000_000:
        size = corpus.stat().st_size  # reuse the corpus of an earlier --keep run
    else:
        size = write_corpus(corpus, args.size_mb)
    console.print(f"corpus: {size / 1e6:.0f} MB; {args.workers} workers on {available_cores()} cores")

    table = Table(title="hpcllm data prepare")
    for col in (
        "tokenizer",
        "workers",
        "input MB",
        "tokens",
        "wall s",
        "MB/s (wall)",
        "CPU s",
        "MB per CPU-s",
        "load avg",
        "peak RSS main MiB",
        "peak RSS worker MiB",
    ):
        table.add_column(col, justify="right")
    for name, spec in (("BPE", str(tok)), ("byte", "byte")):
        r = measure([str(corpus)], spec, args.workdir / f"store-{name}", args.workers)
        mb = r["input_bytes"] / 1e6
        table.add_row(
            name,
            str(args.workers),
            f"{mb:.0f}",
            f"{r['tokens']:,}",
            f"{r['seconds']:.1f}",
            f"{mb / r['seconds']:.2f}",
            f"{r['cpu_s']:.1f}",
            f"{mb / r['cpu_s']:.2f}",
            f"{r['load']:.1f}",
            f"{r['rss_main_mib']:.0f}",
            f"{r['rss_worker_mib']:.0f}",
        )
    console.print(table)
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
