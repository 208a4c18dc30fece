"""The bytes of one checkpoint: the one place that knows how large a DCP checkpoint of a model is.

``submit``'s storage check and the memory estimate both use it.
"""

from __future__ import annotations

from hpcllm.config.model import ModelConfig

# A checkpoint holds the fp32 master weights (mixed precision computes in bf16 but keeps and saves
# fp32 parameters) and AdamW's two fp32 moments, exp_avg and exp_avg_sq: 4 + 4 + 4 bytes a parameter.
# Measured: the 125m preset (162,220,800 parameters) saves 1857 MiB = 12.00 bytes/parameter
# (docs/performance.md, "Checkpoints").
WEIGHT_BYTES_PER_PARAM = 4
ADAMW_STATE_BYTES_PER_PARAM = 8
# Trainer state, sampler position, per-rank RNG states and DCP metadata: well under a MiB a rank.
CHECKPOINT_OVERHEAD_BYTES_PER_RANK = 1 << 20


def checkpoint_bytes(model: ModelConfig, world_size: int = 1) -> int:
    """Bytes of one complete checkpoint of ``model`` (weights + AdamW state), saved by ``world_size`` ranks."""
    per_param = WEIGHT_BYTES_PER_PARAM + ADAMW_STATE_BYTES_PER_PARAM
    return model.n_params() * per_param + world_size * CHECKPOINT_OVERHEAD_BYTES_PER_RANK
