"""Experiment trackers: TensorBoard event files and, optionally, Weights & Biases (offline by default).

Sinks receive what ``metrics.jsonl`` receives (``MetricsLog`` forwards every line it writes), on
rank 0 only, so the dashboards never disagree with the run's own record. Nothing is sent over the
network unless ``tracking.wandb.mode: online``: compute nodes rarely have internet.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Protocol

import yaml

from hpcllm.config.tracking import WandbConfig
from hpcllm.config.training import TrainingConfig
from hpcllm.errors import ConfigError
from hpcllm.rundir import RunDir

# metrics.jsonl key -> dashboard tag; grouped so TensorBoard shows training, speed and eval apart.
TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "perf/tokens_per_s",
    "samples_per_s": "perf/samples_per_s",
    "mfu": "perf/mfu",
    "step_time_s": "perf/step_time_s",
    "mem_peak_gib": "perf/mem_peak_gib",
    "eval_loss": "eval/loss",
    "eval_ppl": "eval/ppl",
}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tracked scalars of a metrics line, under their tags; nulls (e.g. MFU on CPU) left out."""
    return {TAGS[k]: float(v) for k, v in record.items() if k in TAGS and v is not None and not isinstance(v, bool)}


class MetricSink(Protocol):
    def write(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Event files in ``<run>/tensorboard/``: ``tensorboard --logdir results/`` shows every run.

    A resumed run (at step T) purges the points a crashed attempt logged after T, so re-run steps
    appear once, as in ``metrics.jsonl``.
    """

    def __init__(self, log_dir: Path, *, resume_step: int, config_text: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tracking.tensorboard: the tensorboard package is not installed; install "
                "'hpcllm[train]' (or pip install tensorboard), or set tracking.tensorboard: false"
            ) from None
        self.writer = SummaryWriter(str(log_dir), purge_step=resume_step + 1 if resume_step else None, flush_secs=30)
        if not resume_step:
            self.writer.add_text("run.yaml", "```yaml\n" + config_text + "```", global_step=0)

    def write(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in ``<run>/wandb/``; its id derives from the run directory, so restarts continue it."""

    def __init__(self, cfg: WandbConfig, run_dir: RunDir, run_id: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "tracking.wandb: the wandb package is not installed; install 'hpcllm[wandb]' "
                "(or pip install wandb), or remove tracking.wandb"
            ) from None
        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=cfg.tags or None,
            mode=cfg.mode,
            dir=str(run_dir.path),
            name=run_id,
            id=wandb_run_id(run_dir),
            resume="allow",
            config=config,
        )

    def write(self, step: int, values: dict[str, float]) -> None:
        # W&B rejects non-finite numbers in some versions; a diverged loss shows as a gap instead.
        self.run.log({k: v for k, v in values.items() if math.isfinite(v)}, step=step)

    def close(self) -> None:
        self.run.finish()


def wandb_run_id(run_dir: RunDir) -> str:
    """A stable W&B run id per run directory (W&B ids are short and must avoid ``/``)."""
    return hashlib.sha256(str(run_dir.path.absolute()).encode()).hexdigest()[:16]


def open_sinks(cfg: TrainingConfig, run_dir: RunDir, *, resume_step: int) -> list[MetricSink]:
    """The trackers ``cfg.tracking`` asks for; call on rank 0 only."""
    sinks: list[MetricSink] = []
    config = cfg.model_dump(mode="json")
    if cfg.tracking.tensorboard:
        sinks.append(
            TensorBoardSink(
                run_dir.tensorboard, resume_step=resume_step, config_text=yaml.safe_dump(config, sort_keys=False)
            )
        )
    if cfg.tracking.wandb is not None:
        sinks.append(WandbSink(cfg.tracking.wandb, run_dir, cfg.run_id, config))
    return sinks
