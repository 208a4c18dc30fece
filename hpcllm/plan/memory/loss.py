"""The cross-entropy's memory, torch-free: how the engine chunks it and what that costs per rank.

One source of truth for the chunk size: ``hpcllm.engine.losses`` computes the fp32 cross-entropy
``ce_chunk_rows`` tokens at a time, and the estimate sizes the loss's working buffers with the same
figure. Symbols as in ``hpcllm.plan.memory.activations``: N tokens of a micro-batch, V vocabulary, c the
logits' element size.
"""

from __future__ import annotations

from hpcllm.config.model import ModelConfig

FP32 = 4

# Elements of the (tokens x vocabulary) logits whose fp32 loss is computed at once: 2^25, 128 MiB
# per fp32 buffer (at a 50,304 vocabulary, 667 tokens). Large enough that the per-chunk overhead is
# nothing on a GPU, small enough that the chunk's buffers are a fraction of a GiB.
CE_CHUNK_ELEMENTS = 1 << 25


def ce_chunk_rows(vocab_size: int) -> int:
    """Tokens per cross-entropy chunk."""
    return max(1, CE_CHUNK_ELEMENTS // vocab_size)


def ce_saved_bytes(cfg: ModelConfig, n: int, compute: int) -> int:
    """What the loss keeps for backward: the logits' gradient, computed in forward (N x V x c, the
    logits' own size; the train step frees the logits once the loss has run), no fp32 copy."""
    return n * cfg.vocab_size * compute


def ce_working_bytes(cfg: ModelConfig, n: int, compute: int) -> int:
    """The loss's working memory while it runs (in forward), beyond the gradient it keeps: one
    chunk's fp32 buffers at once (its log-softmax output, that output's gradient and the gradient of
    its input: 3 x rows x V x 4) and, when there are several chunks, the logits it reads beside the
    kept gradient it fills chunk by chunk (N x V x c). A single chunk's own gradient is the kept one:
    it exists only once the fp32 buffers are going, so the logits and those buffers are the peak."""
    rows = min(n, ce_chunk_rows(cfg.vocab_size))
    logits = n * cfg.vocab_size * compute if n > rows else 0
    return logits + 3 * rows * cfg.vocab_size * FP32
