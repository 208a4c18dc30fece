"""The eval pass: mean loss and perplexity of the model on a fixed eval set, on all ranks.

Why it cannot disturb training: it runs under ``torch.no_grad`` in eval mode on batches built once
at start-up by their own sampler (``hpcllm.engine.data.build_eval_batches``), draws no random
numbers, and leaves the training loader, optimizer and RNG states untouched. A run with and without
eval, or resumed between evaluations, trains on the same batches with the same losses (tested).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from hpcllm.config.evaluation import EvalConfig
from hpcllm.config.training import TrainingConfig
from hpcllm.engine.data import build_eval_batches
from hpcllm.engine.distributed import DistEnv, all_reduce_sum
from hpcllm.engine.losses import cross_entropy_sum


@dataclass(frozen=True)
class EvalResult:
    step: int
    loss: float  # mean cross-entropy (nats) over the eval set's unmasked tokens
    samples: int
    tokens: int
    time_s: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf  # exp overflows past ~709

    def record(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` fields of this evaluation (docs/run-contract.md)."""
        return {
            "step": self.step,
            "eval_loss": self.loss,
            "eval_ppl": self.perplexity,
            "eval_samples": self.samples,
            "eval_tokens": self.tokens,
            "eval_time_s": self.time_s,
        }


class Evaluator:
    """Holds this rank's eval batches; ``evaluate`` must be called on every rank at the same step."""

    def __init__(
        self, cfg: EvalConfig, batches: list[dict[str, torch.Tensor]], device: torch.device, *, copies: int = 1
    ) -> None:
        """``copies``: ranks that evaluate the same batches (tensor parallelism), counted once."""
        self.cfg, self.device, self.copies = cfg, device, copies
        self.batches = batches
        self.last: EvalResult | None = None

    def due(self, step: int) -> bool:
        """The periodic schedule asks for an evaluation after ``step``."""
        return self.cfg.due(step)

    def due_at_end(self, step: int) -> bool:
        """Training completed at ``step``: evaluate unless this attempt just did."""
        return self.cfg.at_end and (self.last is None or self.last.step != step)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, step: int) -> EvalResult:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        on_gpu = self.device.type == "cuda"
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, tokens
        try:
            for cpu_batch in self.batches:
                batch = {k: v.to(self.device, non_blocking=on_gpu) for k, v in cpu_batch.items()}
                logits = model(batch["input_ids"])
                mask = batch["loss_mask"]
                totals[0] += cross_entropy_sum(logits, batch["labels"], mask).double()
                totals[1] += mask.sum().double()
        finally:
            model.train(was_training)
        loss_sum, tokens = (all_reduce_sum(totals) / self.copies).tolist()
        self.last = EvalResult(
            step=step,
            loss=loss_sum / max(tokens, 1.0),
            samples=self.cfg.samples,
            tokens=int(tokens),
            time_s=time.perf_counter() - t0,
        )
        return self.last

    def summary_fields(self) -> dict[str, Any]:
        """The final evaluation of this attempt for ``summary.json`` (nothing before the first)."""
        if self.last is None:
            return {}
        return {"eval_loss": self.last.loss, "eval_ppl": self.last.perplexity, "eval_step": self.last.step}


def build_evaluator(
    cfg: TrainingConfig, env: DistEnv, *, dp_rank: int | None = None, dp_size: int | None = None
) -> Evaluator | None:
    """The run's evaluator, or None without an ``eval`` section. ``dp_rank``/``dp_size``: the
    data-parallel position under tensor parallelism (default: the rank in the world)."""
    if cfg.eval is None:
        return None
    batches = build_eval_batches(
        cfg.data,
        cfg.eval,
        seq_len=cfg.model.seq_len,
        micro_batch_size=cfg.eval.micro_batch_size or cfg.train.micro_batch_size,
        dp_rank=env.rank if dp_rank is None else dp_rank,
        dp_size=env.world_size if dp_size is None else dp_size,
    )
    return Evaluator(cfg.eval, batches, env.device, copies=env.world_size // (dp_size or env.world_size))
