"""Run under ``torchrun --nproc-per-node=2`` by test_memory_state.py: the estimate against live shards.

For each sharding, on every rank, after a real forward, backward and AdamW step of the engine's
FSDP2 model: the bytes of this rank's parameter shards, gradient shards and optimizer state equal
the estimate's per-rank figures exactly, and the bf16 parameters unsharded when backward starts
(the head's) are the last block's, the final norm's and the head's (the untied embedding is
resharded). The model has an odd vocabulary (509 rows) so that FSDP2's uneven split and padding
are exercised.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import OptimConfig, ParallelConfig
from hpcllm.engine.distributed import init_distributed, shutdown_distributed
from hpcllm.engine.losses import cross_entropy_sum
from hpcllm.engine.memory_audit import rank_state_bytes
from hpcllm.engine.optim import build_optimizer
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.plan.memory import MemorySpec, estimate_memory
from hpcllm.plan.memory.layout import shard_rows, unsharded_numel

CASES = [("FULL_SHARD", None), ("HYBRID_SHARD", None), ("HYBRID_SHARD", 1), ("NO_SHARD", None)]


def local_shard_numel(shape: tuple[int, ...], group: int, rank: int) -> int:
    """Elements of ``rank``'s shard itself (its DTensor's ``to_local()``), padding excluded: what the
    engine's ranks measure, against the estimate's padded shards."""
    return shard_rows(shape[0], group, rank) * math.prod(shape[1:])


def check(sharding: str, hsdp: int | None, rank: int, world: int) -> None:
    cfg = ModelConfig.from_name("tiny", seq_len=32, vocab_size=509, tie_embeddings=False)
    pcfg = ParallelConfig(precision="BF_16", sharding=sharding, hsdp_shard_size=hsdp)
    env = init_distributed("cpu")
    model = build_parallel_model(cfg, pcfg, build_mesh(pcfg, env), env.device, seed=1)
    optimizer = build_optimizer(model, OptimConfig(), lr=1e-3)

    gathered: dict[str, int] = {}

    def unsharded_bytes(params: object) -> int:
        """Bytes of the parameters that are gathered now (plain tensors; sharded ones are DTensors)."""
        return sum(p.untyped_storage().nbytes() for p in params if not hasattr(p, "to_local"))  # type: ignore[attr-defined]

    def at_backward_start(module: torch.nn.Module, grad_output: object) -> None:
        """The head's backward comes first, with the logits' gradient: the step's peak."""
        last = model.blocks[-1]
        gathered["block"] = unsharded_bytes(last.parameters())
        gathered["root"] = unsharded_bytes(p for n, p in model.named_parameters() if not n.startswith("blocks."))
        gathered["dtype"] = {p.dtype for p in last.parameters()} == {torch.bfloat16}

    model.head.register_full_backward_pre_hook(at_backward_start)
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    cross_entropy_sum(model(ids), ids, None).backward()
    optimizer.step()

    held = rank_state_bytes(model, optimizer)
    est = estimate_memory(MemorySpec(cfg, pcfg, 2, world_size=world, ranks_per_node=world))
    group = pcfg.shard_group_size(world, world)
    shapes = cfg.parameter_shapes()
    local = 4 * sum(local_shard_numel(s, group, rank % group) for s in shapes.values())
    label = f"{sharding}/{hsdp} rank {rank}"
    # Every rank allocates padded shards (the estimate); its shard proper is the chunk it owns.
    assert held["weights_storage"] == est.term("weights").bytes, (label, held, est.term("weights"))
    assert held["weights"] == local, (label, held["weights"], local)
    assert held["gradients"] == local, (label, held["gradients"], local)
    assert held["optimizer"] == 2 * local + 4 * len(shapes), (label, held["optimizer"])
    if rank % group == 0:  # the first shard is the largest: the estimate is this rank's figure exactly
        assert held["gradients"] == est.term("gradients").bytes, label
        assert held["optimizer"] == est.term("optimizer").bytes, label

    # Unsharded parameters are views of the all-gather buffer: every rank's padded shard.
    def gathered_numel(s: tuple[int, ...]) -> int:
        return math.ceil(s[0] / group) * group * math.prod(s[1:])

    block = sum(gathered_numel(s) for n, s in shapes.items() if n.startswith("blocks.0."))
    # The untied embedding is resharded after forward and not gathered in backward; the norm and head stay.
    root = sum(gathered_numel(s) for n, s in shapes.items() if not n.startswith(("blocks.", "tok_emb.")))
    assert block == unsharded_numel(cfg, group, blocks=True) and root == unsharded_numel(cfg, group, blocks=False)
    if pcfg.data_parallelism(world) == "ddp":  # NO_SHARD: fp32 replicas under autocast, nothing gathered
        assert gathered["dtype"] is False and est.term("gathered").bytes > 0, (label, gathered)
        return
    assert gathered == {"block": 2 * block, "root": 2 * root, "dtype": True}, (label, gathered, block, root)


if __name__ == "__main__":
    env = init_distributed("cpu")
    for sharding, hsdp in CASES:
        check(sharding, hsdp, env.rank, env.world_size)
        dist.barrier()
    if env.rank == 0:
        print("memory state ok")
    shutdown_distributed()
