"""What a rank's memory holds besides tensors: stated, sourced assumptions, one line each.

None of these is measured here (no GPU has been lent to this work; ``benchmarks/memory_gpu.py`` with
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` measures them). They are shown as their own
lines of the breakdown (``hpcllm model info``), never folded into another term:

- CUDA context: the driver's context and the kernel images PyTorch, cuBLAS and NCCL load. With lazy
  module loading (``CUDA_MODULE_LOADING=LAZY``, PyTorch's default since CUDA 11.7) an idle PyTorch
  process holds 0.3-0.5 GiB on an A100 or H100 (``nvidia-smi``; PyTorch's "CUDA semantics" notes);
  taken as 0.5 GiB.
- communication buffers: NCCL's per-channel buffers (``NCCL_BUFFSIZE``, 4 MiB per channel and peer,
  up to 32 channels on NVLink/InfiniBand, for the ring and tree of each communicator FSDP2 opens)
  and cuBLAS's workspaces (``CUBLAS_WORKSPACE_CONFIG``, ~32 MiB per stream); taken as 0.5 GiB.
- allocator fragmentation: the caching allocator reserves more than is allocated (blocks split
  and cached for reuse); 10 % of the tensor peak, the order PyTorch's reserved/allocated ratio has in
  long training runs; ``expandable_segments`` lowers it.

A CPU rank's is measured: its resident size before the first step (Python, torch, gloo, the engine
and data loader imported) is 0.31-0.33 GiB with torch 2.13, and the first backward adds about 0.1 GiB
(oneDNN/MKL kernels, autograd's worker): docs/memory.md. glibc returns large freed blocks to the
system, so no fragmentation line.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30

CUDA_CONTEXT_BYTES = GIB // 2
COMM_BUFFER_BYTES = GIB // 2
CUDA_FRAGMENTATION = 0.10
CPU_PROCESS_BYTES = int(0.45 * GIB)


@dataclass(frozen=True)
class OverheadLine:
    """One non-tensor line: its name, bytes, and what it is and where the figure comes from."""

    name: str
    bytes: int
    detail: str


def overhead_lines(device: str, tensor_bytes: int) -> list[OverheadLine]:
    """The non-tensor lines of one rank on ``device`` ("cuda" or "cpu") whose tensors peak at ``tensor_bytes``."""
    if device != "cuda":
        return [
            OverheadLine(
                "process", CPU_PROCESS_BYTES, "measured: a CPU rank's resident size before training + first backward"
            )
        ]
    return [
        OverheadLine(
            "cuda context", CUDA_CONTEXT_BYTES, "assumption: driver context + lazily loaded kernels (0.3-0.5 GiB seen)"
        ),
        OverheadLine(
            "comm buffers", COMM_BUFFER_BYTES, "assumption: NCCL channel buffers (4 MiB x channels x peers) + cuBLAS"
        ),
        OverheadLine(
            "fragmentation",
            int(CUDA_FRAGMENTATION * tensor_bytes),
            f"assumption: caching allocator reserved beyond allocated, {CUDA_FRAGMENTATION:.0%} of the tensor peak",
        ),
    ]
