"""The probe's search (doubling, then bisection) against simulated devices: no torch, no timing."""

from __future__ import annotations

import pytest
from probe_support import probe_report

from hpcllm.config.probe import ProbeConfig, ProbeTrial, best_trial
from hpcllm.engine.probe_search import next_size


def run_search(
    largest_fit: int,
    *,
    start: int = 1,
    max_mbs: int = 512,
    min_gain: float | None = None,
    throughput=lambda m: float(m),
) -> tuple[list[int], list[ProbeTrial], str]:
    """Drive the search against a device on which exactly the sizes <= ``largest_fit`` fit."""
    trials: list[ProbeTrial] = []
    while True:
        decision = next_size(trials, start=start, max_mbs=max_mbs, min_gain=min_gain)
        if decision.next_mbs is None:
            return [t.mbs for t in trials], trials, decision.stop_reason
        m = decision.next_mbs
        assert m not in [t.mbs for t in trials], f"tried {m} twice"
        fits = m <= largest_fit
        trials.append(
            ProbeTrial(mbs=m, status="ok" if fits else "oom", samples_per_s_per_gpu=throughput(m) if fits else None)
        )


@pytest.mark.parametrize("largest", [1, 2, 3, 5, 7, 8, 13, 100, 511])
@pytest.mark.parametrize("start", [1, 4, 9, 64])
def test_finds_the_largest_fit_from_any_start(largest: int, start: int) -> None:
    tried, trials, reason = run_search(largest, start=start)
    assert max(t.mbs for t in trials if t.fits) == largest
    assert reason == "memory"
    assert len(tried) <= 2 * 10  # logarithmic: doubling plus bisection


def test_doubling_then_bisection_order() -> None:
    tried, _, _ = run_search(13, start=2)
    assert tried == [2, 4, 8, 16, 12, 14, 13]


def test_start_too_big_halves_then_bisects() -> None:
    tried, _, _ = run_search(5, start=32)
    assert tried == [32, 16, 8, 4, 6, 5]


def test_nothing_fits() -> None:
    tried, _, reason = run_search(0, start=8)
    assert tried == [8, 4, 2, 1] and reason == "nothing fits"


def test_max_mbs_caps_the_growth() -> None:
    tried, _, reason = run_search(10_000, start=3, max_mbs=20)
    assert tried == [3, 6, 12, 20] and reason == "max_mbs"


def test_throughput_plateau_stops_growth_before_memory_does() -> None:
    saturating = {1: 10.0, 2: 19.0, 4: 30.0, 8: 30.5, 16: 31.0}
    tried, _, reason = run_search(64, start=1, min_gain=0.03, throughput=saturating.__getitem__)
    assert tried == [1, 2, 4, 8] and reason == "throughput"


def test_same_outcomes_give_the_same_path() -> None:
    assert run_search(37, start=5) == run_search(37, start=5)


def test_resume_continues_the_same_path() -> None:
    full, trials, _ = run_search(13, start=2)
    decision = next_size(trials[:4], start=2, max_mbs=512, min_gain=None)
    assert decision.next_mbs == full[4]


def test_best_trial_respects_the_margin_and_prefers_throughput() -> None:
    trials = [
        ProbeTrial(mbs=2, status="ok", samples_per_s_per_gpu=10.0, mem_peak_gib=30.0),
        ProbeTrial(mbs=4, status="ok", samples_per_s_per_gpu=12.0, mem_peak_gib=50.0),
        ProbeTrial(mbs=6, status="ok", samples_per_s_per_gpu=12.5, mem_peak_gib=62.0),
        ProbeTrial(mbs=8, status="oom"),
    ]
    assert best_trial(trials, capacity_gib=64, margin=0.1).mbs == 4  # 62 > 57.6
    assert best_trial(trials, capacity_gib=64, margin=0.0).mbs == 6
    assert best_trial(trials, capacity_gib=20, margin=0.1) is None


def test_reserved_memory_is_what_the_margin_checks_on_cuda() -> None:
    t = ProbeTrial(mbs=4, status="ok", samples_per_s_per_gpu=1.0, mem_peak_gib=40.0, mem_reserved_gib=60.0)
    assert best_trial([t], capacity_gib=64, margin=0.1) is None


def test_report_conclusion() -> None:
    trials = [
        ProbeTrial(mbs=1, status="ok", samples_per_s_per_gpu=5.0),
        ProbeTrial(mbs=2, status="ok", samples_per_s_per_gpu=4.0),
        ProbeTrial(mbs=4, status="over_budget"),
    ]
    report = probe_report("x", trials, precision="FP_32", device="cpu", gpu_type="cpu", min_gain=None)
    report.conclude("memory")
    assert (report.largest_fit, report.best_mbs, report.stop_reason) == (2, 1, "memory")


def test_probe_config_bounds() -> None:
    with pytest.raises(ValueError, match=r"start_mbs \(8\) must not exceed max_mbs \(4\)"):
        ProbeConfig(start_mbs=8, max_mbs=4)


def test_training_runs_dump_no_probe_key_so_their_run_ids_do_not_change() -> None:
    """Run ids hash the dumped config: adding the probe field must not rename existing runs."""
    from hpcllm.config.training import TrainingConfig

    plain = TrainingConfig(data={"path": "x"})
    assert "probe" not in plain.model_dump(mode="json")
    probing = TrainingConfig(data={"path": "x"}, probe={"start_mbs": 2})
    assert TrainingConfig.model_validate(probing.model_dump(mode="json")) == probing
    assert "probe" in TrainingConfig.model_json_schema()["properties"]
