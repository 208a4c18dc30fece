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
- Reduce-scatters that do not block: under FULL_SHARD each exchange is posted when its group's
  backward ends and summed at the end of backward (``PairwiseReduceScatter``), as DDP's
  all-reduce overlaps backward; this took FULL_SHARD from 0.90-0.93x to a median 0.97x the DDP loop.

Results are unchanged: a reduced chunk is the sum of the ranks' slices in rank order (on 2 ranks
bitwise what gloo gives; tests/engine_layout_probe.py compares both collectives with gloo's).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

# Set to 1: CPU ranks keep FSDP2's own collectives (gloo's all-gather and reduce-scatter, blocking),
# the code path GPUs take; the tests compare both with one rank (tests/test_engine_fsdp.py).
OWN_COLLECTIVES_ENV = "HPCLLM_FSDP_OWN_COLLECTIVES"


def wanted() -> bool:
    """Whether CPU ranks use this module's collectives (the default) rather than FSDP2's own."""
    return os.environ.get(OWN_COLLECTIVES_ENV, "0") != "1"


def overlap_collectives(model: torch.nn.Module, forward_order: list[FSDPModule], *, hybrid: bool) -> None:
    """Tune every FSDP2 module of ``model`` for gloo; ``forward_order``: its parameter groups (root
    excluded) in the order forward uses them, each of which prefetches the next. ``hybrid``: a 2-D
    (HSDP) mesh, whose reduced gradients are all-reduced across replicas at once."""
    all_gather, reduce_scatter = PairwiseAllGather(), PairwiseReduceScatter(model, defer=not hybrid)
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
    that peer's slice of the input and sums, in rank order, the slices of its own chunk it gets.

    ``defer`` (FULL_SHARD's 1-D mesh): in a backward that starts with no sharded gradients (the
    engine's: ``zero_grad(set_to_none)`` after every step, gradients reduced only on the last
    micro-batch), the sums wait for the end of backward, as DDP's all-reduce does: each exchange
    runs in gloo's threads while the earlier blocks' backward goes on, instead of blocking its
    rank (70-90 ms per step of the benchmark's 1.3 s). Nothing reads a reduced gradient before
    then: with an averaging reduction FSDP2 only makes views of the output, and the exchange keeps
    the input buffer alive until it is done. Each call waits for its exchange where something would
    read the output at once: HSDP's all-reduce across replicas (a 2-D mesh), FSDP2's own division
    after a SUM, or its addition into gradients already there.
    """

    def __init__(self, model: torch.nn.Module | None = None, *, defer: bool = False) -> None:
        self._params = list(model.parameters()) if model is not None and defer else []
        self._defer = defer
        self._pending: list[_Reduction] = []
        self._deferring_in: int | None = None  # the backward (autograd graph task) whose sums wait for its end

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
        peers = [r for r in range(size) if r != me]
        received = {r: torch.empty_like(chunks[r]) for r in peers}
        works = exchange(group, {r: chunks[r] for r in peers}, received)
        reduction = _Reduction(works, chunks, received, me, output_tensor.view(-1), average)
        backward = _current_backward()
        if backward != self._deferring_in:  # the first reduction of this backward
            self.finish_pending()  # only left over by a backward that raised before its end
            if backward is not None and average and self._may_defer():
                self._deferring_in = backward
        if self._deferring_in is None or not average:
            reduction.finish()
        else:
            self._pending.append(reduction)
        return None

    def _may_defer(self) -> bool:
        """Whether this backward's sums can wait for its end: no gradient is there yet (FSDP2 would
        add into it right after the call), and autograd takes a callback for the end."""
        if not self._defer or any(p.grad is not None for p in self._params):
            return False
        torch.autograd.Variable._execution_engine.queue_callback(self.finish_pending)
        return True

    def finish_pending(self) -> None:
        """Complete every deferred reduction, in the order they were issued."""
        pending, self._pending, self._deferring_in = self._pending, [], None
        for reduction in pending:
            reduction.finish()


def _current_backward() -> int | None:
    """The id of the autograd backward running on this thread (None outside one, or on a torch
    without the query)."""
    query = getattr(torch._C, "_current_graph_task_id", None)
    task = query() if query is not None else -1
    return None if task < 0 else task


@dataclass
class _Reduction:
    """One reduce-scatter in flight: its transfers, and what the sum needs once they are done."""

    works: list[dist.Work]
    chunks: torch.Tensor  # the input, one row per rank (kept alive until the sends are done)
    received: dict[int, torch.Tensor]  # peer rank -> its slice of this rank's chunk
    me: int
    out: torch.Tensor
    average: bool

    def finish(self) -> None:
        for work in self.works:
            work.wait()
        parts = [self.chunks[r] if r == self.me else self.received[r] for r in range(self.chunks.shape[0])]
        if len(parts) == 1:
            self.out.copy_(parts[0])
        else:
            torch.add(parts[0], parts[1], out=self.out)  # in rank order: bitwise gloo's sum on 2 ranks
            for part in parts[2:]:
                self.out.add_(part)
        if self.average:
            self.out.div_(len(parts))
