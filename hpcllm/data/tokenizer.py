"""Tokenizers the data pipeline understands: the byte tokenizer and ``tokenizer.json`` files.

A store records the fingerprint of the tokenizer that wrote it, and a run refuses a store whose
fingerprint differs from its own tokenizer's: token ids from another vocabulary would train
silently on garbage. The fingerprint of a ``tokenizer.json`` is computed from the parsed JSON, so
the engine can check it without importing the ``tokenizers`` library, and reformatting the file
(key order, whitespace) does not change it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hpcllm.errors import ConfigError

BYTE = "byte"
# The special token that separates documents in stores written with a trained BPE tokenizer.
EOS_TOKEN = "<|endoftext|>"


class Tokenizer(Protocol):
    """What prepare and the loader need from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int
    fingerprint: str

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """One int array of token ids per text, without EOS."""
        ...

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` (generation output); special tokens such as EOS are left out."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, EOS = 256: needs no file, so tests and the demo run anywhere."""

    name = BYTE
    vocab_size = 257
    eos_id = 256
    fingerprint = "byte-v1"

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8", errors="replace"), dtype=np.uint8) for t in texts]

    def decode(self, ids: list[int]) -> str:
        # Decoded as a whole: a character's UTF-8 bytes may come from several tokens.
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizer.json`` loaded with the ``tokenizers`` library (never from the Hub)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as _Tok  # lazy: only prepare needs the library

        self.path = Path(path)
        self.name = str(self.path)
        self.fingerprint = fingerprint_of(str(self.path))
        self._tok = _Tok.from_file(str(self.path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eos = self._tok.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ConfigError(
                f"{self.path}: the tokenizer has no {EOS_TOKEN!r} token, which separates documents; "
                f"train one with `hpcllm data train-tokenizer` or add it as a special token"
            )
        self.eos_id = eos

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we do not use: ~20% faster.
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        encs = encode(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(spec: str) -> Tokenizer:
    """``'byte'`` or the path of a ``tokenizer.json``."""
    if spec == BYTE:
        return ByteTokenizer()
    return HFTokenizer(_tokenizer_file(spec))


def fingerprint_of(spec: str) -> str:
    """The fingerprint stores are checked against; cheap and torch/tokenizers-free."""
    if spec == BYTE:
        return ByteTokenizer.fingerprint
    path = _tokenizer_file(spec)
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable tokenizer.json: {exc}") from None
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _tokenizer_file(spec: str) -> Path:
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(
            f"tokenizer: {spec!r} is neither 'byte' nor an existing tokenizer.json file "
            f"(Hub names cannot be downloaded here; train one with `hpcllm data train-tokenizer`)"
        )
    return path


def single_threaded() -> None:
    """Stop the Rust tokenizer from spawning a thread pool inside each worker process."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
