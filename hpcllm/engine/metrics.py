"""``metrics.jsonl`` (one line per logged step) and the medians of ``summary.json``.

Only rank 0 writes. Throughput is global (all ranks); MFU comes from ``hpcllm.perf`` against a
known peak (the GPU table, or ``metrics.cpu_peak_flops`` on CPU) and is ``null`` otherwise, never an
invented figure: ``mfu`` in the seed's convention, ``mfu_with_head`` and ``hfu`` beside it (see
``hpcllm.perf``). docs/run-contract.md lists every key.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hpcllm import perf, runfiles
from hpcllm.config.training import TrainingConfig
from hpcllm.engine.tracking import MetricSink, scalars
from hpcllm.fsutil import append_line_in


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA max allocated on GPU, peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB


def detect_gpu_type(device: torch.device, configured: str | None) -> str | None:
    """The configured GPU type, else the known type named in the CUDA device name, else None."""
    if device.type != "cuda":
        return None
    if configured:
        return configured
    name = torch.cuda.get_device_name(device).upper()
    for known in perf.known_gpu_types():
        if known in name:
            return known
    return None


def earlier_attempts(path: Path) -> tuple[int, float]:
    """(highest logged step, wall seconds of the earlier attempts) from ``metrics.jsonl``.

    Each line carries ``elapsed_s``, seconds on the monotonic clock since its attempt began, its
    ``job_id`` and ``restart``. Lines are appended attempt after attempt, so a new attempt begins where
    the job or ``restart`` changes (a resubmission starts at restart 0 again) or ``elapsed_s`` goes
    back; each attempt lasted (at least) its last line's ``elapsed_s``.
    The wall clock (``time``) is not used: a clock step within an attempt must not split it (which
    counted its first part twice). Time after an attempt's last logged step is not counted.
    """
    best, total = 0, 0.0
    attempt: tuple[object, object] | None = None  # the current attempt's (job, restart)
    elapsed = 0.0  # and its latest elapsed_s
    with contextlib.suppress(runfiles.MissingFile):
        for record in runfiles.iter_json_lines(path):  # torn lines (a killed attempt's) skipped
            try:
                best = max(best, int(record["step"]))
                line_elapsed = float(record["elapsed_s"])
                line_attempt = (record.get("job_id"), record.get("restart"))
            except (ValueError, KeyError, TypeError):
                continue  # a line from an older engine
            if attempt is not None and (line_attempt != attempt or line_elapsed < elapsed):
                total += elapsed
            attempt, elapsed = line_attempt, line_elapsed
    return best, total + elapsed


def token_flops(cfg: TrainingConfig) -> perf.TokenFlops:
    """FLOPs per token of the run's model in the three conventions, AC recomputation included."""
    p = cfg.parallel
    recomputed = perf.recomputed_blocks(cfg.model.n_layers, p.activation_checkpointing, p.ac_every)
    return cfg.model.flops(recomputed_blocks=recomputed)


@dataclass
class Throughput:
    """Fixed per-run quantities that turn a step time into tokens/s and MFU."""

    samples_per_step: int  # global batch size
    seq_len: int
    flops: perf.TokenFlops
    n_devices: int
    peak_flops_per_device: float | None  # None: MFU is null

    def rates(self, step_time_s: float) -> dict[str, float | None]:
        samples_per_s = self.samples_per_step / step_time_s
        utilisation: dict[str, float | None] = dict.fromkeys(UTILISATION_KEYS)
        if self.peak_flops_per_device is not None:
            utilisation.update(
                self.flops.utilisation(samples_per_s, self.seq_len, self.n_devices, self.peak_flops_per_device)
            )
        return {
            "samples_per_s": samples_per_s,
            "tokens_per_s": samples_per_s * self.seq_len,
            "tokens_per_s_per_gpu": samples_per_s * self.seq_len / self.n_devices,
            **utilisation,
        }


