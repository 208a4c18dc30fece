"""The allowed values of the config fields the CLI offers as choices: one home, free of pydantic.

``ParallelConfig`` and ``ModelConfig`` type their fields with these; ``hpcllm model info`` builds its
``--sharding``/``--precision``/``--ac``/``--attention`` choices from the same tuples without paying
for pydantic at start-up.
"""

from __future__ import annotations

from typing import Literal, get_args

Sharding = Literal["FULL_SHARD", "HYBRID_SHARD", "NO_SHARD"]
Precision = Literal["BF_16", "FP_16", "FP_32"]
Checkpointing = Literal["none", "full", "selective"]
Attention = Literal["sdpa", "flash", "math"]

SHARDINGS: tuple[str, ...] = get_args(Sharding)
PRECISIONS: tuple[str, ...] = get_args(Precision)
CHECKPOINTINGS: tuple[str, ...] = get_args(Checkpointing)
ATTENTIONS: tuple[str, ...] = get_args(Attention)
