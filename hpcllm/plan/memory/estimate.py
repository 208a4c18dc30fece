"""Per-rank memory of a training run, term by term, so a user sees *why* a point does not fit.

The terms (docs/memory.md explains each with its formula):

- weights, gradients, optimizer: fp32 master weights, their fp32 gradients and AdamW's two fp32
  moments plus a step counter per tensor, each sharded over the shard group the way FSDP2 does it
  (every tensor split along its first dimension into equal, padded pieces);
- gathered: what is unsharded at once in the parameter dtype: the root group (embeddings, final
  norm, head), which FSDP2 keeps unsharded from forward to the end of backward, two blocks (the one
  computing and the one prefetched) and their unsharded gradients; on one device with BF_16, the
  bf16 copies autocast keeps of every matmul weight;
- activations: what the forward pass saves for backward (``hpcllm.plan.memory.activations``);
- loss: logits held by the train step and the loss's backward buffers;
- backward: one block's backward working set: the gradients of its largest intermediates and, with
  activation checkpointing, its recomputed activations;
- overhead: what tensors do not account for, one stated and sourced line each
  (``hpcllm.plan.memory.overhead``: CUDA context, communication buffers, allocator fragmentation).

Activations and gradients do not peak together: backward frees a block's activations as it
produces its gradients. The peak is the larger of "backward starts" (every activation, no
gradient yet, unless gradient accumulation keeps them) and "backward ends" (every gradient, one
block's activations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig, TrainingConfig
from hpcllm.plan.memory.activations import (
    BF16,
    FP32,
    ActivationBytes,
    Device,
    Numerics,
    activation_bytes,
    backward_working_bytes,
    loss_buffer_bytes,
)
from hpcllm.plan.memory.checkpoint import checkpoint_bytes
from hpcllm.plan.memory.layout import autocast_copy_numel, param_layout, sharded_param_bytes, unsharded_numel
from hpcllm.plan.memory.overhead import overhead_lines
from hpcllm.plan.memory.tensor_parallel import local_activations

GIB = 2**30

# AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype (fp32) and a 0-d fp32 step counter
# per parameter tensor (torch.optim.AdamW; fused on GPU, foreach on CPU).
ADAMW_MOMENTS = 2
ADAMW_STEP_BYTES = 4

# Blocks whose parameters are unsharded at once under FSDP2: the one computing and the next one,
# whose all-gather is issued early to overlap with the compute (implicit prefetching).
BLOCKS_IN_FLIGHT = 2

Phase = Literal["backward start", "backward end"]


@dataclass(frozen=True)
class Term:
    """One line of the breakdown: a name, its bytes, where they live and how they were computed."""

    name: str
    bytes: int
    location: Literal["device", "host"]
    detail: str

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass(frozen=True)
class MemorySpec:
    """Everything per-rank memory depends on (a TrainingConfig plus where it runs)."""

    model: ModelConfig
    parallel: ParallelConfig
    micro_batch_size: int
    world_size: int = 1
    ranks_per_node: int = 1
    device: Device = "cuda"
    grad_accum: int = 1
    teacher: ModelConfig | None = None

    @classmethod
    def of_training(cls, training: TrainingConfig, *, nodes: int, ranks_per_node: int, device: Device) -> MemorySpec:
        return cls(
            model=training.model,
            parallel=training.parallel,
            micro_batch_size=training.train.micro_batch_size,
            world_size=nodes * ranks_per_node,
            ranks_per_node=ranks_per_node,
            device=device,
            grad_accum=training.train.grad_accum,
            teacher=training.distill.teacher if training.distill is not None else None,
        )

    def with_mbs(self, micro_batch_size: int) -> MemorySpec:
        return MemorySpec(
            self.model,
            self.parallel,
            micro_batch_size,
            self.world_size,
            self.ranks_per_node,
            self.device,
            self.grad_accum,
            self.teacher,
        )

    @property
    def tp(self) -> int:
        return self.parallel.tensor_parallel

    @property
    def shard_group(self) -> int:
        """Ranks FSDP2 shards a parameter over: among the data-parallel ranks (the world / tp)."""
        return self.parallel.shard_group_size(self.world_size // self.tp, self.ranks_per_node // self.tp)

    @property
    def fsdp(self) -> bool:
        return self.parallel.data_parallelism(self.world_size) == "fsdp"

    @property
    def numerics(self) -> Numerics:
        return Numerics.of(self.parallel.precision, self.fsdp, self.device)


@dataclass(frozen=True)
class MemoryEstimate:
    """The breakdown of one rank's memory and the peak it adds up to."""

    spec: MemorySpec
    terms: tuple[Term, ...]
    peak_bytes: int  # on the device (GPU memory; host memory for CPU ranks), overhead included
    tensor_bytes: int  # the tensors alone at the peak: what torch.cuda.max_memory_allocated measures
    phase: Phase
    activations: ActivationBytes
    checkpoint_bytes: int  # one checkpoint on disk, all ranks together
    formula: str = field(default="")

    def term(self, name: str) -> Term:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def host_bytes(self) -> int:
        """Host memory a GPU rank needs for what CPU offload moved there (0 without offload)."""
        return sum(t.bytes for t in self.terms if t.location == "host")

    @property
    def overhead_bytes(self) -> int:
        """The non-tensor lines together (``hpcllm.plan.memory.overhead``)."""
        return self.peak_bytes - self.tensor_bytes

    def fits(self, capacity_gib: float) -> bool:
        return self.peak_bytes <= capacity_gib * GIB


