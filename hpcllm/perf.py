"""Hardware peaks, FLOPs per token and MFU: the one home of these facts.

Pure Python on purpose: the engine (on compute nodes) and the collector (on a login node without
torch) must compute MFU the same way, so both import these three functions and nothing else does
the arithmetic.
"""

from __future__ import annotations

# Dense BF16 tensor-core peaks in FLOP/s (no 2:4 sparsity), from the vendors' datasheets:
#   A100 (SXM, 40/64/80 GB): https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
#   H100 SXM (64/80 GB):     https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#   H200 SXM:                https://www.nvidia.com/en-us/data-center/h200/ (same compute die as H100)
#   B200:                    https://www.nvidia.com/en-us/data-center/dgx-b200/ (per GPU, dense)
# Leonardo Booster's "A100 64GB" and MareNostrum 5's "H100 64GB" are SXM parts with these peaks.
_PEAK_BF16_FLOPS: dict[str, float] = {
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
    "B200": 2.25e15,
}


class UnknownGPUError(ValueError):
    """Raised for a GPU type with no known peak; the message lists the known ones."""


def known_gpu_types() -> list[str]:
    return sorted(_PEAK_BF16_FLOPS)


def peak_flops(gpu_type: str) -> float:
    """Dense BF16 peak FLOP/s of one GPU of ``gpu_type`` (case-insensitive, e.g. ``"H100"``)."""
    key = gpu_type.strip().upper()
    try:
        return _PEAK_BF16_FLOPS[key]
    except KeyError:
        raise UnknownGPUError(
            f"unknown GPU type {gpu_type!r}: peak FLOPs are known for {', '.join(known_gpu_types())}"
        ) from None


def flops_per_token(n_params: float, n_layers: int, seq_len: int, hidden: int) -> float:
    """Training FLOPs per token: ``6·N + 12·L·T·d`` (the seed's and PaLM's convention).

    ``6·N``: forward (2·N) plus backward (4·N) multiply-adds of the dense weights; ``12·L·T·d``: the
    attention score and value matmuls (QKᵀ and AV), forward and backward, with no causal discount
    and no recomputation counted (activation checkpointing does not raise "model" FLOPs).
    """
    return 6.0 * n_params + 12.0 * n_layers * seq_len * hidden


def mfu(
    samples_per_s: float,
    seq_len: int,
    flops_per_token: float,
    n_gpus: int,
    gpu_type: str,
) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of ``n_gpus`` GPUs."""
    return mfu_at_peak(samples_per_s, seq_len, flops_per_token, n_gpus, peak_flops(gpu_type))


def mfu_at_peak(
    samples_per_s: float,
    seq_len: int,
    flops_per_token: float,
    n_devices: int,
    peak_flops_per_device: float,
) -> float:
    """MFU against an explicit per-device peak (a CPU run given ``metrics.cpu_peak_flops``)."""
    if n_devices <= 0:
        raise ValueError(f"n_devices must be positive, got {n_devices}")
    achieved = samples_per_s * seq_len * flops_per_token
    return achieved / (n_devices * peak_flops_per_device)
