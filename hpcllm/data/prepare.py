"""``hpcllm data prepare``: tokenize text files into a token store, streaming, on every core.

The main process only reads raw bytes (``hpcllm.data.sources``) and appends results to the
``StoreWriter``; JSON parsing and tokenization run in a pool of worker processes. At most two
tasks (~1 MiB of input each) per worker are in flight, so memory stays bounded however large the
input is, and results are written in input order, so the store is the same for any worker count.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcllm.data import sources
from hpcllm.data.sources import Fields, ProgressFn, Task, expand_inputs, iter_tasks, parse_record
from hpcllm.data.store import StoreHeader, StoreWriter, token_dtype
from hpcllm.data.tokenizer import Tokenizer, load_tokenizer, single_threaded
from hpcllm.errors import HpcllmError
from hpcllm.fsutil import writing

StartFn = Callable[[int], None]  # called once with the total input size in bytes


@dataclass
class Encoded:
    tokens: np.ndarray  # flat ids in the store's dtype, documents closed by EOS
    mask: np.ndarray | None  # loss weight per token (uint8 when all are 0/1, else float16), None when all are 1
    doc_ends: np.ndarray  # positions in ``tokens`` where documents end (exclusive)


@dataclass
class PrepareResult:
    output: Path
    header: StoreHeader
    input_bytes: int
    seconds: float
    removed: list[str]  # temp folders that killed prepares of this output left, removed first


def available_cores() -> int:
    """Cores this process may run on (SLURM cgroups and taskset included), not the node's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def encode_task(task: Task, tok: Tokenizer, fields: Fields) -> Encoded:
    """Tokenize one task; every token gets the loss weight of its segment (instruction pairs: the
    prompt ``fields.prompt_weight``, by default 0, the response and EOS 1). Documents whose
    segments are all empty are skipped."""
    texts: list[str] = []
    weights: list[float] = []  # per text: the loss weight of its tokens
    ends: list[bool] = []  # per text: closes a document (EOS follows)
    for piece in task.pieces:
        if piece.is_json:
            segments = parse_record(piece, fields)
            if any(seg.text for seg in segments):
                texts += [seg.text for seg in segments]
                weights += [seg.weight for seg in segments]
                ends += [i == len(segments) - 1 for i in range(len(segments))]
        else:
            texts.append(piece.data.decode("utf-8", errors="replace"))
            weights.append(1.0)
            ends.append(piece.ends_doc)
    ids = tok.encode_batch(texts)
    weighted = any(w != 1.0 for w in weights)
    # The store's own dtypes (a 0/1 mask, else float16 weights): compact on the way back from a worker.
    mask_dtype = np.uint8 if all(w in (0.0, 1.0) for w in weights) else np.float16
    parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray] = []
    doc_ends: list[int] = []
    n = 0
    eos = np.asarray([tok.eos_id], dtype=np.int64)
    for seq, w, end in zip(ids, weights, ends, strict=True):
        seq = np.append(seq.astype(np.int64), eos) if end else seq.astype(np.int64)
        parts.append(seq)
        if weighted:
            mask_parts.append(np.full(seq.size, w, dtype=mask_dtype))
        n += seq.size
        if end:
            doc_ends.append(n)
    # Already in the store's dtype: a quarter of the bytes an int64 array would take back to the writer.
    dtype = token_dtype(tok.vocab_size)
    tokens = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
    mask = np.concatenate(mask_parts) if weighted else None
    return Encoded(tokens, mask, np.asarray(doc_ends, dtype=np.int64))


# --- worker processes ---------------------------------------------------------------------------
_worker_tok: Tokenizer | None = None
_worker_fields: Fields | None = None


def _worker_init(spec: str, fields: Fields) -> None:
    global _worker_tok, _worker_fields
    single_threaded()  # parallelism comes from the processes; a Rust pool in each would oversubscribe
    _worker_tok, _worker_fields = load_tokenizer(spec), fields


def _worker_encode(task: Task) -> Encoded:
    assert _worker_tok is not None and _worker_fields is not None
    return encode_task(task, _worker_tok, _worker_fields)


def _encoded(tasks: Iterator[Task], spec: str, tok: Tokenizer, fields: Fields, workers: int) -> Iterator[Encoded]:
    """Encoded tasks in input order, with at most ``2 * workers`` tasks in flight."""
    if workers <= 1:
        for task in tasks:
            yield encode_task(task, tok, fields)
        return
    # spawn, not fork: the rich progress bar runs a thread, and forking a threaded process can
    # deadlock on a lock that thread held. ProcessPoolExecutor, not multiprocessing.Pool: a worker
    # that dies (OOM kill, failing initializer) raises BrokenProcessPool instead of being
    # respawned forever.
    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(spec, fields)
    ) as pool:
        pending: deque[Future[Encoded]] = deque()
        try:
            for task in tasks:
                pending.append(pool.submit(_worker_encode, task))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as exc:
            raise HpcllmError(
                f"a tokenizer worker process died ({exc}); out of memory? retry with fewer --workers"
            ) from None
        finally:
            for fut in pending:
                fut.cancel()


def prepare(
    inputs: list[str],
    tokenizer: str,
    output: str | Path,
    *,
    fields: Fields = Fields(),
    workers: int | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    on_start: StartFn | None = None,
) -> PrepareResult:
    """Tokenize ``inputs`` with ``tokenizer`` ('byte' or a tokenizer.json) into a store at ``output``.

    ``on_start(total_bytes)`` is called once the inputs are known, then ``progress(n)`` as bytes
    are read: the CLI drives its progress bar with them.
    """
    t0 = time.perf_counter()
    files = expand_inputs(inputs)
    total = sum(p.stat().st_size for p in files)
    if on_start is not None:
        on_start(total)
    tok = load_tokenizer(tokenizer)
    workers = available_cores() if workers is None else workers
    # Starting a worker costs ~0.5 s (spawn + imports): no more workers than there are tasks.
    workers = min(workers, max(1, -(-total // sources.CHUNK_BYTES)))
    with writing(Path(output)):  # a full disk, a read-only folder, a name too long: one line
        header, removed = _write_store(output, files, progress, tokenizer, tok, fields, workers, overwrite)
    return PrepareResult(Path(output), header, total, time.perf_counter() - t0, removed)


def _write_store(
    output: str | Path,
    files: list[Path],
    progress: ProgressFn | None,
    tokenizer: str,
    tok: Tokenizer,
    fields: Fields,
    workers: int,
    overwrite: bool,
) -> tuple[StoreHeader, list[str]]:
    """Stream the encoded inputs into a new store; its temp folder is removed on any failure.
    Returns the header and the temp folders of earlier, killed builds that the writer removed."""
    writer = StoreWriter(
        output,
        vocab_size=tok.vocab_size,
        eos_id=tok.eos_id,
        tokenizer=tokenizer,
        tokenizer_fingerprint=tok.fingerprint,
        overwrite=overwrite,
    )
    with writer:
        for enc in _encoded(iter_tasks(files, progress), tokenizer, tok, fields, workers):
            writer.write(enc.tokens, enc.mask, enc.doc_ends)
        return writer.commit(), writer.removed