UTILISATION_KEYS = ("mfu", "mfu_with_head", "hfu")


@dataclass
class MetricsLog:
    """Appends step records to ``metrics.jsonl`` (when ``enabled``) and keeps them for the summary."""

    path: Path
    throughput: Throughput
    restart: int
    log_every: int
    enabled: bool
    started: float = field(default_factory=time.monotonic)  # when this attempt began
    job_id: str | None = field(default_factory=lambda: os.environ.get("SLURM_JOB_ID"))  # the scheduler's job
    records: list[dict[str, Any]] = field(default_factory=list)
    sinks: list[MetricSink] = field(default_factory=list)  # trackers that mirror every written line

    def __post_init__(self) -> None:
        self._rerun_until, self._earlier_s = earlier_attempts(self.path) if self.enabled else (0, 0.0)

    def log(
        self,
        *,
        step: int,
        loss: float,
        lr: float,
        grad_norm: float,
        step_time_s: float,
        mem_peak_gib: float,
        skipped: bool = False,
        loss_scale: float | None = None,
    ) -> dict[str, Any]:
        """Record a step; written when ``log_every`` divides it, and always when it was skipped."""
        rates = self.throughput.rates(step_time_s)
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": rates["tokens_per_s"],
            "samples_per_s": rates["samples_per_s"],
            "mfu": rates["mfu"],
            "step_time_s": step_time_s,
            "mem_peak_gib": mem_peak_gib,
            "job_id": self.job_id,
            "restart": self.restart,
            "rerun": step <= self._rerun_until,
            "skipped": skipped,
            "loss_scale": loss_scale,
            "time": round(time.time(), 3),
            "elapsed_s": round(time.monotonic() - self.started, 3),
        }
        self.records.append(
            {
                **record,
                "tokens_per_s_per_gpu": rates["tokens_per_s_per_gpu"],
                "mfu_with_head": rates["mfu_with_head"],
                "hfu": rates["hfu"],
            }
        )
        if step % self.log_every == 0 or skipped:
            self._write(record)
        return record

    def log_eval(self, record: dict[str, Any]) -> None:
        """An eval line (``step``, ``eval_loss``, ``eval_ppl``, ...), written whatever ``log_every``."""
        self._write({**record, "restart": self.restart, "rerun": record["step"] <= self._rerun_until})

    def _write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # Never a torn line, nor one built on a torn one; nothing once the run folder was moved away.
        append_line_in(self.path.parent, self.path, json.dumps(record))
        values = scalars(record)
        for sink in self.sinks:
            sink.write(record["step"], values)

    def close(self) -> None:
        """Flush and close the trackers (event files, W&B run)."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def medians(self, warmup_steps: int) -> dict[str, Any]:
        """Medians over this attempt's steps after its first ``warmup_steps`` (compile, warm-up).

        Only this attempt's steps count: a resumed run may run on another number of ranks. When a
        short final attempt (resumed near the end) has no step past its warm-up, every step of it
        is measured instead, and ``summary_warmup_steps`` says 0, so the table still gets a figure.
        """
        if len(self.records) <= warmup_steps:
            warmup_steps = 0
        measured = self.records[warmup_steps:]
        out: dict[str, Any] = {"steps_measured": len(measured), "summary_warmup_steps": warmup_steps}
        for key in (
            "samples_per_s",
            "tokens_per_s",
            "tokens_per_s_per_gpu",
            *UTILISATION_KEYS,
            "step_time_s",
            "mem_peak_gib",
        ):
            values = [r[key] for r in measured if r[key] is not None]
            out[key] = statistics.median(values) if values else None
        return out

    def timing(self) -> dict[str, float]:
        """``elapsed_s``: this attempt's wall time so far; ``wall_time_s``: all attempts' together."""
        elapsed = time.monotonic() - self.started
        return {"elapsed_s": round(elapsed, 3), "wall_time_s": round(self._earlier_s + elapsed, 3)}
