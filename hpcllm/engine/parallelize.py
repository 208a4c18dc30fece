"""The parallelisation recipe: activation checkpointing, compile, then FSDP2 or DDP.

One place decides how the model is laid out over ranks (``data_parallelism``); the train loop
only calls ``set_gradient_sync`` and never imports FSDP or DDP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed._composable.replicate import DDP, replicate
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import DataParallelism, ParallelConfig
from hpcllm.engine import fsdp_gloo
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.fsdp_gloo import overlap_collectives
from hpcllm.engine.model import GPT, Block, init_weights
from hpcllm.engine.tensor_parallel import (
    apply_tensor_parallel,
    build_tp_mesh,
    check_model,
    dp_mesh,
    fsdp_placement,
    has_tp,
)
from hpcllm.errors import ConfigError


def build_mesh(cfg: ParallelConfig, env: DistEnv) -> DeviceMesh:
    """The data-parallel mesh of ``cfg.sharding``.

    FULL_SHARD: 1-D, every rank holds 1/world of each parameter. HYBRID_SHARD: 2-D
    (replicate × shard), sharded within a group of ``hsdp_shard_size`` ranks (default: ranks per
    node) and replicated across groups. NO_SHARD: 2-D with shard groups of one, which only
    FSDP2's CPU offload uses; otherwise NO_SHARD is DDP over all ranks (``data_parallelism``).
    """
    if cfg.tensor_parallel > 1:
        return build_tp_mesh(cfg, env)  # (dp × tp), TP inside the node
    world = env.world_size
    if cfg.sharding == "FULL_SHARD":
        return init_device_mesh(env.device.type, (world,), mesh_dim_names=("shard",))
    shard = cfg.shard_group_size(world, env.local_world_size)
    if world % shard:
        raise ConfigError(
            f"parallel.hsdp_shard_size: {shard} does not divide the world size {world}; "
            "give a divisor of the number of ranks (default: ranks per node)"
        )
    return init_device_mesh(env.device.type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))


# The compute dtype of each precision; master weights, gradients and optimizer state stay fp32.
HALF_DTYPES = {"BF_16": torch.bfloat16, "FP_16": torch.float16}


def mixed_precision(cfg: ParallelConfig) -> MixedPrecisionPolicy:
    """BF_16 / FP_16: half-precision params and compute, fp32 gradient reduction (fp32 master
    weights stay sharded). FP_16 gradients are loss-scaled (hpcllm/engine/loss_scale.py)."""
    half = HALF_DTYPES.get(cfg.precision)
    if half is not None:
        return MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_activation_checkpointing(model: GPT, cfg: ParallelConfig) -> None:
    """full: every block; selective: blocks 0, k, 2k, … (k = ``ac_every``); none: no block."""
    for i, block in enumerate(model.blocks):
        assert isinstance(block, Block)  # nn.ModuleList yields plain Modules to the type checker
        if cfg.activation_checkpointing == "full":
            block.checkpointed = True
        elif cfg.activation_checkpointing == "selective":
            block.checkpointed = i % cfg.ac_every == 0


def data_parallelism(cfg: ParallelConfig, mesh: DeviceMesh) -> DataParallelism:
    """How the model is laid out over ranks.

    fsdp: FSDP2 for FULL_SHARD and HYBRID_SHARD on more than one rank, and for any CPU offload.
    ddp: NO_SHARD on more than one rank. Replication is what DDP is built for: one bucketed
    all-reduce that starts while backward is still running, no per-block copies or DTensor
    dispatch (torchtitan also uses DDP when nothing is sharded); FSDP2 with shard groups of one
    ran at 0.81-0.91x a plain DDP loop on 2 CPU ranks (docs/performance.md).
    none: one rank without offload, where sharding is the identity and FSDP2's per-block copies
    and DTensor dispatch only cost time (~15% on a small CPU model).
    Without FSDP2, BF_16 / FP_16 is autocast over fp32 weights, as torchtitan does.
    """
    return cfg.data_parallelism(mesh.size())


def describe_layout(cfg: ParallelConfig, mesh: DeviceMesh) -> str:
    """The layout in words for the start-up line: 'FSDP2 FULL_SHARD', 'DDP (NO_SHARD)', 'unsharded'."""
    kind = data_parallelism(cfg, mesh)
    words = {"fsdp": f"FSDP2 {cfg.sharding}", "ddp": "DDP (NO_SHARD)", "none": "unsharded"}[kind]
    if has_tp(mesh):
        words += f", TP {cfg.tensor_parallel} x DP {dp_mesh(mesh).size()}"
    return words


def build_parallel_model(
    model_cfg: ModelConfig,
    cfg: ParallelConfig,
    mesh: DeviceMesh,
    device: torch.device,
    seed: int,
    *,
    trainable: bool = True,
) -> GPT:
    """Build on ``meta``, apply AC and compile, shard, then materialise and initialise.

    Under FSDP2 no rank ever holds the whole model: after ``fully_shard`` each parameter is a
    DTensor of which ``to_empty`` allocates only the local shard. Under DDP each rank holds a
    replica (``trainable=False``, a frozen teacher: no gradients, so no DDP either).
    """
    with torch.device("meta"):
        model = GPT(model_cfg)
    if has_tp(mesh):
        check_model(model_cfg, cfg.tensor_parallel)
        apply_tensor_parallel(model, mesh["tp"])
    apply_activation_checkpointing(model, cfg)
    if cfg.compile:
        for block in model.blocks:
            assert isinstance(block, Block)
            block.compile_compute()
    kind = data_parallelism(cfg, mesh)
    if kind == "fsdp":
        shard_model(model, cfg, mesh, device)
    elif cfg.precision in HALF_DTYPES:
        model.autocast_dtype = HALF_DTYPES[cfg.precision]
    model.to_empty(device="cpu" if cfg.cpu_offload else device)
    if kind != "fsdp":
        model.tie_weights()  # FSDP2 registers a shared parameter once; a plain module needs re-tying
    init_weights(model, seed, device)
    model.init_buffers(device)  # RoPE tables live with the compute, even when params are offloaded
    if kind == "ddp" and trainable:
        replicate(model, device_id=device, gradient_as_bucket_view=True)  # over parameters only: no buffers
    return model


def shard_model(model: GPT, cfg: ParallelConfig, mesh: DeviceMesh, device: torch.device) -> None:
    """FSDP2, one parameter group per block, the untied embedding and LM head each their own.

    As in torchtitan: the last block and the head stay gathered after forward (backward starts
    with them, so resharding would only all-gather them again), and the embedding, whose backward
    needs no weight, is not gathered in backward (``set_unshard_in_backward``, where torch has
    it). A tied embedding is the head's weight: both then stay in the root group.
    On CPU ranks FSDP2's collectives block without CUDA streams; ``fsdp_gloo`` overlaps them.
    """
    offload: OffloadPolicy = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cfg.cpu_offload else OffloadPolicy()
    placement = {"shard_placement_fn": fsdp_placement} if has_tp(mesh) else {}
    mesh = dp_mesh(mesh)  # under TP, FSDP2 shards over the data-parallel ranks only
    common: dict[str, Any] = {"mesh": mesh, "mp_policy": mixed_precision(cfg), "offload_policy": offload, **placement}
    groups: list[FSDPModule] = []  # in forward order
    untied = not model.cfg.tie_embeddings
    if untied:
        tok_emb = fully_shard(model.tok_emb, **common)  # the module itself, now an FSDPModule
        if hasattr(tok_emb, "set_unshard_in_backward"):
            tok_emb.set_unshard_in_backward(False)
        groups.append(tok_emb)
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        groups.append(fully_shard(block, reshard_after_forward=i < last, **common))
    if untied:
        groups.append(fully_shard(model.head, reshard_after_forward=False, **common))
    fully_shard(model, **common)
    if device.type == "cpu" and fsdp_gloo.wanted():
        overlap_collectives(model, groups, hybrid=mesh.ndim > 1)  # mesh: the data-parallel one


def set_gradient_sync(model: torch.nn.Module, enabled: bool) -> None:
    """Reduce gradients across ranks on this backward or not (gradient accumulation): FSDP2 and
    the composable DDP both take the flag; an unsharded model has nothing to reduce."""
    if isinstance(model, (FSDPModule, DDP)):
        model.set_requires_gradient_sync(enabled)
