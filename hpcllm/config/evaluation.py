"""Evaluation settings: the held-out split of the training stores and the periodic eval pass.

Two sections because they are two decisions. ``data.holdout`` decides which documents the run never
trains on (a property of the data: changing it changes the training stream, and a checkpoint
refuses to resume under another split). ``eval`` only decides when and on how many of those
documents' sequences the engine measures the loss: turning it on, off or changing its frequency
never changes what or in which order the model trains on.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpcllm.sitepaths import SitePath


def one_source_shorthand(data: object) -> object:
    """``{path: X, ...}`` as ``{sources: [{path: X}], ...}``: the shorthand of ``data`` and ``eval``
    for a single store of weight 1, applied before validation."""
    if isinstance(data, dict) and "path" in data:
        data = dict(data)
        data["sources"] = [{"path": data.pop("path")}]
    return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"


class HoldoutConfig(_Strict):
    fraction: float = Field(
        gt=0,
        lt=1,
        description="Fraction of each store's documents held out of training (a seeded hash of "
        "the document index picks them); the eval set when eval has no stores of its own.",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of the split. Not the run's seed, so runs with different seeds (search "
        "trials) hold out, and are evaluated on, the same documents.",
    )


class EvalSource(_Strict):
    path: SitePath = Field(description="Token store written with the run's tokenizer.")
    weight: float = Field(1.0, gt=0, description="Share of the eval set drawn from this store.")


class EvalConfig(_Strict):
    every_steps: int | None = Field(
        None, gt=0, description="Evaluate after every N optimizer steps; null = only at the end."
    )
    at_end: bool = Field(True, description="Evaluate when training completes (the summary's eval_loss).")
    samples: int = Field(
        128,
        gt=0,
        description="Sequences in the eval set: the same ones at every evaluation, whatever the "
        "number of ranks or the micro-batch size, so eval losses compare across runs.",
    )
    micro_batch_size: int | None = Field(
        None, gt=0, description="Sequences per rank per forward pass; default: train.micro_batch_size."
    )
    sources: list[EvalSource] | None = Field(
        None,
        min_length=1,
        description="Separate eval store(s); default: the held-out documents of data (data.holdout).",
    )

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, data: object) -> object:
        """``eval: {path: X}`` is shorthand for one eval store of weight 1 (as in ``data``)."""
        return one_source_shorthand(data)

    @property
    def periodic(self) -> bool:
        return self.every_steps is not None

    def due(self, step: int) -> bool:
        """Whether the periodic schedule evaluates after optimizer step ``step``."""
        return self.every_steps is not None and step % self.every_steps == 0


def eval_data_error(eval_cfg: EvalConfig | None, has_holdout: bool) -> str | None:
    """Why an eval section has nothing to evaluate on (None when it has)."""
    if eval_cfg is not None and eval_cfg.sources is None and not has_holdout:
        return (
            "eval: needs data to evaluate on: set data.holdout (e.g. {fraction: 0.01}) to hold "
            "documents out of training, or eval.sources to a separate token store"
        )
    return None
