"""``hpcllm data train-tokenizer``: a byte-level BPE trained offline with the ``tokenizers`` library.

Byte-level (GPT-2 style): any input is representable without an unknown token, and the trained
``tokenizer.json`` is a plain file that compute nodes load without network access. The document
separator ``<|endoftext|>`` is added as a special token; ``prepare`` requires it.
"""

from __future__ import annotations

from pathlib import Path

from hpcllm.data.sources import Fields, ProgressFn, expand_inputs, iter_texts
from hpcllm.data.tokenizer import EOS_TOKEN
from hpcllm.errors import ConfigError
from hpcllm.fsutil import atomic_write_text

MIN_VOCAB = 256 + 1  # the byte alphabet plus EOS


def train_bpe(
    inputs: list[str],
    vocab_size: int,
    output: str | Path,
    *,
    fields: Fields = Fields(),
    min_frequency: int = 2,
    progress: ProgressFn | None = None,
) -> Path:
    """Train on the texts of ``inputs`` (streamed) and write ``tokenizer.json`` atomically.

    ``output`` is a file path or a directory (then ``<dir>/tokenizer.json``). Returns the file.
    """
    if vocab_size < MIN_VOCAB:
        raise ConfigError(f"--vocab-size: {vocab_size}; a byte-level BPE needs at least {MIN_VOCAB}")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    files = expand_inputs(inputs)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # the CLI shows its own bar, by input bytes
    )
    tok.train_from_iterator(iter_texts(files, fields, progress), trainer=trainer)
    out = Path(output)
    if out.is_dir() or out.suffix != ".json":
        out = out / "tokenizer.json"
    atomic_write_text(out, tok.to_str(pretty=True))
    return out
