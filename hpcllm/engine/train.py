"""One training step and the pieces the run is built from: batch arithmetic, summary fields, teacher.

``train_step`` is one optimizer step over ``grad_accum`` micro-batches; the run's life around it
(set-up, resume, loop, finish) is ``hpcllm.engine.trainer``; the batch-size probe
(``hpcllm.engine.probe``) steps with the same function. Neither knows how the model is sharded
(``parallelize`` does).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
import torch.distributed.checkpoint as dcp
from rich.console import Console
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from hpcllm.config.training import DistillConfig, ParallelConfig, TrainingConfig
from hpcllm.engine.checkpoint_find import describe_failures, resolve_checkpoint
from hpcllm.engine.dcp_metadata import SafeFileSystemReader
from hpcllm.engine.distributed import (
    DistEnv,
)
from hpcllm.engine.losses import cross_entropy_sum, distillation_sum
from hpcllm.engine.metrics import detect_gpu_type
from hpcllm.engine.model import GPT
from hpcllm.engine.optim import clip_grads_, grad_replicas, local_grads
from hpcllm.engine.parallelize import build_parallel_model, set_gradient_sync
from hpcllm.engine.state import TrainState
from hpcllm.engine.step_reductions import step_report, token_weight_sum
from hpcllm.engine.tensor_parallel import checkpoint_view, restore_from_view
from hpcllm.errors import ConfigError, HpcllmError

console = Console(highlight=False, soft_wrap=True)  # soft_wrap: one line per message in logs


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
    return {
        **run_setup_fields(cfg, env),
        "micro_batch_size": cfg.train.micro_batch_size,
        "global_batch_size": gbs,
    }


def run_setup_fields(cfg: TrainingConfig, env: DistEnv) -> dict[str, Any]:
    """The run's set-up as summary.json and probe.json record it (model, ranks, parallelism, device):
    one source, so a probe and the training runs it sizes describe themselves alike."""
    m, p = cfg.model, cfg.parallel
    return {
        "run_id": cfg.run_id,
        "model": m.name,
        "n_params": m.n_params(),
        "n_params_flops": m.n_params_flops(),
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "seq_len": m.seq_len,
        "world_size": env.world_size,
        "dp_size": p.data_parallel_size(env.world_size),
        "tensor_parallel": p.tensor_parallel,
        "grad_accum": cfg.train.grad_accum,
        "precision": p.precision,
        "sharding": p.sharding,
        "activation_checkpointing": p.activation_checkpointing,
        "ac_every": p.ac_every,
        "compile": p.compile,
        "gpu_type": recorded_gpu_type(cfg, env),
        "device": env.device.type,
    }


def recorded_gpu_type(cfg: TrainingConfig, env: DistEnv) -> str:
    """The GPU type summary.json and probe.json record: the configured or detected type, else CUDA's
    own device name, else "cpu"."""
    gpu = detect_gpu_type(env.device, cfg.metrics.gpu_type)
    if env.device.type == "cuda" and gpu is None:
        gpu = torch.cuda.get_device_name(env.device)
    return gpu or "cpu"


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
    view = checkpoint_view(state)  # tensor parallelism's strided rows, as saved
    try:
        dcp.load(view, storage_reader=SafeFileSystemReader(str(ckpt)))
        restore_from_view(state, view)
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
    tp_size: int = 1,
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
    n_tokens = token_weight_sum(micro_batches, dp_size, device, copies=tp_size)
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
            micro = cross_entropy_sum(logits, labels, batch["loss_mask"], grad_scale=scale)
        del logits  # the loss keeps what it needs; backward frees the logits once their gradient exists
        (micro * scale).backward()
        loss_sum += micro.detach()
    params = list(model.parameters())
    if scaler is not None:
        scaler.unscale_(params)
    grads = local_grads(params)
    # The TP ranks of a group compute the same loss: each reports 1/tp of it (tp is a power of two: exact).
    norm, loss_sum = step_report(grads, loss_sum / tp_size, grad_replicas(params, dp_size * tp_size))
    if grad_clip is not None:
        clip_grads_(grads, grad_clip, norm)
    skipped = scaler.update(float(norm)) if scaler is not None else False
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    return StepResult(float(loss_sum / n_tokens), float(norm), skipped)
