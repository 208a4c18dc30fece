"""The run's life as named phases: set-up, resume, loop, finish (as torchtitan's ``Trainer``).

``train`` reads top to bottom as that life; each phase is a method of ``Trainer``, which holds what
the phases share (model, loader, state, checkpointer, metrics). One optimizer step is
``hpcllm.engine.train.train_step``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from hpcllm.config.training import TrainingConfig
from hpcllm.engine.checkpoint import Checkpointer
from hpcllm.engine.data import build_train_loader
from hpcllm.engine.distributed import DistEnv, all_reduce_max
from hpcllm.engine.energy import EnergyMeter
from hpcllm.engine.evaluate import Evaluator, build_evaluator
from hpcllm.engine.failed import write_failed
from hpcllm.engine.guards import NonFiniteError, check_step
from hpcllm.engine.loss_scale import build_loss_scaler
from hpcllm.engine.metrics import MetricsLog, Throughput, peak_memory_gib, token_flops
from hpcllm.engine.optim import Scheduler, build_optimizer, lr_at
from hpcllm.engine.parallelize import build_mesh, build_parallel_model, describe_layout
from hpcllm.engine.preemption import StopRequest
from hpcllm.engine.profiling import StepProfiler
from hpcllm.engine.runtime import record_runtime
from hpcllm.engine.state import TrainState
from hpcllm.engine.tensor_parallel import dp_rank as data_parallel_rank
from hpcllm.engine.tensor_parallel import dp_size as data_parallel_size
from hpcllm.engine.tracking import open_sinks
from hpcllm.engine.train import (
    build_teacher,
    check_data_vocab,
    console,
    global_batch_size,
    peak_flops_per_device,
    restart_count,
    summary_fields,
    train_step,
)
from hpcllm.engine.warm_start import load_initial_weights
from hpcllm.engine.watchdog import Watchdog
from hpcllm.fsutil import write_json_in
from hpcllm.rundir import EXIT_PREEMPTED, SUMMARY_STATUS_COMPLETED, SUMMARY_STATUS_PREEMPTED, RunDir


def train(cfg: TrainingConfig, run_dir: RunDir, env: DistEnv, *, resume: bool, summary: dict[str, Any]) -> int:
    """Run (or continue) training to ``train.steps``; returns the process exit code."""
    trainer = Trainer(cfg, run_dir, env, summary)
    try:
        trainer.resume(resume)
        trainer.announce()
        return trainer.loop()
    except NonFiniteError as exc:
        summary["failed_step"] = exc.step
        trainer.checkpointer.close()  # an async save of an earlier, finite step still completes
        raise
    finally:
        trainer.close()


class Trainer:
    """Set-up in ``__init__``; then ``resume``, ``loop`` (which ends in ``finish``), ``close``."""

    def __init__(self, cfg: TrainingConfig, run_dir: RunDir, env: DistEnv, summary: dict[str, Any]) -> None:
        self.started = time.monotonic()
        torch.manual_seed(cfg.seed)
        self.cfg, self.run_dir, self.env, self.summary = cfg, run_dir, env, summary
        source = str(run_dir.config)
        self.mesh = build_mesh(cfg.parallel, env)
        self.dp_size = data_parallel_size(self.mesh)  # the world / tensor_parallel: TP ranks read the same data
        self.gbs = global_batch_size(cfg, self.dp_size, source)
        summary.update(summary_fields(cfg, env, self.gbs))
        summary["dp_size"] = self.dp_size
        record_runtime(run_dir, env, restart=restart_count())
        self.model = build_parallel_model(cfg.model, cfg.parallel, self.mesh, env.device, cfg.seed)
        self.loader = build_train_loader(
            cfg.data,
            seq_len=cfg.model.seq_len,
            micro_batch_size=cfg.train.micro_batch_size,
            dp_rank=data_parallel_rank(self.mesh),
            dp_size=self.dp_size,
            seed=cfg.seed,
            device=env.device,
        )
        check_data_vocab(cfg, self.loader.vocab_size, source)
        self.teacher = (
            build_teacher(cfg.distill, cfg.parallel, self.mesh, env, cfg.seed, cfg.model.vocab_size, cfg.model.seq_len)
            if cfg.distill is not None
            else None
        )
        self.evaluator: Evaluator | None = build_evaluator(
            cfg, env, dp_rank=data_parallel_rank(self.mesh), dp_size=self.dp_size
        )
        self.profiler = StepProfiler(cfg.profile, run_dir, env)
        horizon = cfg.schedule.total_steps or cfg.train.steps  # a longer schedule: stop early, resume later on it
        optimizer = build_optimizer(
            self.model, cfg.optim, lr_at(0, base_lr=cfg.optim.lr, total_steps=horizon, cfg=cfg.schedule)
        )
        self.scheduler = Scheduler(optimizer, base_lr=cfg.optim.lr, total_steps=horizon, cfg=cfg.schedule)
        self.state = TrainState(
            model=self.model,
            optimizer=optimizer,
            scheduler=self.scheduler,
            loader=self.loader,
            loss_scaler=build_loss_scaler(cfg.parallel),
        )
        self.checkpointer = Checkpointer(run_dir, cfg.checkpoint)
        self.stop = StopRequest(run_dir)
        self.stop.install()
        self.metrics: MetricsLog | None = None  # opened by ``resume``: its sinks continue at the resumed step
        self.watchdog = Watchdog(  # armed by ``loop``: loading a checkpoint is no step
            cfg.watchdog,
            run_dir,
            env,
            restart=restart_count(),
            on_hang=lambda error: write_failed(run_dir, summary, error, env.rank),
        )
        self.energy = EnergyMeter(env.device)

    # --- resume --------------------------------------------------------------------------------

    def resume(self, resume: bool) -> None:
        """Load the latest checkpoint (or warm-start weights), then open the metrics at that step."""
        cfg, env, state = self.cfg, self.env, self.state
        resumed = resume and cfg.checkpoint.resume and self.checkpointer.load_latest(state)
        if cfg.init_from is not None and not resumed:  # warm start: weights only, the rest starts fresh
            state.init_from = str(load_initial_weights(self.model, cfg.init_from, cfg.model))
        self.summary["init_from"] = state.init_from
        self.metrics = MetricsLog(
            path=self.run_dir.metrics,
            throughput=Throughput(
                self.gbs, cfg.model.seq_len, token_flops(cfg), env.world_size, peak_flops_per_device(cfg, env)
            ),
            restart=restart_count(),
            log_every=cfg.train.log_every,
            enabled=env.is_main,
            started=self.started,
            sinks=open_sinks(cfg, self.run_dir, resume_step=state.step) if env.is_main else [],
        )

    def announce(self) -> None:
        cfg, env, gbs = self.cfg, self.env, self.gbs
        if env.is_main:
            console.print(
                f"[bold]{cfg.run_id}[/]: {cfg.model.n_params() / 1e6:.1f}M params, {env.world_size} rank(s) on "
                f"{env.device.type}, {describe_layout(cfg.parallel, self.mesh)}"
                f"/{cfg.parallel.precision}, GBS {gbs} x "
                f"seq {cfg.model.seq_len} = {gbs * cfg.model.seq_len} tokens/step, start at step "
                f"{self.state.step}/{cfg.train.steps}"
                + (f", weights from {self.state.init_from}" if self.state.init_from else "")
            )

    # --- loop ----------------------------------------------------------------------------------

    def loop(self) -> int:
        """Step to ``train.steps`` (or until a stop request); finish; return the exit code."""
        cfg, state, checkpointer = self.cfg, self.state, self.checkpointer
        self.watchdog.start(state.step)
        self.energy.start(state.step)
        while state.step < cfg.train.steps:
            self.step()
            if self.evaluator is not None and self.evaluator.due(state.step):
                self.evaluate()
            checkpointer.maybe_save(state)
            if self.stop.should_stop():
                checkpointer.maybe_save(state, force=True)
                checkpointer.close()
                self.finish(SUMMARY_STATUS_PREEMPTED)
                if self.env.is_main:
                    console.print(f"stopped at step {state.step} ({self.stop.reason}); checkpoint saved")
                return EXIT_PREEMPTED
        if self.evaluator is not None and self.evaluator.due_at_end(state.step):
            self.evaluate()
        if cfg.checkpoint.at_end:
            checkpointer.maybe_save(state, force=True)
        checkpointer.close()
        self.finish(SUMMARY_STATUS_COMPLETED)
        return 0

    def step(self) -> None:
        """One optimizer step: time it, log it, and check it is finite before anything saves it."""
        cfg, env, state, metrics = self.cfg, self.env, self.state, self.metrics
        assert metrics is not None
        self.watchdog.step_started(state.step + 1)
        self.profiler.before_step(state.step + 1)
        t0 = time.perf_counter()
        lr = self.scheduler.lr
        loss_scale = state.loss_scaler.scale if state.loss_scaler is not None else None
        loss, grad_norm, skipped = train_step(
            state,
            grad_accum=cfg.train.grad_accum,
            dp_size=self.dp_size,
            tp_size=cfg.parallel.tensor_parallel,
            grad_clip=cfg.train.grad_clip,
            device=env.device,
            teacher=self.teacher,
            distill=cfg.distill,
        )
        step_time = time.perf_counter() - t0
        state.step += 1
        state.consumed_samples += self.gbs
        self.watchdog.step_ended(state.step, step_time)
        self.profiler.after_step(state.step)
        self.summary["steps_completed"] = state.step  # what a failed summary reports
        record = metrics.log(
            step=state.step,
            loss=loss,
            lr=lr,
            grad_norm=grad_norm,
            step_time_s=step_time,
            mem_peak_gib=all_reduce_max(peak_memory_gib(env.device), env.device),
            skipped=skipped,
            loss_scale=loss_scale,
        )
        if env.is_main and (state.step % cfg.train.log_every == 0 or skipped):
            console.print(
                f"step {state.step:>6}/{cfg.train.steps}  loss {loss:.4f}  lr {lr:.2e}  gnorm {grad_norm:.3f}  "
                f"{record['tokens_per_s']:.0f} tok/s  {step_time * 1e3:.0f} ms"
                + (f"  [yellow]skipped: fp16 gradient overflow at loss scale {loss_scale:g}[/]" if skipped else "")
            )
        if not skipped:  # an fp16 overflow the scaler skipped left the weights as they were
            check_step(state.step, loss, grad_norm)  # before any checkpoint of this state

    def evaluate(self) -> None:
        """Evaluate on every rank, log the line (rank 0) and print it."""
        assert self.evaluator is not None and self.metrics is not None
        step = self.state.step
        result = self.evaluator.evaluate(self.model, step)
        self.metrics.log_eval(result.record())
        if self.env.is_main:
            console.print(
                f"eval at step {step}: loss {result.loss:.4f}  ppl {result.perplexity:.2f}  "
                f"({result.samples} sequences, {result.time_s:.1f} s)"
            )

    # --- finish --------------------------------------------------------------------------------

    def finish(self, status: str) -> None:
        """Write summary.json (rank 0): status, steps, medians, timing, the eval's, energy and watchdog fields.

        A collective (the energy is summed over ranks): every rank calls it.
        """
        metrics = self.metrics
        assert metrics is not None
        self.summary.update(
            status=status,
            steps_completed=self.state.step,
            final_loss=metrics.records[-1]["loss"] if metrics.records else None,
            skipped_steps=sum(r["skipped"] for r in metrics.records),
            **metrics.medians(self.cfg.train.summary_warmup_steps),
            **metrics.timing(),
            **(self.evaluator.summary_fields() if self.evaluator is not None else {}),
            **self.energy.summary_fields(self.state.step, tokens_per_step=self.gbs * self.cfg.model.seq_len),
            **self.watchdog.summary_fields(),
        )
        if self.env.is_main:
            write_json_in(self.run_dir.path, self.run_dir.summary, self.summary)

    def close(self) -> None:
        """Release what set-up opened, whatever ended the run."""
        self.watchdog.close()
        self.profiler.close()
        if self.metrics is not None:
            self.metrics.close()
        self.stop.uninstall()
        self.loader.close()
