"""The train loop: build the state, resume, step, log, checkpoint, stop on request, summarise.

``train`` reads top to bottom as the run's life; ``train_step`` is one optimizer step over
``grad_accum`` micro-batches. Neither knows how the model is sharded (``parallelize`` does).
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed.checkpoint as dcp
from rich.console import Console
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from hpcllm.config.loader import load_model
from hpcllm.config.training import DistillConfig, ParallelConfig, TrainingConfig
from hpcllm.engine.checkpoint import Checkpointer, describe_failures, resolve_checkpoint
from hpcllm.engine.data import build_train_loader
from hpcllm.engine.distributed import (
    DistEnv,
    all_reduce_max,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from hpcllm.engine.evaluate import Evaluator, build_evaluator
from hpcllm.engine.guards import NonFiniteError, check_step
from hpcllm.engine.loss_scale import build_loss_scaler
from hpcllm.engine.losses import cross_entropy_sum, distillation_sum
from hpcllm.engine.metrics import MetricsLog, Throughput, detect_gpu_type, peak_memory_gib, token_flops
from hpcllm.engine.model import GPT
from hpcllm.engine.optim import Scheduler, build_optimizer, clip_grads_, grad_replicas, local_grads, lr_at
from hpcllm.engine.parallelize import build_mesh, build_parallel_model, describe_layout, set_gradient_sync
from hpcllm.engine.preemption import StopRequest
from hpcllm.engine.profiling import StepProfiler
from hpcllm.engine.runtime import record_runtime
from hpcllm.engine.state import TrainState
from hpcllm.engine.step_reductions import step_report, token_weight_sum
from hpcllm.engine.tracking import open_sinks
from hpcllm.engine.warm_start import load_initial_weights
from hpcllm.errors import ConfigError, HpcllmError
from hpcllm.fsutil import atomic_write_json
from hpcllm.rundir import (
    EXIT_PREEMPTED,
    SUMMARY_STATUS_COMPLETED,
    SUMMARY_STATUS_FAILED,
    SUMMARY_STATUS_PREEMPTED,
    RunDir,
)
from hpcllm.sitepaths import expand_site_paths

EXIT_CONFIG_ERROR = 2
console = Console(highlight=False, soft_wrap=True)  # soft_wrap: one line per message in logs
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def restart_count() -> int:
    """How many times this run was restarted: HPCLLM_RESTART_COUNT, else SLURM_RESTART_COUNT, else 0."""
    for var in ("HPCLLM_RESTART_COUNT", "SLURM_RESTART_COUNT"):
        if os.environ.get(var, "").strip():
            return int(os.environ[var])
    return 0


def global_batch_size(cfg: TrainingConfig, dp_size: int, source: str) -> int:
    """MBS × grad_accum × data-parallel size, checked against ``train.global_batch_size`` if given."""
    t = cfg.train
    gbs = t.micro_batch_size * t.grad_accum * dp_size
    if t.global_batch_size is not None and t.global_batch_size != gbs:
        raise ConfigError(
            f"{source}: train.global_batch_size: {t.global_batch_size} != micro_batch_size "
            f"{t.micro_batch_size} x grad_accum {t.grad_accum} x data-parallel size {dp_size} = {gbs}; "
            "change one of them or leave global_batch_size out"
        )
    return gbs


def summary_fields(cfg: TrainingConfig, env: DistEnv, gbs: int) -> dict[str, Any]:
    """The config and hardware fields of summary.json that the collector puts in its table."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    gpu = detect_gpu_type(env.device, cfg.metrics.gpu_type)
    if env.device.type == "cuda" and gpu is None:
        gpu = torch.cuda.get_device_name(env.device)
    return {
        "run_id": cfg.run_id,
        "model": m.name,
        "n_params": m.n_params(),
        "n_params_flops": m.n_params_flops(),
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "seq_len": m.seq_len,
        "world_size": env.world_size,
        "dp_size": env.world_size,
        "micro_batch_size": t.micro_batch_size,
        "grad_accum": t.grad_accum,
        "global_batch_size": gbs,
        "precision": p.precision,
        "sharding": p.sharding,
        "activation_checkpointing": p.activation_checkpointing,
        "ac_every": p.ac_every,
        "compile": p.compile,
        "gpu_type": gpu or "cpu",
        "device": env.device.type,
    }


def check_data_vocab(cfg: TrainingConfig, data_vocab: int, source: str) -> None:
    """The embedding must have a row for every token id in the data (training and probes)."""
    if data_vocab > cfg.model.vocab_size:
        raise ConfigError(
            f"{source}: model.vocab_size: {cfg.model.vocab_size} is smaller than the data's tokenizer "
            f"vocabulary ({data_vocab} ids); set model.vocab_size >= {data_vocab}"
        )


