"""FSDP2 on CPU ranks (gloo): overlap the all-gathers with compute, and faster collectives.

On GPUs FSDP2 overlaps its collectives with compute through CUDA streams. A CPU has no streams,
so there every all-gather and reduce-scatter blocks its rank until the data has arrived: on 2
CPU ranks FULL_SHARD ran at 0.75-0.88x a plain DDP loop, whose bucketed all-reduce runs in gloo's
own thread while backward goes on (benchmarks/engine_ranks.py, docs/performance.md). So:

- Asynchronous all-gathers with explicit prefetching: each parameter group's all-gather is
  issued one group ahead (the next group in forward; FSDP2's default backward prefetch does the
  same once unsharding is asynchronous), and the transfer runs while the current group computes.
  The FSDP2 switch is private (``_set_unshard_async_op``); a torch without it keeps FSDP2's
  default.
- All-gather and reduce-scatter as pairwise exchanges: every rank sends each other rank of the
  group the chunk that rank needs (its own shard, or the peer's slice of the gradient) and
  receives the same from it, the bytes of a ring algorithm without its W-1 sequential steps.
  For one block of the benchmark model (393,472 floats per rank, 2 ranks) gloo's all-gather took
  15.2 ms and its reduce-scatter 22.7 ms, longer even than an all-reduce of the whole buffer
  (17.8 ms); the exchanges took 9.4 and 12.5 ms.
  FSDP2 takes custom collectives from torch 2.9 on (``set_custom_all_gather`` /
  ``set_custom_reduce_scatter``); an older torch keeps gloo's.

Results are unchanged: a reduced chunk is the sum of the ranks' slices in rank order (on 2 ranks
bitwise what gloo gives; tests/engine_layout_probe.py compares both collectives with gloo's).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule


def overlap_collectives(model: torch.nn.Module, forward_order: list[FSDPModule]) -> None:
    """Tune every FSDP2 module of ``model`` for gloo; ``forward_order``: its parameter groups (root
    excluded) in the order forward uses them, each of which prefetches the next."""
    all_gather, reduce_scatter = PairwiseAllGather(), PairwiseReduceScatter()
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        if hasattr(module, "_set_unshard_async_op"):
            module._set_unshard_async_op(True)
        if hasattr(module, "set_custom_all_gather") and hasattr(module, "set_custom_reduce_scatter"):
            module.set_custom_all_gather(all_gather)  # type: ignore[arg-type]
            module.set_custom_reduce_scatter(reduce_scatter)  # type: ignore[arg-type]
    for current, upcoming in itertools.pairwise(forward_order):
        current.set_modules_to_forward_prefetch([upcoming])


def exchange(
    group: dist.ProcessGroup, sends: dict[int, torch.Tensor], receives: dict[int, torch.Tensor]
) -> list[dist.Work]:
    """Post all sends and receives at once (keys: ranks within ``group``); returns their handles."""
    ops = [dist.P2POp(dist.isend, t, dist.get_global_rank(group, r), group) for r, t in sends.items()]
    ops += [dist.P2POp(dist.irecv, t, dist.get_global_rank(group, r), group) for r, t in receives.items()]
    return dist.batch_isend_irecv(ops) if ops else []


class PendingExchange(dist.Work):
    """One handle for the sends and receives of an asynchronous all-gather (FSDP2 waits on it)."""

    def __init__(self, works: list[dist.Work]) -> None:
        super().__init__()
        self.works = works

    def wait(self, timeout: Any = None) -> bool:
        for work in self.works:
            work.wait()
        return True


class PairwiseAllGather:
    """FSDP2's all-gather (the two methods of its private ``AllGather`` interface): this rank's
    shard goes into its slot of the output and to every other rank, whose shards fill the rest."""

    def allocate(self, size: Any, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup, async_op: bool = False
    ) -> dist.Work | None:
        me, slots = group.rank(), output_tensor.view(group.size(), -1)
        slots[me].copy_(input_tensor)
        peers = [r for r in range(group.size()) if r != me]
        works = exchange(group, {r: input_tensor for r in peers}, {r: slots[r] for r in peers})
        if async_op:
            return PendingExchange(works)
        for work in works:
            work.wait()
        return None


class PairwiseReduceScatter:
    """FSDP2's reduce-scatter (its private ``ReduceScatter`` interface): every rank sends each peer
    that peer's slice of the input and sums, in rank order, the slices of its own chunk it gets."""

    def allocate(self, size: Any, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self,
        output_tensor: torch.Tensor,
        input_tensor: torch.Tensor,
        group: dist.ProcessGroup,
        op: Any,
        async_op: bool = False,
    ) -> dist.Work | None:
        average = op == dist.ReduceOp.AVG
        if not (average or op == dist.ReduceOp.SUM):  # FSDP2 asks gloo for AVG, or SUM with its own division
            raise ValueError(f"PairwiseReduceScatter: reduce op {op} is neither SUM nor AVG")
        me, size = group.rank(), group.size()
        chunks = input_tensor.view(size, -1)
        received = torch.empty_like(chunks)
        peers = [r for r in range(size) if r != me]
        for work in exchange(group, {r: chunks[r] for r in peers}, {r: received[r] for r in peers}):
            work.wait()
        received[me].copy_(chunks[me])
        out = output_tensor.view(-1)
        torch.sum(received, dim=0, out=out)
        if average:
            out.div_(size)
        return None