# --- the estimate ------------------------------------------------------------------------------------


def estimate_memory(spec: MemorySpec) -> MemoryEstimate:
    """Every term of one rank's memory for ``spec`` and the peak (see the module docstring)."""
    model = spec.model
    offloaded = spec.parallel.cpu_offload and spec.device == "cuda"
    state_at: Literal["device", "host"] = "host" if offloaded else "device"
    terms = _state_terms(spec, state_at)
    act, loss, backward, working = _working_terms(spec)
    terms += working
    by_name = {term.name: term.bytes for term in terms}
    resident_names = ["weights", "optimizer", "teacher"] if state_at == "device" else []
    kept_grads = by_name["gradients"] if state_at == "device" else 0
    resident = sum(by_name.get(name, 0) for name in resident_names) + by_name["gathered"]
    keep_grads_across_micro_batches = spec.grad_accum > 1 and kept_grads > 0
    # The loss's buffers are gone before the first block's backward (the step keeps no logits).
    start = act.total + max(loss, backward) + (kept_grads if keep_grads_across_micro_batches else 0)
    end = kept_grads + act.block_full + backward
    phase: Phase = "backward start" if start >= end else "backward end"
    tensors = resident + max(start, end)
    lines = overhead_lines(spec.device, tensors)
    terms += [Term(line.name, line.bytes, "device", line.detail) for line in lines]
    overhead = sum(line.bytes for line in lines)
    parts = [n for n in resident_names if n in by_name] + ["gathered"]
    if phase == "backward start":
        parts += ["activations", "loss" if loss >= backward else "backward"]
        parts += ["gradients"] if keep_grads_across_micro_batches else []
    else:
        parts += (["gradients"] if kept_grads else []) + ["one block's activations + backward"]
    formula = " + ".join([*parts, "overhead"])
    return MemoryEstimate(
        spec, tuple(terms), tensors + overhead, tensors, phase, act, checkpoint_bytes(model, spec.world_size), formula
    )


def _state_terms(spec: MemorySpec, state_at: Literal["device", "host"]) -> list[Term]:
    """Weights, gradients, optimizer state (and a teacher's weights), and the all-gathered copies."""
    model, group = spec.model, spec.shard_group
    n_tensors = param_layout(model, group, spec.tp).n_tensors
    shard_note = f"sharded over {group} rank{'s' if group > 1 else ''}" + (" (padded)" if group > 1 else "")
    shard_note += f", blocks split over {spec.tp} TP ranks" if spec.tp > 1 else ""

    weights = sharded_param_bytes(model, group, tp=spec.tp)
    grads = weights
    optim = ADAMW_MOMENTS * weights + ADAMW_STEP_BYTES * n_tensors
    terms = [
        Term("weights", weights, state_at, f"fp32 master weights, {model.n_params():,} params {shard_note}"),
        Term("gradients", grads, state_at, f"fp32 gradients, {shard_note}"),
        Term("optimizer", optim, state_at, "AdamW exp_avg + exp_avg_sq (fp32) + a step counter per tensor"),
    ]
    if spec.teacher is not None:
        terms.append(
            Term(
                "teacher",
                sharded_param_bytes(spec.teacher, group),
                state_at,
                f"distillation teacher's fp32 weights ({spec.teacher.n_params():,} params), {shard_note}",
            )
        )
    terms.append(_gathered_term(spec))
    return terms