def peak_flops_per_device(cfg: TrainingConfig, env: DistEnv) -> float | None:
    """The per-device peak MFU is measured against, or None (MFU null) when none is known."""
    from hpcllm import perf

    if env.device.type == "cuda":
        gpu = detect_gpu_type(env.device, cfg.metrics.gpu_type)
        return perf.peak_flops(gpu) if gpu else None
    return cfg.metrics.cpu_peak_flops


# --- distillation ---------------------------------------------------------------------------------


def build_teacher(
    dcfg: DistillConfig,
    pcfg: ParallelConfig,
    mesh: Any,
    env: DistEnv,
    seed: int,
    student_vocab: int,
    student_seq_len: int,
) -> GPT:
    """The frozen teacher: sharded like the student, weights from its checkpoint, eval mode."""
    if dcfg.teacher.vocab_size != student_vocab:
        raise ConfigError(
            f"distill.teacher.vocab_size: {dcfg.teacher.vocab_size} must equal model.vocab_size "
            f"{student_vocab} (the KL term compares distributions over the same vocabulary)"
        )
    if dcfg.teacher.seq_len < student_seq_len:
        raise ConfigError(
            f"distill.teacher.seq_len: {dcfg.teacher.seq_len} is shorter than model.seq_len "
            f"{student_seq_len}: the teacher must see the student's whole training sequences"
        )
    ckpt = resolve_checkpoint(dcfg.teacher_checkpoint, "distill.teacher_checkpoint")
    teacher_parallel = pcfg.model_copy(update={"activation_checkpointing": "none"})  # no backward
    teacher = build_parallel_model(dcfg.teacher, teacher_parallel, mesh, env.device, seed, trainable=False)
    state = {"model": get_model_state_dict(teacher)}
    try:
        dcp.load(state, checkpoint_id=str(ckpt))
    except Exception as exc:
        raise HpcllmError(
            f"distill.teacher_checkpoint: cannot load {ckpt} into the teacher architecture "
            f"({dcfg.teacher.name}, {dcfg.teacher.n_layers} layers, d_model {dcfg.teacher.d_model}): "
            f"{describe_failures(exc) if isinstance(exc, CheckpointException) else exc}"
        ) from None
    set_model_state_dict(teacher, state["model"])
    teacher.requires_grad_(False)
    return teacher.eval()


# --- one optimizer step ---------------------------------------------------------------------------


class StepResult(NamedTuple):
    """What one optimizer step reports. ``skipped``: FP_16's loss scaler found an inf/NaN gradient
    and left the weights alone (``grad_norm`` is then not finite; the step still counts)."""

    loss: float
    grad_norm: float
    skipped: bool = False


def train_step(
    state: TrainState,
    *,
    grad_accum: int,
    dp_size: int,
    grad_clip: float | None,
    device: torch.device,
    teacher: GPT | None = None,
    distill: DistillConfig | None = None,
) -> StepResult:
    """One optimizer step over ``grad_accum`` micro-batches.

    The loss is the weighted mean over the tokens of the step (all micro-batches, all ranks), with
    the per-token loss weights (1 without any): each micro-batch's weighted loss *sum* is divided
    by the global weight sum, times ``dp_size`` because FSDP2 and DDP average gradients over ranks.
    Gradients are reduced across ranks only on the last micro-batch. With a loss scaler (FP_16)
    the backward runs on the scaled loss, and a step with a non-finite gradient norm is skipped.

    Besides the gradient reduction, one small all-reduce per step carries both values the step
    reports, the global gradient norm and the loss sum (``step_report``); the host waits for it
    only after the optimizer step has been issued (before it with FP_16, whose skip decision
    needs the norm).
    """
    model, optimizer, scaler = state.model, state.optimizer, state.loss_scaler
    micro_batches = [next(state.loader) for _ in range(grad_accum)]
    n_tokens = token_weight_sum(micro_batches, dp_size, device)
    scale = dp_size / n_tokens
    if isinstance(scale, torch.Tensor):
        scale = scale.float()  # the dtype of the loss it multiplies
    if scaler is not None:
        scale = scale * scaler.scale
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, batch in enumerate(micro_batches):
        set_gradient_sync(model, i == grad_accum - 1)
        logits = model(batch["input_ids"])
        labels = batch["labels"]
        assert labels is not None  # of a micro-batch's entries only the loss mask may be None
        if teacher is not None and distill is not None:
            with torch.no_grad():
                teacher_logits = teacher(batch["input_ids"])
            micro = distillation_sum(
                logits, teacher_logits, labels, batch["loss_mask"], alpha=distill.alpha, temperature=distill.temperature
            )
        else:
            micro = cross_entropy_sum(logits, labels, batch["loss_mask"])
        (micro * scale).backward()
        loss_sum += micro.detach()
    params = list(model.parameters())
    if scaler is not None:
        scaler.unscale_(params)
    grads = local_grads(params)
    norm, loss_sum = step_report(grads, loss_sum, grad_replicas(params, dp_size))
    if grad_clip is not None:
        clip_grads_(grads, grad_clip, norm)
    skipped = scaler.update(float(norm)) if scaler is not None else False
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    return StepResult(float(loss_sum / n_tokens), float(norm), skipped)


