"""summary.json medians: warm-up steps left out, and a short final attempt still measured."""

from __future__ import annotations

from pathlib import Path

from hpcllm.engine.metrics import MetricsLog, Throughput


def _log(tmp_path: Path, step_times: list[float]) -> MetricsLog:
    log = MetricsLog(tmp_path / "metrics.jsonl",
                     Throughput(samples_per_step=8, seq_len=16, flops_per_token=1.0, n_devices=2,
                                peak_flops_per_device=None),
                     restart=0, log_every=1, enabled=True)
    for i, t in enumerate(step_times, start=1):
        log.log(step=i, loss=1.0, lr=0.1, grad_norm=1.0, step_time_s=t, mem_peak_gib=0.5)
    return log


def test_warmup_steps_are_left_out(tmp_path):
    out = _log(tmp_path, [10.0, 10.0, 1.0, 2.0, 3.0]).medians(2)
    assert out["steps_measured"] == 3 and out["summary_warmup_steps"] == 2
    assert out["step_time_s"] == 2.0
    assert out["samples_per_s"] == 4.0  # 8 samples / 2 s
    assert out["tokens_per_s_per_gpu"] == 4.0 * 16 / 2
    assert out["mfu"] is None  # no known peak: never an invented figure


def test_short_final_attempt_measures_all_its_steps(tmp_path):
    out = _log(tmp_path, [4.0, 2.0]).medians(5)
    assert out["steps_measured"] == 2 and out["summary_warmup_steps"] == 0
    assert out["step_time_s"] == 3.0


def test_no_step_gives_empty_medians(tmp_path):
    out = _log(tmp_path, []).medians(2)
    assert out["steps_measured"] == 0 and out["samples_per_s"] is None
