"""GPU energy of a training attempt from NVML, summed over ranks: tokens per joule, kWh per billion tokens.

Each rank reads its own GPU's cumulative energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
millijoules since the driver loaded; Volta and newer) at the first step and at the end, so the
figure costs two NVML calls per rank and one all-reduce at the end, not a call per step. The sum
over ranks divided by the attempt's steps is the energy of one step of the whole job.

What it leaves out, and says so in ``energy_note``: CPUs, memory, network and cooling (the job's
``ConsumedEnergy`` from ``sacct``, where the site accounts energy, covers the nodes:
hpcllm.launch.jobenergy), and a run without NVML (a CPU run, no nvidia-ml-py, a GPU without the
counter) has no figure at all, with the reason.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import torch

from hpcllm.engine.distributed import all_reduce_sum
from hpcllm.engine.preemption import _collective_device

JOULES_PER_KWH = 3.6e6


def nvml_handle(nvml: Any, device_index: int) -> Any:
    """This process's GPU in NVML, which numbers GPUs physically (CUDA_VISIBLE_DEVICES renumbers them)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return nvml.nvmlDeviceGetHandleByIndex(device_index)
    entry = visible[device_index]
    return nvml.nvmlDeviceGetHandleByIndex(int(entry)) if entry.isdigit() else nvml.nvmlDeviceGetHandleByUUID(entry)


class EnergyMeter:
    """This rank's GPU energy counter; ``why`` says why there is none."""

    def __init__(self, device: torch.device, nvml: ModuleType | None = None) -> None:
        self.device = device
        self.why: str | None = None
        self._nvml: Any = None
        self._handle: Any = None
        self._start_mj: int | None = None
        self._start_step = 0
        if device.type != "cuda":
            self.why = f"no GPU energy counter on a {device.type} run"
            return
        try:
            self._nvml = nvml or importlib.import_module("pynvml")
        except ImportError:
            self.why = "nvidia-ml-py (pynvml) is not installed"
            return
        try:
            self._nvml.nvmlInit()
            self._handle = nvml_handle(self._nvml, device.index or 0)
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except self._nvml.NVMLError as exc:  # e.g. NVML_ERROR_NOT_SUPPORTED before Volta
            self.why = f"NVML has no energy counter for this GPU ({exc})"
            self._handle = None

    def _read_mj(self) -> int | None:
        if self._handle is None:
            return None
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def start(self, step: int) -> None:
        """Before the attempt's first step (``step``: the steps already done, after a resume)."""
        self._start_step = step
        self._start_mj = self._read_mj()

    def summary_fields(self, step: int, *, tokens_per_step: int) -> dict[str, Any]:
        """summary.json's energy fields for this attempt, at ``step``. A collective: every rank calls it."""
        steps = step - self._start_step
        now = self._read_mj()
        joules = (now - self._start_mj) / 1e3 if now is not None and self._start_mj is not None else 0.0
        measured = 1.0 if now is not None and self._start_mj is not None else 0.0
        on = _collective_device() if torch.distributed.is_initialized() else torch.device("cpu")
        t = torch.tensor([joules, measured], dtype=torch.float64, device=on)
        total, ranks_measured = (float(v) for v in all_reduce_sum(t).tolist())
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        tokens = steps * tokens_per_step
        if ranks_measured < world or total <= 0 or tokens <= 0:
            note = self.why or (
                f"NVML energy on {ranks_measured:.0f} of {world} ranks" if ranks_measured < world else "no steps ran"
            )
            return {
                "gpu_energy_j": None,
                "gpu_energy_per_step_j": None,
                "tokens_per_joule": None,
                "kwh_per_billion_tokens": None,
                "energy_note": note,
            }
        return {
            "gpu_energy_j": total,
            "gpu_energy_per_step_j": total / steps,
            "tokens_per_joule": tokens / total,
            "kwh_per_billion_tokens": total / JOULES_PER_KWH / tokens * 1e9,
            "energy_note": "GPU energy from NVML, summed over ranks, this attempt's steps",
        }
