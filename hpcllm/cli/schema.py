"""``hpcllm schema``: JSON Schema of the YAML files, for editor completion."""

from __future__ import annotations

import json
from enum import Enum
from typing import TYPE_CHECKING

import typer

from hpcllm.cli.common import console

if TYPE_CHECKING:
    from pydantic import BaseModel


class SchemaKind(str, Enum):
    cluster = "cluster"
    experiment = "experiment"
    training = "training"


def schema(
    kind: SchemaKind = typer.Argument(..., help="Which file: cluster, experiment or training (run.yaml)."),
) -> None:
    """JSON Schema of a YAML file type, for editor completion (e.g. yaml-language-server)."""
    from hpcllm.config.cluster import ClusterProfile
    from hpcllm.config.experiment import Experiment
    from hpcllm.config.training import TrainingConfig

    models: dict[str, type[BaseModel]] = {
        "cluster": ClusterProfile,
        "experiment": Experiment,
        "training": TrainingConfig,
    }
    model = models[kind.value]
    console.print_json(json.dumps(model.model_json_schema()))