# --- the run ---------------------------------------------------------------------------------------


def train(cfg: TrainingConfig, run_dir: RunDir, env: DistEnv, *, resume: bool, summary: dict[str, Any]) -> int:
    """Run (or continue) training to ``train.steps``; returns the process exit code."""
    started = time.monotonic()
    torch.manual_seed(cfg.seed)
    source = str(run_dir.config)
    dp_size = env.world_size
    gbs = global_batch_size(cfg, dp_size, source)
    summary.update(summary_fields(cfg, env, gbs))
    record_runtime(run_dir, env, restart=restart_count())
    mesh = build_mesh(cfg.parallel, env)
    model = build_parallel_model(cfg.model, cfg.parallel, mesh, env.device, cfg.seed)
    loader = build_train_loader(
        cfg.data,
        seq_len=cfg.model.seq_len,
        micro_batch_size=cfg.train.micro_batch_size,
        dp_rank=env.rank,
        dp_size=dp_size,
        seed=cfg.seed,
        device=env.device,
    )
    check_data_vocab(cfg, loader.vocab_size, source)
    teacher = (
        build_teacher(cfg.distill, cfg.parallel, mesh, env, cfg.seed, cfg.model.vocab_size, cfg.model.seq_len)
        if cfg.distill is not None
        else None
    )
    evaluator = build_evaluator(cfg, env)
    profiler = StepProfiler(cfg.profile, run_dir, env)
    total = cfg.train.steps
    horizon = cfg.schedule.total_steps or total  # a longer schedule: stop early, resume later on it
    optimizer = build_optimizer(model, cfg.optim, lr_at(0, base_lr=cfg.optim.lr, total_steps=horizon, cfg=cfg.schedule))
    scheduler = Scheduler(optimizer, base_lr=cfg.optim.lr, total_steps=horizon, cfg=cfg.schedule)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=loader,
        loss_scaler=build_loss_scaler(cfg.parallel),
    )

    checkpointer = Checkpointer(run_dir, cfg.checkpoint)
    stop = StopRequest(run_dir)
    stop.install()
    resumed = resume and cfg.checkpoint.resume and checkpointer.load_latest(state)
    if cfg.init_from is not None and not resumed:  # warm start: weights only, the rest starts fresh
        state.init_from = str(load_initial_weights(model, cfg.init_from, cfg.model))
    summary["init_from"] = state.init_from

    metrics = MetricsLog(
        path=run_dir.metrics,
        throughput=Throughput(
            gbs, cfg.model.seq_len, token_flops(cfg), env.world_size, peak_flops_per_device(cfg, env)
        ),
        restart=restart_count(),
        log_every=cfg.train.log_every,
        enabled=env.is_main,
        started=started,
        sinks=open_sinks(cfg, run_dir, resume_step=state.step) if env.is_main else [],
    )
    if env.is_main:
        console.print(
            f"[bold]{cfg.run_id}[/]: {cfg.model.n_params() / 1e6:.1f}M params, {env.world_size} rank(s) on "
            f"{env.device.type}, {describe_layout(cfg.parallel, mesh)}"
            f"/{cfg.parallel.precision}, GBS {gbs} x "
            f"seq {cfg.model.seq_len} = {gbs * cfg.model.seq_len} tokens/step, start at step {state.step}/{total}"
            + (f", weights from {state.init_from}" if state.init_from else "")
        )

    def finish(status: str) -> None:
        summary.update(
            status=status,
            steps_completed=state.step,
            final_loss=metrics.records[-1]["loss"] if metrics.records else None,
            skipped_steps=sum(r["skipped"] for r in metrics.records),
            **metrics.medians(cfg.train.summary_warmup_steps),
            **metrics.timing(),
            **(evaluator.summary_fields() if evaluator is not None else {}),
        )
        if env.is_main:
            atomic_write_json(run_dir.summary, summary, make_parents=False)

    try:
        while state.step < total:
            profiler.before_step(state.step + 1)
            t0 = time.perf_counter()
            lr = scheduler.lr
            loss_scale = state.loss_scaler.scale if state.loss_scaler is not None else None
            loss, grad_norm, skipped = train_step(
                state,
                grad_accum=cfg.train.grad_accum,
                dp_size=dp_size,
                grad_clip=cfg.train.grad_clip,
                device=env.device,
                teacher=teacher,
                distill=cfg.distill,
            )
            step_time = time.perf_counter() - t0
            state.step += 1
            state.consumed_samples += gbs
            profiler.after_step(state.step)
            summary["steps_completed"] = state.step  # what a failed summary reports
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
                    f"step {state.step:>6}/{total}  loss {loss:.4f}  lr {lr:.2e}  gnorm {grad_norm:.3f}  "
                    f"{record['tokens_per_s']:.0f} tok/s  {step_time * 1e3:.0f} ms"
                    + (f"  [yellow]skipped: fp16 gradient overflow at loss scale {loss_scale:g}[/]" if skipped else "")
                )
            if not skipped:  # an fp16 overflow the scaler skipped left the weights as they were
                check_step(state.step, loss, grad_norm)  # before any checkpoint of this state
            if evaluator is not None and evaluator.due(state.step):
                _evaluate(evaluator, model, state.step, metrics, env)
            checkpointer.maybe_save(state)
            if stop.should_stop():
                checkpointer.maybe_save(state, force=True)
                checkpointer.close()
                finish(SUMMARY_STATUS_PREEMPTED)
                if env.is_main:
                    console.print(f"stopped at step {state.step} ({stop.reason}); checkpoint saved")
                return EXIT_PREEMPTED
        if evaluator is not None and evaluator.due_at_end(state.step):
            _evaluate(evaluator, model, state.step, metrics, env)
        if cfg.checkpoint.at_end:
            checkpointer.maybe_save(state, force=True)
        checkpointer.close()
        finish(SUMMARY_STATUS_COMPLETED)
        return 0
    except NonFiniteError as exc:
        summary["failed_step"] = exc.step
        checkpointer.close()  # an async save of an earlier, finite step still completes
        raise
    finally:
        profiler.close()
        metrics.close()
        stop.uninstall()
        loader.close()


