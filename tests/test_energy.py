"""GPU energy per token with NVML faked at its API boundary (a stand-in ``pynvml`` module), and the
job's sacct energy; the GPU check is benchmarks/energy_gpu.py."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from hpcllm.engine.energy import EnergyMeter
from hpcllm.launch.jobenergy import steps_energy_j


class FakeNVMLError(Exception):
    pass


def fake_nvml(readings_mj: list[int], *, supported: bool = True) -> types.ModuleType:
    """pynvml's calls the meter makes: init, a handle by index or UUID, the energy counter."""
    nvml = types.ModuleType("pynvml")
    calls: dict[str, Any] = {"handles": []}
    values = iter(readings_mj)

    def handle_by(kind: str) -> Any:
        def get(key: Any) -> str:
            calls["handles"].append((kind, key))
            return f"{kind}:{key}"

        return get

    def energy(handle: str) -> int:
        if not supported:
            raise FakeNVMLError("Not Supported")
        return next(values)

    nvml.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = handle_by("index")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByUUID = handle_by("uuid")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetTotalEnergyConsumption = energy  # type: ignore[attr-defined]
    nvml.calls = calls  # type: ignore[attr-defined]
    return nvml


def test_tokens_per_joule_from_the_counter_over_the_attempts_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    # probe at init, start (after 4 resumed steps), end: 2,000 J over 10 steps
    nvml = fake_nvml([1_000_000, 1_000_000, 3_000_000])
    meter = EnergyMeter(torch.device("cuda", 1), nvml=nvml)
    assert meter.why is None and nvml.calls["handles"] == [("index", 5)]  # type: ignore[attr-defined]
    meter.start(4)
    fields = meter.summary_fields(14, tokens_per_step=1000)
    assert fields["gpu_energy_j"] == 2000.0 and fields["gpu_energy_per_step_j"] == 200.0
    assert fields["tokens_per_joule"] == 5.0
    assert fields["kwh_per_billion_tokens"] == pytest.approx(2000 / 3.6e6 / 10_000 * 1e9)
    assert "NVML" in fields["energy_note"]


def test_a_gpu_without_the_counter_and_a_cpu_run_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    nvml = fake_nvml([], supported=False)
    meter = EnergyMeter(torch.device("cuda", 0), nvml=nvml)
    assert nvml.calls["handles"] == [("uuid", "GPU-abc")]  # type: ignore[attr-defined]
    meter.start(0)
    fields = meter.summary_fields(5, tokens_per_step=100)
    assert fields["tokens_per_joule"] is None and "no energy counter" in fields["energy_note"]
    cpu = EnergyMeter(torch.device("cpu"))
    cpu.start(0)
    fields = cpu.summary_fields(5, tokens_per_step=100)
    assert fields["kwh_per_billion_tokens"] is None and fields["energy_note"] == "no GPU energy counter on a cpu run"


def test_sacct_energy_sums_the_srun_steps_only() -> None:
    out = "77|\n77.batch|900\n77.extern|50\n77.0|1200\n77.1|3000\n"
    assert steps_energy_j(out) == 4200.0
