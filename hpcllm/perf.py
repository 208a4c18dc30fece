"""Hardware peaks, FLOPs per token and MFU: the one home of these facts.

Pure Python on purpose: the engine (on compute nodes) and the collector (on a login node without
torch) must compute MFU the same way, so both import these functions and nothing else does the
arithmetic.

Three FLOP conventions, each a column of the scaling table (docs/reports.md):

- ``MFU`` (the seed's, and the one references are checked against): ``6·N + 12·L·T·d`` with
  ``N = 12·L·d²``, Kaplan et al.'s (2020, eq. 2.1) count of the non-embedding parameters of a
  transformer with d_ff = 4d (or SwiGLU at 8d/3). It depends only on depth, width and sequence
  length, so two tables with the same model shape and samples/s show the same MFU: the seed's
  published rows imply exactly this (2.7B at seq 4096: 19.13 GFLOP/token, within 0.03 %).
- ``MFU+head``: the same with ``N`` the exact number of parameters in matmuls, the output
  projection included (torchtitan's convention; 20.03 GFLOP/token for the 2.7b preset).
- ``HFU``: what the hardware executes, ``MFU+head`` plus the forward passes that activation
  checkpointing runs again in the backward pass.

None of them discounts causal masking, and all count a multiply-add as 2 FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def seed_n_params(n_layers: int, hidden: int) -> float:
    """``12·L·d²``: the parameter count the seed's MFU assumes (attention 4d², MLP 8d² per layer)."""
    return 12.0 * n_layers * hidden * hidden


def seed_flops_per_token(n_layers: int, seq_len: int, hidden: int) -> float:
    """The seed's training FLOPs per token, ``72·L·d² + 12·L·T·d``: what the ``MFU`` column counts."""
    return flops_per_token(seed_n_params(n_layers, hidden), n_layers, seq_len, hidden)


def recompute_flops_per_token(block_params: int, recomputed_blocks: int, seq_len: int, hidden: int) -> float:
    """FLOPs per token that activation checkpointing adds: one more forward of each recomputed block.

    A block's forward is ``2·P`` for its weights plus ``4·T·d`` for QKᵀ and AV (a third of the
    ``6·P + 12·T·d`` it costs forward and backward).
    """
    return recomputed_blocks * (2.0 * block_params + 4.0 * seq_len * hidden)


def recomputed_blocks(n_layers: int, activation_checkpointing: str, ac_every: int) -> int:
    """Blocks whose forward runs twice: all under ``full``, blocks 0, k, 2k, … under ``selective``.

    The same rule as ``hpcllm.engine.parallelize.apply_activation_checkpointing``.
    """
    if activation_checkpointing == "full":
        return n_layers
    if activation_checkpointing == "selective":
        return -(-n_layers // ac_every)
    return 0


@dataclass(frozen=True)
class TokenFlops:
    """Training FLOPs per token of one model under the three conventions (see the module's doc)."""

    model: float  # the seed's: the MFU column
    with_head: float  # exact matmul parameters, output projection included: MFU+head
    hardware: float  # with_head + activation-checkpointing recomputation: HFU

    def utilisation(
        self, samples_per_s: float, seq_len: int, n_devices: int, peak_flops_per_device: float
    ) -> dict[str, float]:
        """``mfu``, ``mfu_with_head`` and ``hfu`` of a throughput against ``n_devices`` peaks."""

        def at(flops: float) -> float:
            return mfu_at_peak(samples_per_s, seq_len, flops, n_devices, peak_flops_per_device)

        return {"mfu": at(self.model), "mfu_with_head": at(self.with_head), "hfu": at(self.hardware)}


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
