"""Run under ``torchrun --nproc-per-node=2`` by test_engine_layout.py: how the model is laid out over ranks.

Asserts, on every rank:
- NO_SHARD is DDP: plain replicated parameters; one step of ``train_step`` with gradient
  accumulation, clipping and different data per rank leaves every rank with the weights one
  process gets from the whole global batch;
- FULL_SHARD's recipe, read off the profiler's FSDP2 labels: the embedding, the last block and the
  head are all-gathered once per step (not again for backward), the other blocks twice; forward
  all-gathers are prefetched; parameters and gradients move by pairwise exchanges, not gloo's
  all-gather and reduce-scatter;
- those exchanges give gloo's own results (all-gather sync and async; reduce-scatter summed and
  averaged);
- FULL_SHARD's gradient sums wait for the end of backward (every group's, none before), and give
  bitwise the gradients of sums each call waits for; a backward into existing gradients waits.
"""

from __future__ import annotations

import collections

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.profiler import ProfilerActivity, profile

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import OptimConfig, ParallelConfig, ScheduleConfig
from hpcllm.engine.distributed import DistEnv, init_distributed, shutdown_distributed
from hpcllm.engine.fsdp_gloo import PairwiseAllGather, PairwiseReduceScatter
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.optim import Scheduler, build_optimizer, param_groups
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.engine.state import TrainState
from hpcllm.engine.train import StepResult, train_step

CFG = ModelConfig.from_name("tiny", seq_len=32)  # tied embeddings
UNTIED = ModelConfig.from_name("tiny", seq_len=32, n_layers=3, tie_embeddings=False)


def micro_batches(seed: int, n: int) -> list[dict[str, torch.Tensor | None]]:
    ids = torch.randint(0, CFG.vocab_size, (n, 2, CFG.seq_len + 1), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": x[:, :-1], "labels": x[:, 1:], "loss_mask": None} for x in ids]


def one_step(
    env: DistEnv, pcfg: ParallelConfig, batches: list[dict[str, torch.Tensor | None]], dp_size: int
) -> tuple[torch.nn.Module, StepResult]:
    model = build_parallel_model(CFG, pcfg, build_mesh(pcfg, env), env.device, seed=5)
    opt = build_optimizer(model, OptimConfig(), lr=1e-2)
    state = TrainState(
        model, opt, Scheduler(opt, base_lr=1e-2, total_steps=2, cfg=ScheduleConfig(name="constant")), iter(batches)
    )  # type: ignore[arg-type]
    result = train_step(state, grad_accum=len(batches), dp_size=dp_size, grad_clip=0.5, device=env.device)
    assert result.grad_norm > 0.5, f"clipping must be active for this check: {result}"
    return model, result


def check_no_shard_is_ddp_and_matches_one_process(env: DistEnv) -> None:
    pcfg = ParallelConfig(precision="FP_32", sharding="NO_SHARD")
    model, result = one_step(env, pcfg, micro_batches(seed=env.rank, n=2), dp_size=env.world_size)
    assert not isinstance(model, FSDPModule) and not any(isinstance(p, DTensor) for p in model.parameters())
    # The reference, in plain PyTorch: one model, every rank's micro-batches, the mean over all tokens.
    everything = [b for r in range(env.world_size) for b in micro_batches(seed=r, n=2)]
    reference = GPT(CFG)
    init_weights(reference, 5)
    cfg = OptimConfig()
    opt = torch.optim.AdamW(param_groups(reference, cfg), lr=1e-2, betas=cfg.betas, eps=cfg.eps)
    tokens = sum(b["labels"].numel() for b in everything)  # type: ignore[union-attr]
    loss = (
        sum(
            F.cross_entropy(reference(b["input_ids"]).flatten(0, 1), b["labels"].flatten(), reduction="sum")
            for b in everything
        )
        / tokens
    )  # type: ignore[union-attr]
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    opt.step()
    # Loss and pre-clip norm pin the normalisation (Adam's first step alone is blind to a scale).
    assert abs(result.loss - loss.item()) < 1e-5 * loss.item(), (result, loss.item())
    assert abs(result.grad_norm - norm.item()) < 1e-4 * norm.item(), (result, norm.item())
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):  # ~lr = 1e-2 per element
        torch.testing.assert_close(
            p, q, rtol=1e-3, atol=1e-4, msg=lambda m, name=name: f"{name} differs from one process: {m}"
        )


