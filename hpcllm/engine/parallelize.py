"""The parallelisation recipe: activation checkpointing, compile, FSDP2 per block then root.

One place decides how the model is laid out over ranks; the train loop only calls
``set_gradient_sync`` and never imports FSDP.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.model import GPT, init_weights
from hpcllm.errors import ConfigError


def build_mesh(cfg: ParallelConfig, env: DistEnv) -> DeviceMesh:
    """The data-parallel mesh of ``cfg.sharding``.

    FULL_SHARD: 1-D, every rank holds 1/world of each parameter. HYBRID_SHARD: 2-D
    (replicate × shard), sharded within a group of ``hsdp_shard_size`` ranks (default: ranks per
    node) and replicated across groups. NO_SHARD: 2-D with shard groups of one, i.e. plain
    replication with all-reduced gradients (DDP semantics on the FSDP2 code path).
    """
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
        if cfg.activation_checkpointing == "full":
            block.checkpointed = True
        elif cfg.activation_checkpointing == "selective":
            block.checkpointed = i % cfg.ac_every == 0


def uses_fsdp(cfg: ParallelConfig, mesh: DeviceMesh) -> bool:
    """FSDP2 whenever it does something: more than one rank, or CPU offload.

    On one rank without offload, sharding is the identity and FSDP2's per-block copies and DTensor
    dispatch only cost time (benchmarks/engine_overhead.py: ~15% on a small CPU model), so the
    model stays a plain module and BF_16 becomes autocast, as torchtitan does.
    """
    return cfg.wraps_in_fsdp(mesh.size())


def build_parallel_model(model_cfg: ModelConfig, cfg: ParallelConfig, mesh: DeviceMesh,
                         device: torch.device, seed: int) -> GPT:
    """Build on ``meta``, apply AC and compile, shard, then materialise and initialise.

    No rank ever holds the whole model: after ``fully_shard`` each parameter is a DTensor of which
    ``to_empty`` allocates only the local shard.
    """
    with torch.device("meta"):
        model = GPT(model_cfg)
    apply_activation_checkpointing(model, cfg)
    if cfg.compile:
        for block in model.blocks:
            block.compile_compute()
    if uses_fsdp(cfg, mesh):
        offload: OffloadPolicy = (
            CPUOffloadPolicy(pin_memory=device.type == "cuda") if cfg.cpu_offload else OffloadPolicy()
        )
        mp = mixed_precision(cfg)
        for block in model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp, offload_policy=offload)
        fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
    elif cfg.precision in HALF_DTYPES:
        model.autocast_dtype = HALF_DTYPES[cfg.precision]
    model.to_empty(device="cpu" if cfg.cpu_offload else device)
    if not uses_fsdp(cfg, mesh):
        model.tie_weights()  # FSDP2 registers a shared parameter once; a plain module needs re-tying
    init_weights(model, seed, device)
    model.init_buffers(device)  # RoPE tables live with the compute, even when params are offloaded
    return model


def set_gradient_sync(model: torch.nn.Module, enabled: bool) -> None:
    """Reduce gradients across ranks on this backward or not (gradient accumulation)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
