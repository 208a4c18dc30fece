"""The engine's probe mode: find the micro-batch size a setup holds and the one it runs fastest at.

A run whose ``run.yaml`` has a ``probe:`` section (``hpcllm.config.probe``) comes here instead of
``train``. It builds the model, optimizer and data exactly as training does, then tries one
micro-batch size after another (``hpcllm.engine.probe_search``: the start, doubling, bisection):
``warmup_steps`` + ``steps`` real training steps per size, the first under the memory budget guard
(``hpcllm.engine.memory_meter``). A size that runs out of memory (a CUDA out-of-memory error, or
the budget) does not end the job: every rank drops the model and optimizer, memory is released,
they are rebuilt, and the search goes on with a smaller size.

``probe.json`` is rewritten after every size, with the size being tried marked first, so a job
that dies (an out-of-memory error that struck only some ranks, whose collectives then no longer
match, ends in the NCCL watchdog; a node failure) leaves a report that a restart resumes from,
counting the size it died on as too large.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from typing import Any

import torch
from rich.console import Console

from hpcllm.config.probe import ProbeConfig, ProbeReport, ProbeTrial, TrialStatus
from hpcllm.config.training import ScheduleConfig, TrainingConfig
from hpcllm.engine.data import build_train_loader
from hpcllm.engine.distributed import DistEnv, barrier
from hpcllm.engine.memory_meter import GIB, BudgetGuard, MemoryBudgetExceeded, MemoryMeter, max_over_ranks
from hpcllm.engine.optim import Scheduler, build_optimizer
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.engine.preemption import StopRequest, any_rank
from hpcllm.engine.probe_search import next_size
from hpcllm.engine.state import TrainState
from hpcllm.engine.train import build_teacher, check_data_vocab, run_setup_fields, train_step
from hpcllm.errors import ConfigError
from hpcllm.fsutil import read_json, write_json_in
from hpcllm.plan.memory import MemorySpec, estimate_memory
from hpcllm.rundir import (
    EXIT_PREEMPTED,
    SUMMARY_KIND_PROBE,
    SUMMARY_STATUS_COMPLETED,
    SUMMARY_STATUS_PREEMPTED,
    RunDir,
)

console = Console(highlight=False, soft_wrap=True)

CRASHED = "the job ended while this size ran (an out-of-memory error on some ranks only, or a node failure)"


class Prober:
    """The model, optimizer and data of the run, and one trial per micro-batch size."""

    def __init__(self, cfg: TrainingConfig, env: DistEnv, source: str = "run.yaml") -> None:
        assert cfg.probe is not None
        self.cfg, self.probe, self.env, self.source = cfg, cfg.probe, env, source
        self.mesh = build_mesh(cfg.parallel, env)
        self.meter = MemoryMeter(env.device)
        budget = self.probe.memory_budget_gib
        self.budget = int(budget * GIB) if budget is not None else None
        self.teacher = (
            build_teacher(cfg.distill, cfg.parallel, self.mesh, env, cfg.seed, cfg.model.vocab_size, cfg.model.seq_len)
            if cfg.distill is not None
            else None
        )
        nodes = max(1, env.world_size // env.local_world_size)
        self.memory_spec = MemorySpec.of_training(
            cfg, nodes=nodes, ranks_per_node=env.local_world_size, device="cuda" if env.device.type == "cuda" else "cpu"
        )
        self._build()

    def _build(self) -> None:
        cfg = self.cfg
        self.model = build_parallel_model(cfg.model, cfg.parallel, self.mesh, self.env.device, cfg.seed)
        self.optimizer = build_optimizer(self.model, cfg.optim, cfg.optim.lr)
        # The learning rate does not change what a step costs: a constant one, whatever the run's schedule.
        self.scheduler = Scheduler(
            self.optimizer, base_lr=cfg.optim.lr, total_steps=1, cfg=ScheduleConfig(name="constant")
        )
        self.guard = BudgetGuard(list(self.model.blocks), self.meter, self.budget) if self.budget else None

    def _rebuild(self) -> None:
        """Drop everything a failed step may have left half-done (FSDP's unsharded parameters and
        hook state, gradients, the optimizer's state), release the memory, and build afresh."""
        if self.guard is not None:
            self.guard.remove()
        del self.model, self.optimizer, self.scheduler, self.guard
        self.meter.release()
        self._build()

    def in_use_gib(self) -> float:
        return max_over_ranks(self.meter.current_bytes() / GIB, self.env.device)

    def trial(self, mbs: int) -> ProbeTrial:
        cfg, probe, env = self.cfg, self.probe, self.env
        loader = build_train_loader(
            cfg.data,
            seq_len=cfg.model.seq_len,
            micro_batch_size=mbs,
            dp_rank=env.rank,
            dp_size=env.world_size,
            seed=cfg.seed,
            device=env.device,
        )
        check_data_vocab(cfg, loader.vocab_size, self.source)
        state = TrainState(self.model, self.optimizer, self.scheduler, loader)
        self.meter.release()
        self.meter.reset_peak()
        failure: tuple[TrialStatus, str] | None = None
        times: list[float] = []
        try:
            for i in range(probe.warmup_steps + probe.steps):
                guarded = i == 0 and self.guard is not None
                t0 = time.perf_counter()
                with self.guard.guarding() if guarded else nullcontext():  # type: ignore[union-attr]
                    train_step(
                        state,
                        grad_accum=cfg.train.grad_accum,
                        dp_size=env.world_size,
                        grad_clip=cfg.train.grad_clip,
                        device=env.device,
                        teacher=self.teacher,
                        distill=cfg.distill,
                    )
                if i >= probe.warmup_steps:
                    times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError as exc:
            failure = ("oom", str(exc).splitlines()[0])
        except MemoryBudgetExceeded as exc:
            failure = ("over_budget", str(exc))
        finally:
            loader.close()
        del state
        # The exception (and the frames holding this step's tensors) is gone; agree on the outcome.
        failed = any_rank(failure is not None)
        peak = max_over_ranks(self.meter.peak_bytes() / GIB, env.device)
        reserved_bytes = self.meter.peak_reserved_bytes()
        reserved = None if reserved_bytes is None else max_over_ranks(reserved_bytes / GIB, env.device)
        trial = ProbeTrial(
            mbs=mbs,
            status="ok",
            mem_peak_gib=round(peak, 4),
            mem_reserved_gib=None if reserved is None else round(reserved, 4),
            estimate_gib=round(estimate_memory(self.memory_spec.with_mbs(mbs)).peak_gib, 4),
            steps=len(times),
        )
        if failed:
            trial.status, trial.error = failure or ("oom", "another rank ran out of memory")
            self._rebuild()
            return trial
        over = self.budget is not None and (trial.memory_gib or 0.0) * GIB > self.budget
        if over:
            trial.status = "over_budget"
            trial.error = f"peak {trial.memory_gib:.2f} GiB > budget {self.budget / GIB:.2f} GiB"  # type: ignore[operator]
        step_time = statistics.median(max_over_ranks(t, env.device) for t in times)
        per_gpu = mbs * cfg.train.grad_accum / step_time
        trial.step_time_s = round(step_time, 6)
        trial.samples_per_s_per_gpu = per_gpu
        trial.samples_per_s = per_gpu * env.world_size
        trial.tokens_per_s_per_gpu = per_gpu * cfg.model.seq_len
        return trial


def new_report(cfg: TrainingConfig, env: DistEnv) -> ProbeReport:
    assert cfg.probe is not None
    setup = {k: v for k, v in run_setup_fields(cfg, env).items() if k in ProbeReport.model_fields}
    return ProbeReport(
        **setup,
        cpu_offload=cfg.parallel.cpu_offload,
        memory_budget_gib=cfg.probe.memory_budget_gib,
        min_gain=cfg.probe.min_gain,
    )


def load_report(cfg: TrainingConfig, run_dir: RunDir, env: DistEnv, resume: bool) -> ProbeReport:
    """The report to continue: an earlier attempt's (same ranks), the size it died on counted as too
    large; else a new one."""
    fresh = new_report(cfg, env)
    if not resume:
        return fresh
    try:
        old = ProbeReport.model_validate(read_json(run_dir.probe) or {})
    except ValueError:  # none yet, or not ours
        return fresh
    if old.world_size != env.world_size or old.status == "completed":
        return fresh
    trials = list(old.trials)
    if old.trying is not None:
        trials.append(ProbeTrial(mbs=old.trying, status="crashed", error=CRASHED))
    return fresh.model_copy(update={"trials": trials, "baseline_gib": old.baseline_gib})


def _describe(trial: ProbeTrial) -> str:
    mem = f"{trial.memory_gib:.2f} GiB" if trial.memory_gib is not None else "-"
    est = f"estimate {trial.estimate_gib:.2f} GiB" if trial.estimate_gib is not None else ""
    if not trial.fits:
        return f"MBS {trial.mbs:>5}: {trial.status} ({trial.error}); peak {mem}, {est}"
    return (
        f"MBS {trial.mbs:>5}: {trial.samples_per_s_per_gpu:.3f} samples/s per GPU, "
        f"step {trial.step_time_s:.3f} s, peak {mem}, {est}"
    )


def run_probe(cfg: TrainingConfig, run_dir: RunDir, env: DistEnv, *, resume: bool, summary: dict[str, Any]) -> int:
    """Probe micro-batch sizes until the search stops; write probe.json and summary.json; exit code."""
    probe: ProbeConfig | None = cfg.probe
    assert probe is not None
    if cfg.parallel.tensor_parallel > 1:  # trials read data per rank and count samples per rank
        raise ConfigError(
            "parallel.tensor_parallel: explore-batch probes run without tensor parallelism; probe with "
            "tensor_parallel: 1, or size TP runs with `hpcllm model info --tp`"
        )
    summary.update(kind=SUMMARY_KIND_PROBE, world_size=env.world_size, device=env.device.type)
    torch.manual_seed(cfg.seed)
    report = load_report(cfg, run_dir, env, resume)
    barrier()  # every rank has read the old report before rank 0 rewrites it

    def save() -> None:
        if env.is_main:
            write_json_in(run_dir.path, run_dir.probe, report.model_dump(mode="json"))

    def finish(status: str) -> None:
        summary.update(
            status=status,
            best_mbs=report.best_mbs,
            largest_fit=report.largest_fit,
            stop_reason=report.stop_reason,
            trials=len(report.trials),
        )
        if env.is_main:
            write_json_in(run_dir.path, run_dir.summary, summary)

    prober = Prober(cfg, env, str(run_dir.config))
    if report.baseline_gib is None:
        report.baseline_gib = round(prober.in_use_gib(), 4)
    save()
    if env.is_main:
        console.print(
            f"[bold]{cfg.run_id}[/]: probing micro-batch sizes from {probe.start_mbs} (max {probe.max_mbs}), "
            f"{env.world_size} rank(s) on {env.device.type}, budget "
            f"{'none' if probe.memory_budget_gib is None else f'{probe.memory_budget_gib:g} GiB'}, "
            f"{len(report.trials)} size(s) from an earlier attempt"
        )
    stop = StopRequest(run_dir)
    stop.install()
    try:
        while True:
            decision = next_size(report.trials, start=probe.start_mbs, max_mbs=probe.max_mbs, min_gain=probe.min_gain)
            if decision.next_mbs is None:
                assert decision.stop_reason is not None
                report.conclude(decision.stop_reason)
                break
            if stop.should_stop():
                report.status = "preempted"
                save()
                finish(SUMMARY_STATUS_PREEMPTED)
                return EXIT_PREEMPTED
            report.trying = decision.next_mbs
            save()
            trial = prober.trial(decision.next_mbs)
            report.trials.append(trial)
            report.trying = None
            save()
            if env.is_main:
                console.print(_describe(trial))
        report.status = "completed"
        save()
        finish(SUMMARY_STATUS_COMPLETED)
        if env.is_main:
            console.print(
                f"largest MBS that fits: {report.largest_fit}; fastest: {report.best_mbs} "
                f"(stopped: {report.stop_reason})"
            )
        return 0
    finally:
        stop.uninstall()
