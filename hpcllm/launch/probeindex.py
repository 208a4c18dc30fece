"""Which probe answers for which grid point: the key of a setup and the index beside the runs.

Points that differ only in what does not change a step's memory or speed per sample (micro-batch
size, gradient accumulation beyond "accumulates or not", steps, learning rate, seed...) share one
probe. ``hpcllm explore-batch`` records the probe of every key in
``results/<experiment>/<cluster>/explore-batch.json`` (written atomically, like a manifest), and
reads it back for ``--apply``; ``hpcllm submit`` reads it to trust a measured fit over the estimate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpcllm.config.experiment import RunSpec
from hpcllm.config.probe import ProbeReport
from hpcllm.errors import HpcllmError
from hpcllm.fsutil import atomic_write_json, read_json
from hpcllm.rundir import RunDir

INDEX_NAME = "explore-batch.json"


def probe_key(spec: RunSpec) -> str:
    """The setup a probe measures: model, parallelism, distillation teacher, device, node and rank
    counts, and whether gradients are kept across micro-batches (grad_accum > 1). 12 hex digits."""
    t = spec.training
    identity: dict[str, Any] = {
        "model": t.model.model_dump(mode="json"),
        "parallel": t.parallel.model_dump(mode="json"),
        "distill": t.distill.model_dump(mode="json") if t.distill else None,
        "device": t.device,
        "nodes": spec.resources.nodes,
        "gpus_per_node": spec.resources.gpus_per_node,
        "accumulates": t.train.grad_accum > 1,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


class IndexEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    label: str  # readable: model, ranks, sharding, AC, seq


class ProbeIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment: str
    cluster: str
    probes: dict[str, IndexEntry] = Field(default_factory=dict)  # probe key -> probe run


def index_path(results_root: Path, experiment: str, cluster: str) -> Path:
    return Path(results_root) / experiment / cluster / INDEX_NAME


def load_index(results_root: Path, experiment: str, cluster: str) -> ProbeIndex | None:
    path = index_path(results_root, experiment, cluster)
    try:
        data = read_json(path)
        return None if data is None else ProbeIndex.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise HpcllmError(
            f"{path}: not a probe index ({str(exc).splitlines()[0]}); move it away and rerun `hpcllm explore-batch`"
        ) from None


def save_index(results_root: Path, index: ProbeIndex) -> None:
    atomic_write_json(index_path(results_root, index.experiment, index.cluster), index.model_dump(mode="json"))


def probe_report(results_root: Path, experiment: str, cluster: str, run_id: str) -> ProbeReport | None:
    """The probe's ``probe.json``, None if it has not written one yet."""
    run_dir = RunDir.of(results_root, experiment, cluster, run_id)
    try:
        data = read_json(run_dir.probe)
        return None if data is None else ProbeReport.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise HpcllmError(f"{run_dir.probe}: not a probe report ({str(exc).splitlines()[0]})") from None


def measured_largest_fits(results_root: Path, experiment: str, cluster: str) -> dict[str, int]:
    """Probe key -> the largest micro-batch size a probe ran without running out of memory."""
    index = load_index(results_root, experiment, cluster)
    found: dict[str, int] = {}
    for key, entry in index.probes.items() if index else []:
        report = probe_report(results_root, experiment, cluster, entry.run_id)
        fitted = [t.mbs for t in report.trials if t.fits] if report else []
        if fitted:
            found[key] = max(fitted)
    return found
