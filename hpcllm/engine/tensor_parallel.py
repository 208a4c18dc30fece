"""Tensor parallelism inside the node: the (dp × tp) device mesh and the per-block TP plan.

Under ``parallel.tensor_parallel: N`` the world is a mesh of ``world / N`` data-parallel ranks by
``N`` tensor-parallel ranks, TP innermost: consecutive ranks, hence the GPUs of one node, form a
TP group, whose activations all-gather and reduce-scatter every block, while FSDP2's less frequent
parameter traffic crosses nodes (torchtitan and Megatron lay it out the same way).

Each block is split Megatron-style with DTensor's ``parallelize_module``:

- attention: the fused qkv projection column-wise, each rank computing its ``H/N`` query heads
  and their key/value heads (RoPE and the attention kernel see only local heads), the output
  projection row-wise;
- MLP: gate and up column-wise, down row-wise;
- norms sequence-parallel: between blocks the residual stream is split over the sequence
  (each rank holds T/N positions), so the norms and residual adds are not repeated N times; the
  column-wise inputs all-gather the sequence, the row-wise outputs reduce-scatter it.

The embedding, the final norm and the LM head stay whole on every TP rank (FSDP2 still shards
them over the data-parallel ranks): they are one block's worth of memory at most, and a tied
embedding would otherwise need both a row- and a column-wise layout of one tensor.
The fused qkv weight stacks all query heads, then all key heads, then all value heads; each TP
rank needs its slice of each of the three, which is DTensor's ``_StridedShard(0, split_factor=3)``
(three equal blocks only when K = H, hence no grouped K/V heads under TP). The global
tensor keeps the layout of an unsharded run, so checkpoints reshard between any TP × DP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.distributed.tensor.placement_types import _StridedShard

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.model import GPT, Block
from hpcllm.errors import ConfigError

TP_DIM = "tp"


def check_model(model_cfg: ModelConfig, tp: int) -> None:
    """Refuse a model whose heads, sequence or MLP cannot be split over ``tp`` ranks."""
    problem = model_cfg.tensor_parallel_problem(tp)
    if problem:
        raise ConfigError(f"parallel.tensor_parallel: {problem}")


def build_tp_mesh(cfg: ParallelConfig, env: DistEnv) -> DeviceMesh:
    """(shard, tp) for FULL_SHARD, (replicate, shard, tp) for HYBRID_SHARD, TP innermost.

    HYBRID_SHARD shards within ``hsdp_shard_size`` data-parallel ranks (default: the
    data-parallel ranks of one node, ranks per node / tp) and replicates across those groups.
    """
    tp = cfg.tensor_parallel
    if env.world_size % tp or env.local_world_size % tp:
        raise ConfigError(
            f"parallel.tensor_parallel: {tp} does not divide the {env.local_world_size} ranks per node "
            f"({env.world_size} in all): tensor parallelism stays inside a node"
        )
    dp = env.world_size // tp
    if cfg.sharding == "FULL_SHARD":
        return init_device_mesh(env.device.type, (dp, tp), mesh_dim_names=("shard", TP_DIM))
    shard = cfg.shard_group_size(dp, env.local_world_size // tp)
    if dp % shard:
        raise ConfigError(
            f"parallel.hsdp_shard_size: {shard} does not divide the data-parallel size {dp} "
            f"(world {env.world_size} / tensor_parallel {tp})"
        )
    return init_device_mesh(env.device.type, (dp // shard, shard, tp), mesh_dim_names=("replicate", "shard", TP_DIM))


def has_tp(mesh: DeviceMesh) -> bool:
    return TP_DIM in (getattr(mesh, "mesh_dim_names", None) or ())


def dp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The data-parallel part of ``mesh`` (the whole mesh without TP)."""
    if not has_tp(mesh):
        return mesh
    names = tuple(n for n in mesh.mesh_dim_names or () if n != TP_DIM)
    return mesh[names[0]] if len(names) == 1 else mesh[names]


def dp_size(mesh: DeviceMesh) -> int:
    """Ranks that see different data: the world divided by the TP degree."""
    return dp_mesh(mesh).size()


def dp_rank(mesh: DeviceMesh) -> int:
    """This rank's index among the data-parallel ranks (TP ranks of one group read the same data)."""
    if not has_tp(mesh):
        return mesh.get_rank()
    coords = mesh.get_coordinate()
    assert coords is not None
    names = list(mesh.mesh_dim_names or ())
    sizes = [mesh.size(i) for i in range(mesh.ndim)]
    index = 0
    for i, name in enumerate(names):
        if name != TP_DIM:
            index = index * sizes[i] + coords[i]
    return index


