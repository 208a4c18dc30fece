"""The token store: a directory of flat, memory-mapped arrays plus a JSON header.

    data/<name>/
        header.json       format version, dtype, vocab size, tokenizer fingerprint, counts (written last)
        tokens.bin        every document's tokens followed by EOS, concatenated; uint16 or uint32
        doc_offsets.npy   int64, n_docs + 1 entries: document i is tokens[off[i]:off[i+1]] (EOS included)
        loss_mask.bin     optional, one loss weight per token: uint8 0/1 (a mask: prompts of instruction
                          data), or float16 in [0, 1] (weights; format version 2)

Why this shape: opening is O(1) (memmap plus a header read, no index to unpickle or scan), the arrays are readable by
any numpy without hpcllm, and a store is built in a sibling temp directory that is renamed into place only when every
file is complete, so a crash never leaves a directory that looks like a finished store. docs/data.md describes the
format for other tools.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from hpcllm import __version__, runfiles
from hpcllm.data import staging
from hpcllm.errors import ConfigError
from hpcllm.fsutil import atomic_write_json

FORMAT = "hpcllm-token-store"
# Version 2 added float16 loss weights. A store is written with the lowest version that describes
# it (``StoreHeader.format_version``), so a store without fractional weights stays readable by
# hpcllm versions that know only version 1.
READABLE_VERSIONS = (1, 2)
MASK_DTYPES = ("uint8", "float16")  # a 0/1 mask, or weights in [0, 1]
HEADER = "header.json"
TOKENS = "tokens.bin"
DOC_OFFSETS = "doc_offsets.npy"
LOSS_MASK = "loss_mask.bin"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves disk and page-cache use for every vocabulary below 65,536 ids."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


@dataclass(frozen=True)
class StoreHeader:
    dtype: str
    vocab_size: int
    eos_id: int
    tokenizer: str
    tokenizer_fingerprint: str
    n_tokens: int
    n_docs: int
    has_loss_mask: bool
    loss_mask_dtype: str = "uint8"  # version 1 headers lack it: their masks are uint8 0/1

    @property
    def format_version(self) -> int:
        return 2 if self.has_loss_mask and self.loss_mask_dtype == "float16" else 1

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": self.format_version, "hpcllm_version": __version__, **self.__dict__}

    @classmethod
    def read(cls, path: Path) -> StoreHeader:
        file = path / HEADER
        try:  # bounded, never blocking, a JSON object (hpcllm.runfiles)
            raw = runfiles.read_json_object(file, limit=1 << 20)
        except runfiles.MissingFile:
            hint = " (an interrupted `hpcllm data prepare`?)" if path.is_dir() else ""
            raise ConfigError(f"{path}: not a token store: {HEADER} is missing{hint}") from None
        except runfiles.RunFileProblem as exc:
            raise ConfigError(f"unreadable store header: {exc}") from None
        if raw.get("format") != FORMAT or raw.get("format_version") not in READABLE_VERSIONS:
            raise ConfigError(
                f"{file}: format {raw.get('format')!r} version {raw.get('format_version')!r}; this "
                f"hpcllm reads {FORMAT!r} versions {', '.join(map(str, READABLE_VERSIONS))}: "
                "re-run `hpcllm data prepare` (or update hpcllm)"
            )
        raw.setdefault("loss_mask_dtype", "uint8")
        fields: dict[str, Any] = {k: raw.get(k) for k in cls.__dataclass_fields__}
        missing = [k for k, v in fields.items() if v is None]
        if missing:
            raise ConfigError(f"{file}: header lacks {', '.join(missing)}")
        wrong = [
            k for k in ("vocab_size", "eos_id", "n_tokens", "n_docs") if type(fields[k]) is not int or fields[k] < 0
        ]
        if wrong:
            raise ConfigError(f"{file}: {wrong[0]}: {fields[wrong[0]]!r}; allowed: a whole number >= 0")
        if fields["dtype"] not in ("uint16", "uint32"):
            raise ConfigError(f"{file}: dtype: {fields['dtype']!r}; allowed: uint16, uint32")
        if fields["loss_mask_dtype"] not in MASK_DTYPES:
            raise ConfigError(
                f"{file}: loss_mask_dtype: {fields['loss_mask_dtype']!r}; allowed: {', '.join(MASK_DTYPES)}"
            )
        return cls(**fields)


class TokenStore:
    """A read-only, memory-mapped store. Opening checks the header against the files."""

    def __init__(
        self, path: Path, header: StoreHeader, tokens: np.ndarray, doc_offsets: np.ndarray, loss_mask: np.ndarray | None
    ) -> None:
        self.path = path
        self.header = header
        self.tokens = tokens
        self.doc_offsets = doc_offsets
        self.loss_mask = loss_mask

    @classmethod
    def open(cls, path: str | Path, tokenizer_fingerprint: str | None = None) -> TokenStore:
        """Map the store at ``path``; if given, its tokenizer must have ``tokenizer_fingerprint``."""
        path = Path(path)
        h = StoreHeader.read(path)
        if tokenizer_fingerprint is not None and h.tokenizer_fingerprint != tokenizer_fingerprint:
            raise ConfigError(
                f"{path}: written with tokenizer {h.tokenizer!r} (fingerprint {h.tokenizer_fingerprint}), "
                f"but the run's tokenizer has fingerprint {tokenizer_fingerprint}: set data.tokenizer "
                f"to the store's tokenizer or re-run `hpcllm data prepare` with the run's"
            )
        dtype = np.dtype(h.dtype)
        if dtype != token_dtype(h.vocab_size):
            raise ConfigError(f"{path}: dtype {h.dtype} does not fit vocab_size {h.vocab_size}")
        _check_size(path / TOKENS, h.n_tokens * dtype.itemsize, f"{h.n_tokens} {h.dtype} tokens")
        tokens = _memmap(path / TOKENS, dtype, h.n_tokens)
        try:  # checked first: np.load would block on a FIFO
            offsets = np.load(_check_size(path / DOC_OFFSETS, None, "a document index"), mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file (typer: a bare "Aborted.")
            raise ConfigError(f"{path / DOC_OFFSETS}: unreadable document index: {exc}") from None
        if offsets.shape != (h.n_docs + 1,) or offsets.dtype != np.int64:
            raise ConfigError(
                f"{path / DOC_OFFSETS}: shape {offsets.shape} {offsets.dtype}, header says ({h.n_docs + 1},) int64"
            )
        if h.n_docs and (int(offsets[0]) != 0 or int(offsets[-1]) != h.n_tokens):
            raise ConfigError(
                f"{path / DOC_OFFSETS}: spans [{int(offsets[0])}, {int(offsets[-1])}), header says [0, {h.n_tokens})"
            )
        mask = None
        if h.has_loss_mask:
            mask_dtype = np.dtype(h.loss_mask_dtype)
            size, what = h.n_tokens * mask_dtype.itemsize, f"{h.n_tokens} {h.loss_mask_dtype} loss weights"
            mask = _memmap(_check_size(path / LOSS_MASK, size, what), mask_dtype, h.n_tokens)
        return cls(path, h, tokens, offsets, mask)

    @property
    def n_tokens(self) -> int:
        return self.header.n_tokens

    @property
    def n_docs(self) -> int:
        return self.header.n_docs

    def n_windows(self, seq_len: int) -> int:
        """Windows of ``seq_len + 1`` tokens starting every ``seq_len`` tokens (they share one token)."""
        return max(0, (self.n_tokens - 1) // seq_len)

    def windows(self, idx: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Tokens (n, seq_len + 1) int64 of windows ``idx``, and the loss weights of their labels
        (n, seq_len), in the store's mask dtype."""
        rows = np.asarray(idx, dtype=np.int64)[:, None] * seq_len + np.arange(seq_len + 1)
        tokens = self.tokens[rows].astype(np.int64)
        mask = None if self.loss_mask is None else self.loss_mask[rows[:, 1:]]
        return tokens, mask

    def verify(self, progress: Callable[[int], None] | None = None, chunk: int = 1 << 24) -> None:
        """Full scan (O(n), unlike ``open``): ids < vocab_size, every document ends with EOS and is
        non-empty, mask values are 0/1 (uint8) or in [0, 1] (float16 weights). ``progress(n)`` gets
        the tokens checked so far, per chunk."""
        h = self.header
        off = self.doc_offsets
        for start in range(0, h.n_docs, chunk):
            part = np.asarray(off[start : start + chunk + 1])
            if (np.diff(part) <= 0).any():
                bad = start + int(np.argmax(np.diff(part) <= 0))
                raise ConfigError(f"{self.path / DOC_OFFSETS}: document {bad} is empty or out of order")
            ends = part[1:] - 1
            if (self.tokens[ends] != h.eos_id).any():
                bad = start + int(np.argmax(self.tokens[ends] != h.eos_id))
                raise ConfigError(f"{self.path / TOKENS}: document {bad} does not end with EOS ({h.eos_id})")
        for start in range(0, h.n_tokens, chunk):
            block = np.asarray(self.tokens[start : start + chunk])
            if int(block.max()) >= h.vocab_size:
                at = start + int(np.argmax(block >= h.vocab_size))
                raise ConfigError(
                    f"{self.path / TOKENS}: token {at} is {int(self.tokens[at])}, not below vocab_size {h.vocab_size}"
                )
            if self.loss_mask is not None and not _valid_weights(np.asarray(self.loss_mask[start : start + chunk])):
                allowed = "0 and 1" if self.loss_mask.dtype == np.uint8 else "weights in [0, 1]"
                raise ConfigError(f"{self.path / LOSS_MASK}: values other than {allowed} near token {start}")
            if progress is not None:
                progress(block.size)

    def document(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[int(self.doc_offsets[i]) : int(self.doc_offsets[i + 1])])


