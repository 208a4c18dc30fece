"""summary.json medians: warm-up steps left out, and a short final attempt still measured."""

from __future__ import annotations

from pathlib import Path

from hpcllm import perf
from hpcllm.engine.metrics import MetricsLog, Throughput


def _log(tmp_path: Path, step_times: list[float]) -> MetricsLog:
    log = MetricsLog(
        tmp_path / "metrics.jsonl",
        Throughput(
            samples_per_step=8,
            seq_len=16,
            flops=perf.TokenFlops(1.0, 1.0, 1.0),
            n_devices=2,
            peak_flops_per_device=None,
        ),
        restart=0,
        log_every=1,
        enabled=True,
    )
    for i, t in enumerate(step_times, start=1):
        log.log(step=i, loss=1.0, lr=0.1, grad_norm=1.0, step_time_s=t, mem_peak_gib=0.5)
    return log


def test_warmup_steps_are_left_out(tmp_path):
    out = _log(tmp_path, [10.0, 10.0, 1.0, 2.0, 3.0]).medians(2)
    assert out["steps_measured"] == 3 and out["summary_warmup_steps"] == 2
    assert out["step_time_s"] == 2.0
    assert out["samples_per_s"] == 4.0  # 8 samples / 2 s
    assert out["tokens_per_s_per_gpu"] == 4.0 * 16 / 2
    assert out["mfu"] is None and out["mfu_with_head"] is None and out["hfu"] is None  # no known peak


def test_short_final_attempt_measures_all_its_steps(tmp_path):
    out = _log(tmp_path, [4.0, 2.0]).medians(5)
    assert out["steps_measured"] == 2 and out["summary_warmup_steps"] == 0
    assert out["step_time_s"] == 3.0


def test_no_step_gives_empty_medians(tmp_path):
    out = _log(tmp_path, []).medians(2)
    assert out["steps_measured"] == 0 and out["samples_per_s"] is None


def test_three_utilisations_against_a_known_peak(tmp_path):
    """8 samples x 16 tokens / 2 s = 64 tokens/s on 2 devices of 100 FLOP/s: FLOPs per token / 200 x 64."""
    log = MetricsLog(
        tmp_path / "m.jsonl",
        Throughput(
            samples_per_step=8,
            seq_len=16,
            flops=perf.TokenFlops(1.0, 2.0, 3.0),
            n_devices=2,
            peak_flops_per_device=100.0,
        ),
        restart=0,
        log_every=1,
        enabled=True,
    )
    log.log(step=1, loss=1.0, lr=0.1, grad_norm=1.0, step_time_s=2.0, mem_peak_gib=0.5)
    out = log.medians(0)
    assert (out["mfu"], out["mfu_with_head"], out["hfu"]) == (0.32, 0.64, 0.96)