def check_full_shard_recipe(env: DistEnv) -> None:
    pcfg = ParallelConfig(precision="FP_32", sharding="FULL_SHARD")
    model = build_parallel_model(UNTIED, pcfg, build_mesh(pcfg, env), env.device, seed=5)
    opt = build_optimizer(model, OptimConfig(), lr=1e-2)
    batches = micro_batches(seed=env.rank, n=2)
    state = TrainState(
        model, opt, Scheduler(opt, base_lr=1e-2, total_steps=4, cfg=ScheduleConfig(name="constant")), iter(batches)
    )  # type: ignore[arg-type]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(state, grad_accum=1, dp_size=env.world_size, grad_clip=1.0, device=env.device)
    names = collections.Counter(e.name for e in prof.events())
    gathers = {
        label[len("FSDP::all_gather (") : -1]: n for label, n in names.items() if label.startswith("FSDP::all_gather (")
    }
    last = f"blocks.{UNTIED.n_layers - 1}"
    expected = {"tok_emb": 1, "head": 1, last: 1, **{f"blocks.{i}": 2 for i in range(UNTIED.n_layers - 1)}}
    assert gathers == expected, gathers
    prefetches = sum(n for label, n in names.items() if label.startswith("FSDP::forward_prefetch"))
    assert prefetches == len(expected) - 1, names  # each group prefetches the next one in forward
    gloo_collectives = [k for k in names if "reduce_scatter" in k or "allgather" in k]
    assert not gloo_collectives, gloo_collectives  # pairwise exchanges instead


def check_pairwise_collectives(env: DistEnv) -> None:
    data = torch.arange(12, dtype=torch.float32) * (env.rank + 1) + 0.1
    for async_op in (False, True):
        ours = torch.empty(24)
        work = PairwiseAllGather()(output_tensor=ours, input_tensor=data, group=dist.group.WORLD, async_op=async_op)
        if async_op:
            assert isinstance(work, dist.Work)  # FSDP2 waits only on a real Work
            work.wait()
        expected = torch.empty(24)
        dist.all_gather(list(expected.chunk(2)), data)
        assert torch.equal(ours, expected), (ours, expected)
    for op in (dist.ReduceOp.SUM, dist.ReduceOp.AVG):
        ours = torch.empty(6)
        PairwiseReduceScatter()(output_tensor=ours, input_tensor=data.clone(), group=dist.group.WORLD, op=op)
        expected = torch.empty(6)
        dist.reduce_scatter(expected, list(data.clone().chunk(2)), op=op)
        assert torch.equal(ours, expected), (op, ours, expected)


def sharded_grads_of_one_backward(env: DistEnv, batch: dict[str, torch.Tensor | None], twice: bool = False):
    """The local gradient shards of FULL_SHARD after one backward of ``batch`` (two if ``twice``)."""
    pcfg = ParallelConfig(precision="FP_32", sharding="FULL_SHARD")
    model = build_parallel_model(UNTIED, pcfg, build_mesh(pcfg, env), env.device, seed=5)
    for _ in range(2 if twice else 1):
        logits = model(batch["input_ids"])
        F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).backward()  # type: ignore[union-attr]
    return [p.grad.to_local().clone() for p in model.parameters()]  # type: ignore[union-attr]


def check_reduce_scatter_waits_for_the_end_of_backward(env: DistEnv) -> None:
    batch = micro_batches(seed=env.rank, n=1)[0]
    waiting: list[tuple[int, bool]] = []  # per end of a deferral: (sums waiting, inside backward)
    real_finish, real_may_defer = PairwiseReduceScatter.finish_pending, PairwiseReduceScatter._may_defer

    def spy(self: PairwiseReduceScatter) -> None:
        waiting.append((len(self._pending), torch._C._current_graph_task_id() >= 0))
        real_finish(self)

    PairwiseReduceScatter.finish_pending = spy  # type: ignore[method-assign]
    try:
        deferred = sharded_grads_of_one_backward(env, batch)
        groups = UNTIED.n_layers + 2  # embedding, blocks, head (the root group holds the norm)
        ends = [w for w in waiting if w[0]]
        assert len(ends) == 1 and ends[0][0] >= groups and ends[0][1], waiting  # one end, all sums, in backward
        waiting.clear()
        sharded_grads_of_one_backward(env, batch, twice=True)
        assert [w for w in waiting if w[0]] == [ends[0]], waiting  # the second backward adds into grads: no wait
    finally:
        PairwiseReduceScatter.finish_pending = real_finish  # type: ignore[method-assign]
    PairwiseReduceScatter._may_defer = lambda self: False  # type: ignore[method-assign]
    try:
        waited = sharded_grads_of_one_backward(env, batch)
    finally:
        PairwiseReduceScatter._may_defer = real_may_defer  # type: ignore[method-assign]
    assert len(deferred) == len(waited)
    for a, b in zip(deferred, waited, strict=True):
        assert torch.equal(a, b), (a - b).abs().max()


if __name__ == "__main__":
    env = init_distributed("cpu")
    torch.manual_seed(0)
    check_pairwise_collectives(env)
    check_reduce_scatter_waits_for_the_end_of_backward(env)
    check_full_shard_recipe(env)
    check_no_shard_is_ddp_and_matches_one_process(env)
    if dist.get_rank() == 0:
        print("probe ok")
    shutdown_distributed()
