"""A search's trials: the parameter values each one trains with, drawn from the search's domains
(grid: every combination; random: seeded draws), so the same experiment always draws the same trials."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np

from hpcllm.config.search import Domain, SearchConfig
from hpcllm.errors import ConfigError


def _draw(domain: Domain, rng: np.random.Generator) -> Any:
    if domain.kind == "choice":
        assert domain.values is not None
        return domain.values[int(rng.integers(len(domain.values)))]
    assert domain.low is not None and domain.high is not None
    if domain.kind == "int":
        return int(rng.integers(int(domain.low), int(domain.high) + 1))
    if domain.kind == "uniform":
        value = rng.uniform(domain.low, domain.high)
    else:
        value = math.exp(rng.uniform(math.log(domain.low), math.log(domain.high)))
    return float(f"{value:.4g}")  # readable in names, tables and YAML; 4 digits is finer than any LR sweep


def draw_trials(search: SearchConfig) -> list[dict[str, Any]]:
    """The trials' parameter values: every combination (grid) or ``trials`` seeded distinct draws.

    Depends only on the search section (domains in the order written, ``seed``), so the same
    experiment gives the same trials on any machine and after any restart.
    """
    keys = list(search.parameters)
    if search.method == "grid":
        values = [search.parameters[k].finite_values or [] for k in keys]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    assert search.trials is not None
    rng = np.random.default_rng(search.seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(1000 * search.trials):
        params = {k: _draw(search.parameters[k], rng) for k in keys}
        key = json.dumps(params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(params)
            if len(out) == search.trials:
                return out
    raise ConfigError(
        f"search.trials: could not draw {search.trials} distinct configurations from these "
        "parameters (rounded to 4 significant digits); widen the ranges or ask for fewer"
    )