def _working_terms(spec: MemorySpec) -> tuple[ActivationBytes, int, int, list[Term]]:
    """What one micro-batch's forward and backward hold: activations, the loss's buffers and the
    backward's working set; returned with the byte counts the peak is built from."""
    model, par, num = spec.model, spec.parallel, spec.numerics
    terms: list[Term] = []
    t = model.seq_len
    act = activation_bytes(
        model,
        micro_batch_size=spec.micro_batch_size,
        seq_len=t,
        num=num,
        checkpointing=par.activation_checkpointing,
        ac_every=par.ac_every,
    )
    act = local_activations(act, model, spec.micro_batch_size, t, num, spec.tp)
    ac = par.activation_checkpointing
    ac_note = {
        "none": "no checkpointing",
        "full": "every block checkpointed",
        "selective": f"every {par.ac_every}th block checkpointed",
    }[ac]
    terms.append(
        Term(
            "activations",
            act.total,
            "device",
            f"saved for backward: MBS {spec.micro_batch_size} x seq {t}, {ac_note} "
            f"({act.n_full} full blocks of {act.block_full / GIB:.3g} GiB)",
        )
    )
    loss = loss_buffer_bytes(model, spec.micro_batch_size, t, num)
    loss_note = "cross-entropy: the logits (N x V) beside their kept gradient + one chunk's fp32 buffers"
    if spec.teacher is not None:
        # Teacher logits stay live through the student's loss; the KL term keeps three more fp32 N x V
        # tensors (both log-softmaxes' results and the probability-weighted difference).
        n_v = spec.micro_batch_size * t * model.vocab_size
        loss += n_v * num.compute + 4 * n_v * FP32
        loss_note += " + teacher logits, the student's fp32 log-softmax and the KL term's fp32 buffers (unchunked)"
    terms.append(Term("loss", loss, "device", loss_note))
    backward = backward_working_bytes(model, spec.micro_batch_size, t, num) // spec.tp
    backward_note = "one block's gradients of its largest intermediates"
    if act.n_checkpointed:
        backward += act.block_full
        backward_note += " + its recomputed activations (checkpointed)"
    terms.append(Term("backward", backward, "device", backward_note))
    return act, loss, backward, terms


def _gathered_term(spec: MemorySpec) -> Term:
    model, par = spec.model, spec.parallel
    if spec.fsdp:
        p = BF16 if par.precision != "FP_32" else FP32  # BF_16 and FP_16: 2-byte halves
        reduce_copy = FP32 if p != FP32 else 0  # FSDP2 reduces bf16 gradients in fp32: a cast copy
        block = unsharded_numel(model, spec.shard_group, blocks=True, tp=spec.tp)
        blocks = min(BLOCKS_IN_FLIGHT, model.n_layers)
        root = unsharded_numel(model, spec.shard_group, blocks=False, tp=spec.tp)
        kept = kept_gathered_blocks(par, model.n_layers)
        total = (root + (blocks + kept) * block) * p + root * p + block * (p + reduce_copy)
        dtype = {"BF_16": "bf16", "FP_16": "fp16"}.get(par.precision, "fp32")
        return Term(
            "gathered",
            total,
            "device",
            f"unsharded {dtype}: norm and head kept through backward, {blocks} "
            f"blocks in flight of {block:,} params"
            + (f", {kept} more kept gathered from forward (reshard_after_forward)" if kept else "")
            + ", and their unsharded gradients",
        )
    if par.precision != "FP_32":
        return Term(
            "gathered",
            autocast_copy_numel(model) * BF16,
            "device",
            "half-precision copies autocast keeps of every matmul weight (one device, no FSDP)",
        )
    return Term("gathered", 0, "device", "nothing: one device in fp32 uses its weights as they are")


def kept_gathered_blocks(par: ParallelConfig, n_layers: int) -> int:
    """Blocks besides the last that keep their gathered parameters from forward into backward
    (``parallel.reshard_after_forward``); the last is among the blocks in flight."""
    return sum(not par.reshards_after_forward(i, n_layers) for i in range(n_layers - 1))


def largest_fitting_mbs(spec: MemorySpec, capacity_gib: float, limit: int = 1 << 16) -> int:
    """The largest micro-batch whose estimate fits ``capacity_gib`` (0 if not even one sequence does).

    The estimate grows with MBS, so a doubling search then bisection finds it in O(log MBS) estimates.
    """

    def fits(mbs: int) -> bool:
        return estimate_memory(spec.with_mbs(mbs)).fits(capacity_gib)

    if not fits(1):
        return 0
    lo, hi = 1, 2  # lo fits; hi is the first candidate not known to fit
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
