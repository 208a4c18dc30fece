"""The run directory layout: the one place that names the files a run reads and writes.

    results/<experiment>/<cluster>/<run_id>/
        job.sbatch          rendered batch script (hpcllm.launch.render)
        run.yaml            resolved TrainingConfig, the engine's only input
        manifest.json       orchestrator state: job ids, states, restarts (atomic writes)
        slurm-<jobid>.out   scheduler log, appended across requeues
        metrics.jsonl       one JSON object per logged step (engine)
        summary.json        medians + table fields + status (engine, atomic)
        probe.json          a batch-size probe's trials and answer (engine probe mode, atomic)
        checkpoints/        step_<N>/ DCP folders and the `latest` pointer (engine)
        STOP                present = the batch script asked the engine to checkpoint and stop

Both the orchestrator and the engine import this module, so the names cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Exit code of an engine that stopped on request (signal or STOP file) after saving a checkpoint.
# EX_TEMPFAIL from sysexits.h: "try again later", which is what a requeue does.
EXIT_PREEMPTED = 75

SUMMARY_STATUS_COMPLETED = "completed"
SUMMARY_STATUS_PREEMPTED = "preempted"
SUMMARY_STATUS_FAILED = "failed"
# summary.json "kind" of a batch-size probe; a training run's summary has no kind. The scaling table
# leaves probes out: they have their own (hpcllm.collect.probes).
SUMMARY_KIND_PROBE = "probe"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, results_root: Path, experiment: str, cluster: str, run_id: str) -> "RunDir":
        return cls(Path(results_root) / experiment / cluster / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "run.yaml"

    @property
    def job_script(self) -> Path:
        return self.path / "job.sbatch"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def probe(self) -> Path:
        return self.path / "probe.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def stop_file(self) -> Path:
        return self.path / "STOP"

    # `%j` is expanded by sbatch; the local backend substitutes its own job id.
    LOG_PATTERN = "slurm-%j.out"

    def log_file(self, job_id: str) -> Path:
        return self.path / self.LOG_PATTERN.replace("%j", str(job_id))

    def log_files(self) -> list[Path]:
        return sorted(self.path.glob(self.LOG_PATTERN.replace("%j", "*")))


def find_run_dirs(root: Path) -> list[RunDir]:
    """Every run directory below ``root`` (a dir holding run.yaml), sorted by path."""
    root = Path(root)
    if (root / "run.yaml").exists():
        return [RunDir(root)]
    return [RunDir(p.parent) for p in sorted(root.rglob("run.yaml"))]