def _valid_weights(w: np.ndarray) -> bool:
    """0/1 for a uint8 mask; finite and in [0, 1] for float weights (NaN fails both comparisons)."""
    if w.dtype == np.uint8:
        return w.size == 0 or int(w.max()) <= 1
    return bool(((w >= 0) & (w <= 1)).all())


def is_binary_mask(w: np.ndarray) -> bool:
    """Weights that a uint8 0/1 mask holds exactly."""
    return bool(((w == 0) | (w == 1)).all())


def _memmap(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    if n == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def _check_size(path: Path, expected: int | None, what: str) -> Path:
    try:  # a regular file of ``expected`` bytes (None: any), never opened in a way that blocks (a FIFO)
        size = runfiles.regular_size(path)
    except runfiles.RunFileProblem as exc:
        why = f"missing; the header promises {what}" if isinstance(exc, runfiles.MissingFile) else exc.reason
        raise ConfigError(f"{path}: {why}") from None
    if expected is not None and size != expected:
        raise ConfigError(f"{path}: {size} bytes, the header promises {what} = {expected} bytes")
    return path


class StoreWriter:
    """Appends documents to a new store in a temp directory; ``commit()`` renames it into place.

    Memory stays bounded: tokens, mask and document end offsets stream to temp files, and the
    ``.npy`` index is assembled from them at the end. The loss mask is only materialised once a
    document with a weight other than 1 arrives (earlier tokens get 1), so plain-text stores have
    none. It is a uint8 0/1 mask until the first fractional weight, which widens it to float16.
    """

    def __init__(
        self,
        output: str | Path,
        *,
        vocab_size: int,
        eos_id: int,
        tokenizer: str,
        tokenizer_fingerprint: str,
        overwrite: bool = False,
    ) -> None:
        self.output = Path(output)
        if self.output.exists() and not overwrite:
            raise ConfigError(f"{self.output}: already exists; pass --overwrite to replace it")
        if (
            self.output.exists()
            and not (self.output / HEADER).is_file()
            and (not self.output.is_dir() or any(self.output.iterdir()))
        ):
            raise ConfigError(f"{self.output}: exists and is not a token store; refusing to replace it")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.removed = staging.remove_abandoned(self.output)  # what killed builds of this output left
        self._claim = staging.Claim.new(self.output)  # locked until commit or abort: a rerun leaves it alone
        self.tmp = self._claim.folder
        self.dtype = token_dtype(vocab_size)
        self.vocab_size, self.eos_id = vocab_size, eos_id
        self.tokenizer, self.fingerprint = tokenizer, tokenizer_fingerprint
        self.n_tokens = 0
        self.n_docs = 0
        self._last_end = 0  # where the last finished document ends
        # The writer's files stay open across write() calls; commit() or abort() closes them.
        self._tokens: BinaryIO = open(self.tmp / TOKENS, "wb")  # noqa: SIM115
        self._ends: BinaryIO = open(self.tmp / "doc_ends.tmp", "wb")  # noqa: SIM115
        self._mask: BinaryIO | None = None
        self._mask_dtype: np.dtype[Any] = np.dtype(np.uint8)

    def add(self, docs: list[np.ndarray], masks: list[np.ndarray] | None = None) -> None:
        """Append whole documents (token ids incl. their EOS); ``masks``: per-token loss weights in
        [0, 1] (0/1 for a plain mask), None = all 1."""
        if not docs:
            return
        ends = np.cumsum([d.size for d in docs])
        self.write(np.concatenate(docs), None if masks is None else np.concatenate(masks), ends)

    def write(self, tokens: np.ndarray, mask: np.ndarray | None, doc_ends: np.ndarray) -> None:
        """Append a flat run of tokens; ``doc_ends``: positions in it where documents end (exclusive).

        A document may span several calls (large .txt files arrive in pieces): it ends at the call
        whose ``doc_ends`` names its end. ``mask``: loss weights in [0, 1]; None means "train on
        every token" (weight 1).
        """
        if tokens.size and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        ends = np.asarray(doc_ends, dtype=np.int64) + self.n_tokens
        bounds = np.concatenate([[self._last_end], ends, [self.n_tokens + tokens.size]])
        if (np.diff(bounds[:-1]) <= 0).any() or bounds[-2] > bounds[-1]:
            raise ValueError("document ends must increase, leave no empty document, and lie in the run")
        if mask is not None and mask.size != tokens.size:
            raise ValueError(f"{mask.size} mask entries for {tokens.size} tokens")
        if mask is not None and not ((mask >= 0) & (mask <= 1)).all():
            raise ValueError("loss weights must lie in [0, 1]")
        if mask is not None and self._mask is None:
            self._start_mask()
        if mask is not None and self._mask_dtype == np.uint8 and not is_binary_mask(mask):
            self._widen_mask()
        if self._mask is not None:
            m = mask if mask is not None else np.ones(tokens.size, self._mask_dtype)
            self._mask.write(m.astype(self._mask_dtype).tobytes())
        self._tokens.write(tokens.astype(self.dtype).tobytes())
        self._ends.write(ends.tobytes())
        self.n_tokens += int(tokens.size)
        self.n_docs += int(ends.size)
        if ends.size:
            self._last_end = int(ends[-1])

    def _start_mask(self) -> None:
        self._mask = open(self.tmp / LOSS_MASK, "wb")  # noqa: SIM115 - the writer's, like _tokens
        ones = np.ones(1 << 20, dtype=np.uint8).tobytes()
        left = self.n_tokens
        while left:
            n = min(left, len(ones))
            self._mask.write(ones[:n])
            left -= n

    def _widen_mask(self) -> None:
        """Rewrite the 0/1 mask written so far as float16: the first fractional weight has arrived."""
        assert self._mask is not None
        self._mask.close()
        narrow, wide = self.tmp / LOSS_MASK, self.tmp / f"{LOSS_MASK}.float16"
        with open(narrow, "rb") as src, open(wide, "wb") as dst:
            while buf := src.read(1 << 22):
                dst.write(np.frombuffer(buf, dtype=np.uint8).astype(np.float16).tobytes())
        os.replace(wide, narrow)
        self._mask = open(narrow, "ab")  # noqa: SIM115 - the writer's, like _tokens
        self._mask_dtype = np.dtype(np.float16)

    def commit(self) -> StoreHeader:
        """Finish every file, write the header last, and rename the directory into place."""
        if self.n_docs == 0:
            raise ConfigError(f"{self.output}: the input holds no documents; nothing to store")
        unterminated = self.n_tokens - self._last_end
        if unterminated:
            raise ValueError(f"{unterminated} tokens after the last document end")
        for fh in (self._tokens, self._ends, self._mask):
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
        self._write_offsets()
        header = StoreHeader(
            dtype=self.dtype.name,
            vocab_size=self.vocab_size,
            eos_id=self.eos_id,
            tokenizer=self.tokenizer,
            tokenizer_fingerprint=self.fingerprint,
            n_tokens=self.n_tokens,
            n_docs=self.n_docs,
            has_loss_mask=self._mask is not None,
            loss_mask_dtype=self._mask_dtype.name,
        )
        atomic_write_json(self.tmp / HEADER, header.to_json())
        (self.tmp / HEADER).chmod(self.tmp.stat().st_mode & 0o666)  # mkstemp made it 0600
        self._claim.release()  # the lock file is no part of the store
        if self.output.exists():  # only reachable with overwrite=True
            old = self.output.with_name(f".{self.output.name}.old-{os.getpid()}")
            os.replace(self.output, old)
            os.replace(self.tmp, self.output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.output)
        return header

    def _write_offsets(self) -> None:
        ends_file = self.tmp / "doc_ends.tmp"
        out = np.lib.format.open_memmap(self.tmp / DOC_OFFSETS, mode="w+", dtype=np.int64, shape=(self.n_docs + 1,))
        out[0] = 0
        i = 1
        with open(ends_file, "rb") as fh:
            while buf := fh.read(8 << 22):
                ends = np.frombuffer(buf, dtype=np.int64)
                out[i : i + ends.size] = ends
                i += ends.size
        out.flush()
        del out
        ends_file.unlink()

    def abort(self) -> None:
        for fh in (self._tokens, self._ends, self._mask):
            if fh is not None and not fh.closed:
                with contextlib.suppress(OSError):  # a full disk fails the flush: the folder goes anyway
                    fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._claim.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()
