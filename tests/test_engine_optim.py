"""Optimizer groups, LR schedules, clipping, gradient accumulation, loss masking, distillation."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import OptimConfig, ScheduleConfig
from hpcllm.engine.losses import cross_entropy_sum, distillation_sum
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.optim import (
    Scheduler,
    build_optimizer,
    clip_grads_,
    grad_norm_sq_share,
    grad_replicas,
    local_grads,
    lr_at,
    param_groups,
)
from hpcllm.engine.state import TrainState
from hpcllm.engine.train import train_step


def tiny_model(**overrides: object) -> GPT:
    model = GPT(ModelConfig.from_name("tiny", seq_len=32, **overrides))
    init_weights(model, 0)
    return model


# --- schedules ---------------------------------------------------------------------------------


def lr(name: str, step: int, **kw: float) -> float:
    cfg = ScheduleConfig(name=name, **kw)
    return lr_at(step, base_lr=1.0, total_steps=110, cfg=cfg)


def test_warmup_is_linear_and_never_zero() -> None:
    assert [lr("constant", s, warmup_steps=10) for s in (0, 4, 9, 10, 50)] == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0])


def test_linear_schedule_values() -> None:
    kw = dict(warmup_steps=10, min_lr_ratio=0.1)
    assert lr("linear", 10, **kw) == pytest.approx(1.0)
    assert lr("linear", 10 + 99 // 3, **kw) == pytest.approx(1.0 - 0.9 / 3)
    assert lr("linear", 109, **kw) == pytest.approx(0.1)


def test_cosine_schedule_values() -> None:
    kw = dict(warmup_steps=10, min_lr_ratio=0.0)
    assert lr("cosine", 10, **kw) == pytest.approx(1.0)
    assert lr("cosine", 10 + 99 // 3, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))
    assert lr("cosine", 109, **kw) == pytest.approx(0.0, abs=1e-12)


def test_wsd_schedule_is_stable_then_decays_linearly() -> None:
    kw = dict(warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)  # decay over the last 22 steps
    assert lr("wsd", 5, **kw) == pytest.approx(0.6)
    assert lr("wsd", 87, **kw) == pytest.approx(1.0)
    assert lr("wsd", 88, **kw) == pytest.approx(1 - 1 / 22)  # every decay step is below the peak
    assert lr("wsd", 88 + 10, **kw) == pytest.approx(1 - 11 / 22)
    assert lr("wsd", 109, **kw) == pytest.approx(0.0)


def test_step_decay_multiplies_by_gamma_every_step_size_steps_after_warmup() -> None:
    kw = dict(warmup_steps=10, gamma=0.5, step_size=30)
    # Warmup as for every schedule, then k = step - 10: factor 0.5 ** (k // 30).
    assert [lr("step", s, **kw) for s in (4, 10, 39, 40, 69, 70, 109)] == pytest.approx(
        [0.5, 1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    )


def test_exponential_decay_multiplies_by_gamma_every_step_after_warmup() -> None:
    kw = dict(warmup_steps=10, gamma=0.99)
    assert [lr("exponential", s, **kw) for s in (9, 10, 11, 60, 109)] == pytest.approx(
        [1.0, 1.0, 0.99, 0.99**50, 0.99**99]
    )


def test_step_and_exponential_match_pytorchs_schedulers() -> None:
    """Same values as torch.optim.lr_scheduler.StepLR / ExponentialLR (no warmup)."""
    for name, torch_sched, kw in (
        ("step", torch.optim.lr_scheduler.StepLR, dict(step_size=7, gamma=0.3)),
        ("exponential", torch.optim.lr_scheduler.ExponentialLR, dict(gamma=0.95)),
    ):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        ref = torch_sched(opt, **kw)
        expected = []
        for _ in range(30):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            ref.step()
        ours = [lr_at(s, base_lr=2.0, total_steps=30, cfg=ScheduleConfig(name=name, **kw)) for s in range(30)]
        assert ours == pytest.approx(expected), name


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(name="step", gamma=0.5), "step_size is required with name: step"),
        (dict(name="exponential"), "gamma is required with name: exponential"),
        (dict(name="cosine", gamma=0.5), "gamma is only used by name: step and exponential"),
        (dict(name="exponential", gamma=0.9, step_size=3), "step_size is only used by name: step"),
        (dict(name="step", gamma=1.5, step_size=3), "less than or equal to 1"),
    ],
    ids=["step-without-step_size", "exponential-without-gamma", "gamma-on-cosine", "step_size-on-exp", "gamma>1"],
)
def test_decay_factor_errors_say_which_schedule_uses_them(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kw)


@pytest.mark.parametrize("name", ["linear", "cosine", "wsd"])
def test_a_one_step_decay_still_reaches_the_minimum(name: str) -> None:
    cfg = ScheduleConfig(name=name, warmup_steps=9, min_lr_ratio=0.1, decay_fraction=0.1)
    assert lr_at(9, base_lr=1.0, total_steps=10, cfg=cfg) == pytest.approx(0.1)


def test_scheduler_sets_the_optimizer_lr_and_resumes_from_its_state() -> None:
    model = tiny_model()
    cfg = ScheduleConfig(name="cosine", warmup_steps=2)
    opt = build_optimizer(model, OptimConfig(), lr=0.0)
    sched = Scheduler(opt, base_lr=1.0, total_steps=10, cfg=cfg)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    for _ in range(4):
        sched.step()
    other = Scheduler(build_optimizer(model, OptimConfig(), lr=0.0), base_lr=1.0, total_steps=10, cfg=cfg)
    other.load_state_dict(sched.state_dict())
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(4, base_lr=1.0, total_steps=10, cfg=cfg))


# --- weight decay groups -------------------------------------------------------------------------


def test_weight_decay_skips_norms_biases_and_embeddings_by_default() -> None:
    model = tiny_model(bias=True, tie_embeddings=False, pos_emb="learned")
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.blocks[0].attn.qkv.weight) in decayed
    assert id(model.head.weight) in decayed
    for p in (model.tok_emb.weight, model.pos_emb.weight, model.norm.weight, model.blocks[0].attn.qkv.bias):
        assert id(p) not in decayed
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))


def test_weight_decay_options_add_embeddings_norms_and_biases() -> None:
    model = tiny_model(bias=True)
    cfg = OptimConfig(weight_decay=0.1, decay_embeddings=True, decay_norms_and_biases=True)
    groups = param_groups(model, cfg)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


# --- clipping ----------------------------------------------------------------------------------


def _with_grads(scale: float) -> GPT:
    model = tiny_model()
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return model


def _norm(model: GPT) -> float:
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()


def test_clipping_caps_the_global_norm_and_reports_the_norm_before() -> None:
    model = _with_grads(1.0)
    before = _norm(model)
    assert before > 1.0
    grads = local_grads(list(model.parameters()))
    reported = grad_norm_sq_share(grads, replicas=1).sqrt()
    assert reported.item() == pytest.approx(before, rel=1e-5)
    clip_grads_(grads, 1.0, reported)
    assert _norm(model) == pytest.approx(1.0, rel=1e-4)


def test_clipping_leaves_a_norm_below_the_cap_alone() -> None:
    model = _with_grads(1e-3)
    before = [p.grad.clone() for p in model.parameters()]
    grads = local_grads(list(model.parameters()))
    clip_grads_(grads, 1.0, grad_norm_sq_share(grads, replicas=1).sqrt())
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before, strict=True))


def test_norm_share_divides_by_the_replicas_so_ranks_sum_to_the_global_norm() -> None:
    """Under DDP every one of 4 ranks holds the whole gradient: each contributes a quarter."""
    model = _with_grads(1.0)
    grads = local_grads(list(model.parameters()))
    assert grad_replicas(list(model.parameters()), world_size=4) == 4  # plain gradients: replicated
    assert (4 * grad_norm_sq_share(grads, replicas=4)).sqrt().item() == pytest.approx(_norm(model), rel=1e-5)


def test_build_optimizer_uses_the_fused_kernel_on_cpu() -> None:
    opt = build_optimizer(tiny_model(), OptimConfig(), lr=1e-3)
    assert all(g["fused"] for g in opt.param_groups)


# --- gradient accumulation and loss masking through the real train step --------------------------


class ListLoader:
    """Yields prepared micro-batches (the TrainLoader contract without a store)."""

    def __init__(self, batches: list[dict[str, torch.Tensor | None]]) -> None:
        self._it: Iterator[dict[str, torch.Tensor | None]] = iter(batches)

    def __next__(self) -> dict[str, torch.Tensor | None]:
        return next(self._it)

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        pass


def _batch(idx: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
    return {"input_ids": idx[:, :-1], "labels": idx[:, 1:], "loss_mask": mask}


def _step(model: GPT, batches: list[dict], grad_accum: int) -> tuple[float, float, GPT]:
    opt = build_optimizer(model, OptimConfig(), lr=1e-3)
    state = TrainState(
        model=model,
        optimizer=opt,
        scheduler=Scheduler(opt, base_lr=1e-3, total_steps=10, cfg=ScheduleConfig()),
        loader=ListLoader(batches),
    )
    loss, norm, _ = train_step(state, grad_accum=grad_accum, dp_size=1, grad_clip=1.0, device=torch.device("cpu"))
    return loss, norm, model


@pytest.mark.parametrize("masked", ["none", "mask", "weights"], ids=["no-mask", "mask", "weights"])
def test_gradient_accumulation_equals_one_big_batch(masked: str) -> None:
    torch.manual_seed(0)
    idx = torch.randint(0, 512, (4, 33))
    mask = {"none": None, "mask": (torch.rand(4, 32) > 0.3).float(), "weights": torch.rand(4, 32)}[masked]
    big = _step(tiny_model(), [_batch(idx, mask)], grad_accum=1)
    halves = [_batch(idx[i : i + 2], None if mask is None else mask[i : i + 2]) for i in (0, 2)]
    acc = _step(tiny_model(), halves, grad_accum=2)
    assert acc[0] == pytest.approx(big[0], rel=1e-5)
    assert acc[1] == pytest.approx(big[1], rel=1e-4)
    for a, b in zip(acc[2].parameters(), big[2].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)  # Adam steps are ~1e-3


def test_loss_masking_zeroes_the_gradient_of_masked_tokens() -> None:
    logits = torch.randn(2, 8, 512, requires_grad=True)
    labels = torch.randint(0, 512, (2, 8))
    mask = torch.ones(2, 8)
    mask[:, :5] = 0
    cross_entropy_sum(logits, labels, mask).backward()
    assert torch.all(logits.grad[:, :5] == 0)
    assert torch.all(logits.grad[:, 5:].abs().sum(-1) > 0)


def test_loss_masking_mean_is_over_unmasked_tokens_only() -> None:
    torch.manual_seed(0)
    idx = torch.randint(0, 512, (2, 33))
    mask = torch.zeros(2, 32)
    mask[:, 20:] = 1
    changed = idx.clone()
    changed[:, 1:21] = torch.randint(0, 512, (2, 20))  # different labels at masked positions only
    loss_a, _, model_a = _step(tiny_model(), [_batch(idx, mask)], 1)
    # Same inputs, different masked labels: the labels are only read where the mask is 1.
    batch_b = {"input_ids": idx[:, :-1], "labels": changed[:, 1:], "loss_mask": mask}
    loss_b, _, model_b = _step(tiny_model(), [batch_b], 1)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        logits = tiny_model()(idx[:, :-1])
        expected = cross_entropy_sum(logits, idx[:, 1:], mask) / mask.sum()
    assert loss_a == pytest.approx(expected.item(), rel=1e-5)


def test_loss_weights_give_the_weighted_mean_and_scale_each_tokens_gradient() -> None:
    """Loss = Σ w·ce / Σ w over the step: a token's gradient is w times its unweighted share."""
    torch.manual_seed(0)
    idx = torch.randint(0, 512, (2, 33))
    weights = torch.rand(2, 32)
    weights[0, :8] = 0.0
    loss, _, _ = _step(tiny_model(), [_batch(idx, weights)], 1)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(
            tiny_model()(idx[:, :-1]).flatten(0, 1), idx[:, 1:].reshape(-1), reduction="none"
        )
    assert loss == pytest.approx(((ce * weights.reshape(-1)).sum() / weights.sum()).item(), rel=1e-5)
    # Per-token gradients: scaling one weight scales exactly that token's logit gradient.
    logits = torch.randn(1, 4, 16, requires_grad=True)
    labels = torch.randint(0, 16, (1, 4))
    w = torch.tensor([[1.0, 0.5, 0.1, 0.0]])
    cross_entropy_sum(logits, labels, w).backward()
    unweighted = logits.detach().requires_grad_()  # plain autograd: the chunked loss is a custom Function
    cross_entropy_sum(unweighted, labels, None).backward()
    assert unweighted.grad is not None
    torch.testing.assert_close(logits.grad, unweighted.grad * w[..., None])


