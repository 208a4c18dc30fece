"""A search's state file (``search.json``): its schema and how to read it.

``hpcllm.tune.search`` writes it as the search advances; ``hpcllm collect --best`` reads it. Here,
below both, so the collector reads searches without importing the orchestrator that runs them.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpcllm.errors import HpcllmError
from hpcllm.fsutil import read_json
from hpcllm.rundir import now

STATE_NAME = "search.json"
STATE_VERSION = 1


class TrialState(str, Enum):
    QUEUED = "queued"  # to be submitted for its rung (first time, or promoted)
    RUNNING = "running"  # submitted for its rung: pending or running in the scheduler
    FINISHED = "finished"  # completed its rung, score recorded (at the last rung: done)
    STOPPED = "stopped"  # halving dropped it after its rung
    FAILED = "failed"  # its run failed or was cancelled


class Trial(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    run_id: str
    params: dict[str, Any]
    rung: int = 0  # index into the search's rungs: the length this trial is (or was last) trained to
    state: TrialState = TrialState.QUEUED
    scores: dict[str, float | None] = Field(default_factory=dict)  # steps -> metric; None = not finite
    reason: str | None = None

    def score_at(self, steps: int) -> float:
        """The metric after ``steps`` (inf when diverged or unknown): what ranking sorts by."""
        value = self.scores.get(str(steps))
        return math.inf if value is None else value


class Group(BaseModel):
    """One grid point of the experiment, searched on its own."""

    model_config = ConfigDict(extra="forbid")

    label: str
    point: dict[str, Any]
    trials: list[Trial]


class SearchState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = STATE_VERSION
    experiment: str
    cluster: str
    method: str
    metric: str
    seed: int
    rungs: list[int]
    definition: str  # digest of the experiment: a search never continues under another definition
    groups: list[Group]
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)

    @property
    def trials(self) -> list[Trial]:
        return [t for g in self.groups for t in g.trials]

    def done(self, trial: Trial) -> bool:
        return trial.state in (TrialState.STOPPED, TrialState.FAILED) or (
            trial.state == TrialState.FINISHED and trial.rung == len(self.rungs) - 1
        )

    @property
    def complete(self) -> bool:
        return all(self.done(t) for t in self.trials)


def load_state(folder: Path) -> SearchState | None:
    try:
        data = read_json(folder / STATE_NAME)
        return None if data is None else SearchState.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise HpcllmError(
            f"{folder / STATE_NAME}: not a valid search state ({str(exc).splitlines()[0]}); "
            "move it away to start the search over"
        ) from None


def best_trial(state: SearchState, group: Group) -> Trial | None:
    """The best trial so far: lowest metric at the longest rung any trial of the group finished."""
    for steps in reversed(state.rungs):
        scored = [t for t in group.trials if math.isfinite(t.score_at(steps))]
        if scored:
            return min(scored, key=lambda t: (t.score_at(steps), t.index))
    return None


def find_searches(root: Path) -> list[tuple[Path, SearchState]]:
    """Every search state below ``root`` (for ``hpcllm collect --best``)."""
    root = Path(root)
    paths = [root / STATE_NAME] if (root / STATE_NAME).is_file() else sorted(root.rglob(STATE_NAME))
    return [(p.parent, state) for p in paths if (state := load_state(p.parent)) is not None]
