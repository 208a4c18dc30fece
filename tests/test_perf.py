"""perf.py against the seed's published rows: same FLOPs convention, MFU within 1 %."""

import pytest

from hpcllm import perf

# The seed's 2.7B: 32 layers, hidden 2560, N ~ 2.517e9 (its 6N + 12LTd convention).
N_27B, L_27B, D_27B = 2.517e9, 32, 2560

SEED_ROWS = [  # (#GPUs, samples/s, seq, GPU, MFU) from the seed README's tables
    (8, 18.63, 4096, "A100", 0.5847),
    (256, 303.17, 4096, "A100", 0.2974),
    (8, 19.94, 4096, "A100", 0.626),
    (4, 15.06, 4096, "H100", 0.2983),
    (64, 235.96, 4096, "H100", 0.292),
    (1024, 3618.0, 4096, "H100", 0.2799),
]


@pytest.mark.parametrize("gpus,samples,seq,gpu,expected", SEED_ROWS, ids=lambda v: str(v))
def test_mfu_matches_seed_rows(gpus, samples, seq, gpu, expected):
    fpt = perf.flops_per_token(N_27B, L_27B, seq, D_27B)
    assert perf.mfu(samples, seq, fpt, gpus, gpu) == pytest.approx(expected, rel=0.01)


def test_flops_per_token_formula():
    assert perf.flops_per_token(1e9, 10, 100, 64) == 6e9 + 12 * 10 * 100 * 64


@pytest.mark.parametrize("gpu,peak", [("A100", 312e12), ("H100", 989e12), ("h200", 989e12), ("B200", 2.25e15)])
def test_peaks(gpu, peak):
    assert perf.peak_flops(gpu) == peak


def test_unknown_gpu_lists_known_types():
    with pytest.raises(perf.UnknownGPUError, match="known for A100, B200, H100, H200"):
        perf.peak_flops("V100")


def test_mfu_rejects_zero_gpus():
    with pytest.raises(ValueError, match="positive"):
        perf.mfu(1.0, 10, 1.0, 0, "A100")
