"""What tensor parallelism changes in one rank's memory (hpcllm/engine/tensor_parallel.py's layout).

Under ``parallel.tensor_parallel: tp`` each block's matrices are split over the tp ranks of a
node and FSDP2 shards the pieces over the data-parallel ranks; the embedding, final norm and head
stay whole on every TP rank (sharded over the data-parallel ranks only). Activations: with
sequence-parallel norms the residual stream and everything computed per head or per MLP column is
1/tp per rank, except the inputs of the column-wise matmuls, which are all-gathered over the
sequence and saved whole for their weight gradients: qkv's, and the MLP's, which gate and up share.
The loss and the head are not split.
"""

from __future__ import annotations

import dataclasses

from hpcllm.config.model import ModelConfig
from hpcllm.plan.memory.activations import ActivationBytes, Numerics

# Column-wise (output rows split), row-wise (input columns split); norms are kept whole.
_COLUMN_WISE = (".attn.qkv.", ".mlp.gate.", ".mlp.up.")
_ROW_WISE = (".attn.proj.", ".mlp.down.")


def local_parameter_shapes(model: ModelConfig, tp: int) -> dict[str, tuple[int, ...]]:
    """Each parameter's shape on one TP rank, with the dimension FSDP2 shards first.

    The qkv weight is strided over the TP ranks by rows, so FSDP2 shards its columns
    (engine/tensor_parallel.py ``fsdp_placement``): its local shape is given transposed.
    """
    shapes = model.parameter_shapes()
    if tp == 1:
        return shapes
    local: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if any(k in name for k in _COLUMN_WISE) and len(shape) == 2:
            rows, cols = shape[0] // tp, shape[1]
            local[name] = (cols, rows) if ".attn.qkv." in name else (rows, cols)
        elif any(k in name for k in _ROW_WISE) and len(shape) == 2:
            local[name] = (shape[0], shape[1] // tp)
        else:
            local[name] = shape
    return local


def gathered_inputs_bytes(model: ModelConfig, b: int, t: int, num: Numerics) -> int:
    """The all-gathered inputs one split block saves whole: qkv's and the MLP's (gate's and up's)."""
    return 2 * b * t * model.d_model * num.compute


def local_activations(
    act: ActivationBytes, model: ModelConfig, b: int, t: int, num: Numerics, tp: int
) -> ActivationBytes:
    """``act`` of the unsplit model on one TP rank: a block's tensors 1/tp, except its two matmul
    inputs (qkv's and the MLP's; TP runs under FSDP2, never autocast), gathered and kept whole."""
    if tp == 1:
        return act
    gathered = gathered_inputs_bytes(model, b, t, num)
    return dataclasses.replace(
        act,
        block_full=(act.block_full - gathered) // tp + gathered,
        block_checkpointed=act.block_checkpointed // tp,
    )
