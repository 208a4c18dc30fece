"""What one transformer block saves for backward, op by op, in bytes per token per hidden unit.

    python benchmarks/memory_breakdown.py                         # 2.7b's shape, 2 layers, seq 256, FSDP2 bf16
    python benchmarks/memory_breakdown.py --preset 125m --numerics fp32

Every storage autograd saves (``saved_tensors_hooks``, parameters and their casts excluded, as in
``hpcllm.engine.memory_audit``) is attributed to the innermost module whose forward was running
when it was saved; storages are counted once, where they are first saved. The figure per row is
bytes / (tokens × d_model): Megatron's "bytes per hidden unit" (Korthikanti et al. 2022 give 34 for
a GELU block with flash attention, no dropout-free savings). The estimate's figure for the same
block (``hpcllm.plan.memory.activations.block_bytes``) is printed beside it.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import torch
import torch.distributed as dist
from rich.console import Console
from rich.table import Table

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.losses import cross_entropy_sum
from hpcllm.engine.memory_audit import AUDIT_MODES, audit_model, saved_activation_bytes
from hpcllm.plan.memory.activations import Numerics, block_bytes

console = Console()


def breakdown(cfg: ModelConfig, mode: str, mbs: int, block: int = 1) -> dict[str, int]:
    """Saved bytes of block ``block`` by the module that saved them (one forward + loss on CPU)."""
    pcfg = ParallelConfig(precision="FP_32" if mode == "fp32" else "BF_16")
    model = audit_model(cfg, mode, pcfg)

    stack: list[str] = ["outside"]
    prefix = f"blocks.{block}."
    for name, module in model.named_modules():
        if name.startswith(prefix) or name == prefix[:-1]:
            label = name[len(prefix) :] or "block (residual, RoPE tables)"
            module.register_forward_pre_hook(lambda m, a, label=label: stack.append(label))
            module.register_forward_hook(lambda m, a, o: stack.pop() and None)
    by_label: dict[str, int] = defaultdict(int)

    def attribute(t: torch.Tensor, nbytes: int) -> None:
        if len(stack) > 1:
            by_label[f"{stack[-1]} {str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"] += nbytes

    ids = torch.randint(0, cfg.vocab_size, (mbs, cfg.seq_len))
    saved_activation_bytes(lambda: cross_entropy_sum(model(ids), ids, None), model, attribute)
    return dict(by_label)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="2.7b")
    p.add_argument("--n-layers", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--mbs", type=int, default=1)
    p.add_argument("--numerics", default="bf16-fsdp2", choices=AUDIT_MODES)
    args = p.parse_args()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    cfg = ModelConfig.from_name(args.preset, seq_len=args.seq_len, n_layers=args.n_layers)
    rows = breakdown(cfg, args.numerics, args.mbs)
    unit = args.mbs * args.seq_len * cfg.d_model
    table = Table(title=f"{args.preset} block 1, {args.numerics}, MBS {args.mbs} x seq {args.seq_len}, CPU")
    for col in ("saved by, dtype, shape", "bytes", "bytes / (token x d)"):
        table.add_column(col, justify="left" if col.startswith("saved") else "right")
    for label, nbytes in rows.items():
        table.add_row(label, f"{nbytes:,}", f"{nbytes / unit:.2f}")
    total = sum(rows.values())
    table.add_row("total (measured)", f"{total:,}", f"{total / unit:.2f}", style="bold")
    for device in ("cpu", "cuda"):
        num = Numerics.of("FP_32" if args.numerics == "fp32" else "BF_16", args.numerics == "bf16-fsdp2", device)
        est = block_bytes(cfg, args.mbs, args.seq_len, num)
        table.add_row(f"estimate, {device} kernels", f"{est:,}", f"{est / unit:.2f}")
    console.print(table)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