# --- distillation ------------------------------------------------------------------------------


def test_distillation_with_teacher_equal_to_student_has_zero_kl() -> None:
    logits = torch.randn(2, 8, 64)
    labels = torch.randint(0, 64, (2, 8))
    assert distillation_sum(logits, logits, labels, None, alpha=1.0, temperature=2.0).item() == pytest.approx(
        0, abs=1e-4
    )
    ce = cross_entropy_sum(logits, labels, None)
    mixed = distillation_sum(logits, logits, labels, None, alpha=0.3, temperature=2.0)
    assert mixed.item() == pytest.approx(0.7 * ce.item(), rel=1e-5)


def test_distillation_kl_matches_formula_and_pulls_student_to_teacher() -> None:
    student = torch.randn(1, 4, 16, requires_grad=True)
    teacher = torch.randn(1, 4, 16)
    labels = torch.randint(0, 16, (1, 4))
    t = 2.0
    got = distillation_sum(student, teacher, labels, None, alpha=1.0, temperature=t)
    p_t = torch.softmax(teacher / t, -1)
    ref = t * t * (p_t * (p_t.log() - torch.log_softmax(student / t, -1))).sum()
    torch.testing.assert_close(got, ref)
    got.backward()
    moved = student - 0.5 * student.grad
    closer = distillation_sum(moved, teacher, labels, None, alpha=1.0, temperature=t)
    assert closer.item() < got.item()


def test_train_step_with_teacher_copy_has_the_ce_gradient_scaled() -> None:
    torch.manual_seed(0)
    idx = torch.randint(0, 512, (2, 33))
    student = tiny_model()
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    from hpcllm.config.training import DistillConfig

    dcfg = DistillConfig(teacher=student.cfg, teacher_checkpoint="unused", alpha=0.5, temperature=1.0)
    opt = build_optimizer(student, OptimConfig(), lr=1e-3)
    state = TrainState(
        model=student,
        optimizer=opt,
        scheduler=Scheduler(opt, base_lr=1e-3, total_steps=10, cfg=ScheduleConfig()),
        loader=ListLoader([_batch(idx)]),
    )
    loss, _, _ = train_step(
        state, grad_accum=1, dp_size=1, grad_clip=None, device=torch.device("cpu"), teacher=teacher, distill=dcfg
    )
    with torch.no_grad():
        ce = cross_entropy_sum(teacher(idx[:, :-1]), idx[:, 1:], None) / idx[:, 1:].numel()
    assert loss == pytest.approx(0.5 * ce.item(), rel=1e-5)
