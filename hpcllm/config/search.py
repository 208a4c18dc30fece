"""``search:`` in an experiment: a hyper-parameter search over ordinary runs (hpcllm.tune.search).

    search:
      method: halving                 # grid | random | halving
      metric: eval_loss               # minimised: eval_loss (needs training.eval) or final_loss
      trials: 9                       # random, halving: configurations drawn (seeded)
      seed: 0
      parameters:                     # dotted keys of the training config
        optim.lr: {log_uniform: [1.0e-4, 3.0e-2]}
        optim.weight_decay: {uniform: [0.0, 0.2]}
        schedule.warmup_steps: {int: [0, 20]}
        model.n_layers: [2, 4]        # a list: one of these values
      halving: {min_steps: 20, eta: 3}

Each point of the experiment's ``grid`` (after ``where``) is searched on its own: a group, whose
best run ``hpcllm collect --best`` reports (e.g. the best learning rate per model size).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpcllm.config.training import TrainingConfig

DomainKind = Literal["choice", "uniform", "log_uniform", "int"]
_RANGE_KINDS = ("uniform", "log_uniform", "int")
_DOMAIN_HELP = "a list of values, or one of {uniform: [low, high]}, {log_uniform: [low, high]}, {int: [low, high]}"
# Keys the search itself sets on every trial.
RESERVED_KEYS = ("run_id", "train.steps", "schedule.total_steps")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"


class Domain(_Strict):
    """Where one parameter is drawn from; written in YAML as a list or ``{kind: [low, high]}``."""

    kind: DomainKind
    values: list[Any] | None = None  # choice
    low: float | None = None  # ranges: both ends included (int), [low, high) (uniform, log_uniform)
    high: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, raw: Any) -> Any:
        if isinstance(raw, list):
            if not raw:
                raise ValueError("an empty list of values")
            return {"kind": "choice", "values": raw}
        if isinstance(raw, dict) and "kind" in raw:
            return raw  # already in this model's own form
        if isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in _RANGE_KINDS:
            kind, bounds = next(iter(raw.items()))
            if not (
                isinstance(bounds, list)
                and len(bounds) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            ):
                raise ValueError(f"{kind}: give [low, high] as two numbers (got {bounds!r})")
            low, high = bounds
            if not low < high:
                raise ValueError(f"{kind}: low {low} must be below high {high}")
            if kind == "log_uniform" and low <= 0:
                raise ValueError(f"log_uniform: low {low} must be positive")
            if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
                raise ValueError(f"int: bounds must be integers (got {bounds!r})")
            return {"kind": kind, "low": low, "high": high}
        raise ValueError(f"expected {_DOMAIN_HELP} (got {raw!r})")

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        """The YAML forms users write (for editor completion), not this model's internal fields."""
        pair = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
        ranges = [
            {"type": "object", "properties": {kind: pair}, "required": [kind], "additionalProperties": False}
            for kind in _RANGE_KINDS
        ]
        return {
            "description": f"Where the parameter is drawn from: {_DOMAIN_HELP}.",
            "anyOf": [{"type": "array", "minItems": 1}, *ranges],
        }

    @property
    def finite_values(self) -> list[Any] | None:
        """Every value the domain holds, where there are finitely many."""
        if self.kind == "choice":
            return list(self.values or [])
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            return list(range(int(self.low), int(self.high) + 1))
        return None


class HalvingConfig(_Strict):
    min_steps: int = Field(gt=0, description="Steps of the first rung: every trial trains this long.")
    eta: int = Field(
        3, ge=2, description="Each rung keeps the best 1/eta of its trials and gives them eta times the steps."
    )
    asynchronous: bool = Field(
        False,
        description="ASHA: promote a trial as soon as it ranks in the top 1/eta of the finished trials "
        "of its rung, instead of waiting for the whole rung (faster, but depends on finishing order).",
    )

    def rungs(self, max_steps: int) -> list[int]:
        """Step budgets: min_steps·eta^k below ``max_steps``, then ``max_steps`` itself."""
        out, steps = [], self.min_steps
        while steps < max_steps:
            out.append(steps)
            steps *= self.eta
        return [*out, max_steps]

    def survivors(self, entered: int) -> int:
        """How many of the ``entered`` trials of a rung go on to the next one."""
        return max(1, entered // self.eta)


class SearchConfig(_Strict):
    method: Literal["grid", "random", "halving"] = Field(
        description="grid: every combination of the listed values; random: `trials` draws; halving: "
        "`trials` draws trained in rungs of growing length, the worse ones dropped after each rung.",
    )
    parameters: dict[str, Domain] = Field(min_length=1, description=f"Dotted training-config key -> {_DOMAIN_HELP}.")
    metric: Literal["eval_loss", "final_loss"] = Field(
        "eval_loss", description="Minimised: eval_loss at the end of each trial (or rung), or the training loss."
    )
    trials: int | None = Field(
        None, gt=0, validate_default=True, description="random, halving: configurations to draw."
    )
    seed: int = Field(0, ge=0, description="Seed of the draws: the same seed gives the same trials.")
    halving: HalvingConfig | None = Field(
        None, validate_default=True, description="halving: rung lengths and the keep ratio."
    )

    @field_validator("parameters")
    @classmethod
    def _searchable(cls, value: dict[str, Domain], info: ValidationInfo) -> dict[str, Domain]:
        roots = list(TrainingConfig.model_fields)
        for key in value:
            if key.split(".")[0] not in roots:
                raise ValueError(f"{key!r} must start with one of: {', '.join(roots)}")
            if key in RESERVED_KEYS:
                raise ValueError(f"{key!r} is set by the search itself (trial lengths); search other keys")
        ranged = [k for k, d in value.items() if d.finite_values is None]
        if info.data.get("method") == "grid" and ranged:
            raise ValueError(
                f"method grid needs lists (or int ranges); {', '.join(ranged)} "
                "are continuous: give lists or use method random"
            )
        return value

    @field_validator("trials", mode="after")
    @classmethod
    def _trials(cls, value: int | None, info: ValidationInfo) -> int | None:
        method, parameters = info.data.get("method"), info.data.get("parameters")
        if method == "grid" and value is not None:
            raise ValueError("method grid runs every combination; leave trials out")
        if method in ("random", "halving") and value is None:
            raise ValueError(f"method {method} needs the number of configurations to draw")
        if value is not None and parameters:
            distinct = math.prod(
                len(v) if (v := d.finite_values) is not None else math.inf for d in parameters.values()
            )
            if value > distinct:
                raise ValueError(f"{value} distinct configurations asked, but the parameters allow only {distinct}")
        return value

    @field_validator("halving", mode="after")
    @classmethod
    def _halving(cls, value: HalvingConfig | None, info: ValidationInfo) -> HalvingConfig | None:
        method = info.data.get("method")
        if method == "halving" and value is None:
            raise ValueError("method halving needs halving: {min_steps: N} (and optionally eta)")
        if method not in (None, "halving") and value is not None:
            raise ValueError(f"only used by method halving (method is {method})")
        return value