def _evaluate(evaluator: Evaluator, model: torch.nn.Module, step: int, metrics: MetricsLog, env: DistEnv) -> None:
    """Evaluate on every rank, log the line (rank 0) and print it."""
    result = evaluator.evaluate(model, step)
    metrics.log_eval(result.record())
    if env.is_main:
        console.print(
            f"eval at step {step}: loss {result.loss:.4f}  ppl {result.perplexity:.2f}  "
            f"({result.samples} sequences, {result.time_s:.1f} s)"
        )


def run(config_path: Path, *, resume: bool = True) -> int:
    """Entry point of ``python -m hpcllm.engine``: set up ranks, train, and always leave a summary."""
    config_path = Path(config_path)
    run_dir = RunDir(config_path.parent)
    rank = int(os.environ.get("RANK", "0"))
    summary: dict[str, Any] = {"run_id": run_dir.run_id}
    try:
        # $CINECA_SCRATCH/... and ~/... in paths mean this node's values (docs/sites.md).
        cfg = expand_site_paths(load_model(TrainingConfig, config_path), str(config_path))
        summary["run_id"] = cfg.run_id
        env = init_distributed(cfg.device, cpu_collectives=cfg.parallel.cpu_offload)
        try:
            from hpcllm.engine.probe import run_probe  # here, not at the top: probe.py builds on this module

            code = (run_probe if cfg.probe is not None else train)(cfg, run_dir, env, resume=resume, summary=summary)
            # Leave together: a rank that tears gloo down while a peer is still publishing a
            # checkpoint or writing the summary can abort that peer (seen once under load in CI).
            barrier()
            return code
        finally:
            shutdown_distributed()
    except HpcllmError as exc:
        _write_failed(run_dir, summary, str(exc), rank)
        if rank == 0:
            err_console.print(f"[red]error:[/] {exc}")
        return EXIT_CONFIG_ERROR if isinstance(exc, ConfigError) else 1
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            _write_failed(run_dir, summary, "".join(traceback.format_exception(exc)), rank)
        raise


def _write_failed(run_dir: RunDir, summary: dict[str, Any], error: str, rank: int) -> None:
    if rank == 0:
        summary.update(status=SUMMARY_STATUS_FAILED, error=error)
        summary.setdefault("steps_completed", 0)
        atomic_write_json(run_dir.summary, summary, make_parents=False)