class FusedQKVColwise(ParallelStyle):
    """Column-wise qkv: each TP rank's rows are its slice of the query, key and value blocks
    (``_StridedShard(0, split_factor=3)``), so the global weight keeps the unsharded layout.

    The matmul runs on the local tensors: DTensor's sharding rules for ``linear`` do not keep a
    strided layout (they gave the first ``1/tp`` of the output columns, not this rank's heads). The
    input, ``T/tp`` positions of the residual stream, is all-gathered over the sequence; its
    gradient, one partial sum per rank, is reduce-scattered back (``Partial`` → ``Shard(1)``).
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        assert isinstance(module, nn.Linear)
        for name, param in list(module.named_parameters()):
            placed = distribute_tensor(param, device_mesh, [_StridedShard(0, split_factor=3)], src_data_rank=None)
            module.register_parameter(name, nn.Parameter(placed))

        def forward(x: torch.Tensor) -> torch.Tensor:
            part = x if isinstance(x, DTensor) else DTensor.from_local(x, device_mesh, [Shard(1)])
            whole = part.redistribute(device_mesh, [Replicate()])
            weight, bias = module.weight, module.bias
            return F.linear(
                whole.to_local(grad_placements=[Partial()]),
                weight.to_local() if isinstance(weight, DTensor) else weight,
                bias.to_local() if isinstance(bias, DTensor) else bias,
            )

        module.forward = forward  # type: ignore[method-assign,assignment]
        return module


def fsdp_placement(param: nn.Parameter) -> Shard | None:
    """FSDP2's shard dimension under TP: the qkv weight's columns (dim 1), because its rows are
    already strided over the TP ranks and DTensor does not describe a second split of the same
    dimension consistently (initialisation and ``full_tensor`` disagreed); others the default."""
    placements = getattr(param, "placements", ())
    if any(isinstance(p, _StridedShard) for p in placements) and param.dim() == 2:
        return Shard(1)
    return None


def apply_tensor_parallel(model: GPT, tp_mesh: DeviceMesh) -> None:
    """Split every block over ``tp_mesh`` (sequence-parallel norms, column/row-wise matmuls) and
    slice the sequence before the first block and gather it after the last."""
    tp = tp_mesh.size()
    blocks = list(model.blocks)
    for block in blocks:
        assert isinstance(block, Block)  # nn.ModuleList yields plain Modules to the type checker
        attn = block.attn
        attn.n_heads //= tp  # the local heads: the forward views its slice of qkv with these
        attn.n_kv_heads //= tp
        plan: dict[str, Any] = {
            "attn_norm": SequenceParallel(use_local_output=True),
            "attn.qkv": FusedQKVColwise(),
            "attn.proj": RowwiseParallel(output_layouts=Shard(1)),
            "mlp_norm": SequenceParallel(use_local_output=True),
            # One all-gather of the sequence for gate and up together (and one copy saved for backward).
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "mlp.up": ColwiseParallel(),
            "mlp.down": RowwiseParallel(output_layouts=Shard(1)),
        }
        if block.mlp.swiglu:
            plan["mlp.gate"] = ColwiseParallel()
        parallelize_module(block, tp_mesh, plan)
    # The residual stream enters whole (the embedding is not split) and leaves as T/tp positions.
    parallelize_module(
        blocks[0],
        tp_mesh,
        PrepareModuleInput(
            input_layouts=(Replicate(), None, None),
            desired_input_layouts=(Shard(1), None, None),
            use_local_output=True,
        ),
    )
    parallelize_module(  # at the final norm, not as the last block's output: FSDP2 warns of a view there
        model.norm,
        tp_mesh,
        PrepareModuleInput(input_layouts=Shard(1), desired_input_layouts=Replicate(), use_local_output=True),
    )


# --- checkpoints ----------------------------------------------------------------------------------
# DCP describes each rank's piece of a tensor as one block (offsets and sizes); the strided qkv
# rows of a TP rank are three blocks, which DCP rejects as overlapping chunks. So the checkpoint
# sees those tensors gathered over the TP ranks (still sharded over the data-parallel ranks), in
# the unsharded layout any TP x DP reads back, and a load copies each rank's rows out of them.


def _is_strided(value: object) -> bool:
    return isinstance(value, DTensor) and any(isinstance(p, _StridedShard) for p in value.placements)


def checkpoint_view(state: Any) -> Any:
    """``state`` (nested dicts and lists of a model/optimizer state dict) with every strided TP
    tensor replaced by a copy gathered over its TP ranks; everything else is the same object."""
    if isinstance(state, dict):
        return {k: checkpoint_view(v) for k, v in state.items()}
    if isinstance(state, list):
        return [checkpoint_view(v) for v in state]
    if _is_strided(state):
        placements = [Replicate() if isinstance(p, _StridedShard) else p for p in state.placements]
        return state.redistribute(state.device_mesh, placements)
    return state


def restore_from_view(state: Any, view: Any) -> None:
    """Copy each strided tensor's rows out of its gathered copy in ``view`` (loaded by DCP), and every
    value that is not a tensor (a learning rate, a step count): DCP loads tensors in place but sets
    other values into the containers it was given, which are the view's, not ``state``'s."""
    if isinstance(state, dict | list):
        keys = state.keys() if isinstance(state, dict) else range(len(state))
        if isinstance(state, list) and len(state) != len(view):
            raise ValueError(f"a list of {len(state)} items cannot take a view of {len(view)}")
        for key in keys:
            if isinstance(state[key], dict | list | torch.Tensor):
                restore_from_view(state[key], view[key])
            else:
                state[key] = view[key]
    elif _is_strided(state):
        tp_dim = next(i for i, p in enumerate(state.placements) if isinstance(p, _StridedShard))
        tp, coords = state.device_mesh.size(tp_dim), state.device_mesh.get_coordinate()
        assert coords is not None
        whole = view.to_local()
        rows = torch.cat([part.chunk(tp)[coords[tp_dim]] for part in whole.chunk(3)])
        state.to_local().copy_(rows)
