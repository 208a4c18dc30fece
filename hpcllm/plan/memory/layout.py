"""Parameters as FSDP2 lays them out: shard sizes with padding, what is all-gathered, and what
autocast copies; torch-free, from ``ModelConfig.parameter_shapes``. The estimate builds on it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from hpcllm.config.model import ModelConfig
from hpcllm.plan.memory.activations import FP32
from hpcllm.plan.memory.tensor_parallel import local_parameter_shapes


def shard_rows(rows: int, group: int, rank: int = 0) -> int:
    """Rows of a tensor's first dimension that ``rank`` holds: torch.chunk's split, as FSDP2's."""
    chunk = math.ceil(rows / group)
    return max(0, min(chunk, rows - rank * chunk))


def padded_shard_numel(shape: tuple[int, ...], group: int) -> int:
    """Elements a rank allocates for its shard: FSDP2 pads every shard to the largest one."""
    return math.ceil(shape[0] / group) * math.prod(shape[1:])


def _is_block(name: str) -> bool:
    return name.startswith("blocks.")


def unsharded_numel(model: ModelConfig, group: int, *, blocks: bool, tp: int = 1) -> int:
    """Elements FSDP2 all-gathers for one block (``blocks``), or those of the rest that stay
    gathered through backward: the root group and the head (engine/parallelize.py keeps both
    gathered from their forward on). An untied token embedding is its own group, resharded after
    forward and not gathered in backward, so it is not counted; a tied one is the head's weight.

    The unsharded parameters are views into the all-gather buffer, whose rows are the padded shards
    of every rank: a 509-row embedding over 2 ranks is gathered as 510 rows.
    """
    layout = param_layout(model, group, tp)
    return layout.block_gathered if blocks else layout.root_gathered


def autocast_copy_numel(model: ModelConfig) -> int:
    """Parameters autocast casts to bf16 and keeps for backward: every linear layer's weight and
    bias and the head (the token embedding when tied); norms and embedding lookups stay fp32."""
    return param_layout(model, 1).autocast_copies


def sharded_param_bytes(model: ModelConfig, group: int, bytes_per_element: int = FP32, tp: int = 1) -> int:
    """One rank's allocated bytes of ``model``'s parameters sharded over ``group`` ranks (after
    ``tp``-way tensor parallelism)."""
    return param_layout(model, group, tp).sharded * bytes_per_element


@dataclass(frozen=True)
class ParamLayout:
    """Element counts of one model's parameters (on one TP rank) sharded over one group size."""

    n_tensors: int
    sharded: int  # one rank's padded shards
    block_gathered: int  # one block, all-gathered
    root_gathered: int  # norm and head (and a tied embedding), all-gathered
    autocast_copies: int  # the weights autocast keeps a half-precision copy of


_LAYOUTS: dict[tuple[str, int, int], ParamLayout] = {}


def param_layout(model: ModelConfig, group: int, tp: int = 1) -> ParamLayout:
    """The counts of ``model`` split ``tp`` ways and sharded over ``group``, computed once per process
    for each distinct triple.

    ``submit`` estimates every point of a grid, ``largest_fitting_mbs`` a dozen sizes per point, and
    walking hundreds of parameter shapes each time was half of a 1,000-point dry run. A grid has a
    handful of distinct models, so the cache stays small.
    """
    key = (model.model_dump_json(), group, tp)
    found = _LAYOUTS.get(key)
    if found is None:
        shapes = local_parameter_shapes(model, tp)

        def gathered(name: str) -> bool:
            return not _is_block(name) and (model.tie_embeddings or not name.startswith("tok_emb."))

        def all_gathered(which: Callable[[str], bool]) -> int:
            return sum(padded_shard_numel(s, group) * group for n, s in shapes.items() if which(n))

        linear = sum(math.prod(s) for n, s in shapes.items() if ".attn." in n or ".mlp." in n or n == "head.weight")
        found = _LAYOUTS[key] = ParamLayout(
            n_tensors=len(shapes),
            sharded=sum(padded_shard_numel(s, group) for s in shapes.values()),
            block_gathered=all_gathered(lambda n: n.startswith("blocks.0.")),
            root_gathered=all_gathered(gathered),
            autocast_copies=linear + (math.prod(shapes["tok_emb.weight"]) if model.tie_embeddings else 0),
        )
    return found
