"""What a model really holds, measured on the live objects: the yardstick of the memory estimate.

``saved_activation_bytes`` records, with ``torch.autograd.graph.saved_tensors_hooks``, every tensor
autograd keeps for backward during one forward pass and loss, and counts each underlying storage
once (a view keeps its whole storage alive; two views of one storage cost it once). Parameters and
their casts (FSDP2's unsharded bf16 parameters, autocast's bf16 weight copies) are left out: they
are the estimate's weight and gathered terms, not activations. ``rank_state_bytes`` sums the local
shards of parameters, gradients and optimizer state on this rank.

Used by tests/test_memory_activations.py, benchmarks/memory_cpu.py and memory_breakdown.py; the training loop never
calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.parallelize import apply_activation_checkpointing, mixed_precision

# Autograd nodes that only view or cast their single input: a saved tensor reached from a
# parameter through these alone is a copy or view of that parameter.
_VIEW_OR_CAST_NODES = frozenset(
    {
        "TBackward0",
        "ToCopyBackward0",
        "ViewBackward0",
        "TransposeBackward0",
        "UnsafeViewBackward0",
        "AliasBackward0",
        "PermuteBackward0",
        "ExpandBackward0",
    }
)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = _local(t).untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _from_parameter(t: torch.Tensor) -> bool:
    """Is ``t`` a parameter, or a chain of views/casts of exactly one parameter?"""
    if isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad):
        return True
    node = t.grad_fn
    for _ in range(8):
        if node is None:
            return False
        name = type(node).__name__
        if name == "AccumulateGrad":
            return True
        if name not in _VIEW_OR_CAST_NODES:
            return False
        inputs = [n for n, _ in node.next_functions if n is not None]
        if len(inputs) != 1:
            return False
        node = inputs[0]
    return False


# The three numerics the engine runs a model with: fp32; BF_16 on one device (autocast over fp32
# weights); BF_16 under FSDP2 (bf16 parameters, so a bf16 residual stream).
AUDIT_MODES = ("fp32", "bf16-autocast", "bf16-fsdp2")


def audit_model(cfg: ModelConfig, mode: str, pcfg: ParallelConfig) -> GPT:
    """``cfg`` on CPU with ``mode``'s numerics and ``pcfg``'s activation checkpointing, initialised.

    Activations do not depend on how parameters are sharded, so the FSDP2 case is built on a world
    of one (the caller's process group) with the engine's mixed-precision policy: the same forward a
    rank of a multi-rank run executes."""
    with torch.device("meta"):
        model = GPT(cfg)
    apply_activation_checkpointing(model, pcfg)
    fsdp = mode == "bf16-fsdp2"
    if fsdp:
        for block in model.blocks:
            fully_shard(block, mp_policy=mixed_precision(pcfg))
        fully_shard(model, mp_policy=mixed_precision(pcfg))
    elif mode == "bf16-autocast":
        model.autocast_dtype = torch.bfloat16
    model.to_empty(device="cpu")
    if not fsdp:
        model.tie_weights()
    init_weights(model, 0)
    model.init_buffers(torch.device("cpu"))
    return model


def saved_activation_bytes(
    forward_and_loss: Callable[[], torch.Tensor],
    model: nn.Module,
    on_storage: Callable[[torch.Tensor, int], None] | None = None,
) -> int:
    """Bytes of the distinct storages autograd saves while ``forward_and_loss()`` runs.

    ``model``'s parameters (as they are at the moment a tensor is saved: FSDP2 swaps in unsharded
    ones during a block's forward) and anything derived from one parameter by views and casts are
    excluded. The returned loss is kept alive until the count is done, as the train step keeps it.
    ``on_storage(tensor, bytes)`` is told of each storage the first time a tensor of it is saved
    (benchmarks/memory_breakdown.py attributes it to the module running then).
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> Any:
        if _from_parameter(t):
            return t
        params = {_storage_key(p)[0] for p in model.parameters()}
        ptr, nbytes = _storage_key(t)
        if ptr not in params and nbytes:
            if ptr not in storages and on_storage is not None:
                on_storage(t, nbytes)
            storages[ptr] = max(storages.get(ptr, 0), nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward_and_loss()
    del loss
    return sum(storages.values())


def rank_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank allocates for parameters, gradients and optimizer state (local shards).

    ``*_storage`` counts each local shard's whole storage (FSDP2 pads shards to equal size);
    ``weights``/``gradients``/``optimizer`` count the shards' own elements (``to_local().nbytes``).
    """
    params = list(model.parameters())
    out = {
        "weights": sum(_local(p).nbytes for p in params),
        "weights_storage": sum(_local(p).untyped_storage().nbytes() for p in params),
        "gradients": sum(_local(p.grad).nbytes for p in params if p.grad is not None),
        "optimizer": 0,
    }
    if optimizer is not None:
        out["optimizer"] = sum(
            _local(v).nbytes
            for state in optimizer.state.values()
            for v in state.values()
            if isinstance(v, torch.Tensor)
        )
    return out


def peak_allocated_bytes(run: Callable[[], object]) -> int:
    """The most bytes of CPU tensors alive at once while ``run()`` runs, counted from its start.

    PyTorch's profiler records every CPU allocation and free with the running total of bytes the
    allocator has handed out since profiling began (``profile_memory``); the largest total is the
    peak of what ``run`` allocated on top of what already existed: on CPU, what
    ``torch.cuda.max_memory_allocated`` is on a GPU. Start ``run`` from nothing (build the model
    inside it) and the figure is the process's tensor peak, comparable to the estimate's
    ``tensor_bytes``.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events: list[tuple[int, int, int]] = []  # (time, bytes allocated (+) or freed (-), running total)
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            events.append((node.start_time_ns, fields.alloc_size, fields.total_allocated))
        stack.extend(node.children)
    if not events:
        return 0
    # The running total is the process's counter: frees after an earlier profile stopped were never
    # subtracted, so the total before this run's first event is its baseline.
    events.sort()
    _, size, total = events[0]
    baseline = total - size
    return max(total for _, _, total in events) - baseline
